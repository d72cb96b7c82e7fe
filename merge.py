"""Model merging on plain tensors: the methods OSRM is combined with in the paper.

Every function takes the task vectors of one layer, `deltas` = [delta_w_1, ..., delta_w_T]
(each the dense `s * B_t @ A_t`, d_out x d_in), and returns the merged update for that layer.
Merging the dense products, never A and B separately, avoids the cross terms `B_i A_j` that
averaging the factors would create. No model, no I/O: `merge_task_vectors` applies a method
layer by layer to {layer name: tensor} dicts; the caller adds the result to the weights.

OSRM is combined with existing merges, and the paper's numbers come from those methods' own
code (MergeLM, yule-BUAA/MergeLM, and EMR-Merging's). Each function names the implementation it
follows and agrees with it, zero sums and ties included; where it differs, the docstring says so.

- Task Arithmetic (Ilharco et al. 2023): lam * sum_t delta_w_t.
- Simple averaging: the same with lam = 1/T.
- TIES (Yadav et al. 2023): trim each task vector to the fraction `keep` of its entries
  largest in magnitude, elect a sign per entry by total mass, average only the values that
  agree with it, scale by lam. Per tensor by default, as PEFT and mergekit do (`ties`);
  scope="global" trims the whole flattened task vector, as the TIES paper and MergeLM do
  (`ties_global`).
- DARE (Yu et al. 2024): drop each entry with probability p, rescale the survivors by 1/(1-p)
  (so each entry keeps its expected value), then Task Arithmetic or TIES. `dare-ties` is DARE,
  then TIES with its own trim, as the DARE paper's code (MergeLM) does; PEFT's `dare_ties`
  skips the trim (with keep = 1.0 the two agree).

The merges that use data take, beside the task vectors, a statistic per task and layer:
- RegMean (Jin et al., ICLR 2023): the Gram matrix G_t = X_t^T X_t / n_t of the layer's inputs.
- Fisher merging (Matena & Raffel, NeurIPS 2022): the diagonal Fisher F_t of the dense weight.
- EMR-Merging (Huang et al., NeurIPS 2024) uses none, but gives each task its own model: one
  elected task vector, with a mask and a rescaler per task.
"""

from dataclasses import dataclass

import torch


class SingularError(ValueError):
    """RegMean's sum of Gram matrices cannot be solved (the command line says what to change)."""


def task_arithmetic(deltas, lam):
    """W_m - W0 = lam * sum_t delta_w_t (the task arithmetic of the paper's interference equation)."""
    return lam * torch.stack(deltas).sum(0)


def average(deltas):
    """Simple averaging: Task Arithmetic with lam = 1/T."""
    return task_arithmetic(deltas, 1.0 / len(deltas))


def trim(delta, keep):
    """TIES step 1: keep exactly int(keep * numel) entries, the largest in magnitude, zero the
    rest; among entries tied at the threshold, topk picks. As PEFT's `magnitude_based_pruning`
    (huggingface/peft, src/peft/utils/merge_utils.py)."""
    n_keep = int(keep * delta.numel())
    if n_keep == 0:
        return torch.zeros_like(delta)
    flat = delta.flatten()  # (d_out * d_in,)
    kept = torch.zeros_like(flat)
    idx = flat.abs().topk(n_keep).indices
    kept[idx] = flat[idx]
    return kept.view_as(delta)  # (d_out, d_in) again


def trim_at_threshold(delta, keep):
    """TIES step 1 at a threshold: the int(N (1 - keep))-th smallest of the N magnitudes; every
    entry at or above it is kept, N - int(N (1 - keep)) + 1 of them, more where magnitudes tie
    at the threshold; keep = 1 keeps everything. As MergeLM's `mask_smallest_magnitude_param_
    values` (mask rate 1 - keep; its kthvalue(0) would fail at keep = 1). The TIES code
    (prateeky2806/ties-merging, src/utils/merge_utils.py, `topk_values_mask`) takes the
    (N - int(N keep))-th smallest instead, one entry fewer where N keep is not whole."""
    n_drop = int(delta.numel() * (1 - keep))
    if n_drop == 0:
        return delta.clone()
    magnitude = delta.abs()
    threshold = magnitude.flatten().kthvalue(n_drop).values  # over all N entries
    return delta * (magnitude >= threshold)


def elect_sign(trimmed, zero="plus"):
    """TIES step 2: each entry's sign is that of its total mass, sign(sum_t trimmed_t).

    Where the sum is exactly 0 (all-cancelling or all-zero entries), zero="plus" elects +, as
    PEFT's `calculate_majority_sign_mask` (`sum >= 0`) and mergekit's `get_mask` do;
    zero="majority" elects the sign that most entries of the whole `trimmed` elected, as
    MergeLM's `get_param_signs` and the TIES code's `resolve_zero_signs` do (0 if that ties too).
    """
    total = trimmed.sum(0)
    if zero == "plus":
        return torch.where(total >= 0, 1.0, -1.0).to(total.dtype)
    if zero == "majority":
        sign = torch.sign(total)
        return torch.where(sign == 0, torch.sign(sign.sum()), sign)
    raise ValueError(f"unknown rule for zero sums {zero!r}")


def disjoint_mean(trimmed, sign):
    """Average, per entry, only the values whose sign agrees with the elected one (TIES step 3).

    The divisor is the number of agreeing tasks, not T; an entry that no task keeps stays 0,
    and so does one whose elected sign is 0 (as in MergeLM's `disjoint_merge`).
    """
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)  # (T, ...) which values take part
    total = (trimmed * agree).sum(0)
    count = agree.sum(0).clamp(min=1)
    return total / count


def ties(deltas, lam, keep=0.2):
    """TIES-Merging per tensor: trim each tensor to int(keep * numel) entries, elect signs (a
    zero sum elects +), disjoint mean, then lam. With two tasks and dW_2 = -dW_1, every entry
    keeps its positive value. As PEFT's `ties` with weights lam (huggingface/peft,
    src/peft/utils/merge_utils.py)."""
    return ties_merge(torch.stack([trim(d, keep) for d in deltas]), lam)


def ties_merge(trimmed, lam, zero="plus"):
    """TIES steps 2 and 3 and the scale, on already trimmed task vectors (T, ...)."""
    return lam * disjoint_mean(trimmed, elect_sign(trimmed, zero))


def ties_global(task_vectors, lam, keep=0.2):
    """TIES over whole task vectors [{layer name: delta_w}]: each task's layers are flattened
    into one vector, trimmed at one threshold (`trim_at_threshold`), a zero sum elects the sign
    that most entries elected (where that ties too, the entry is 0), then the disjoint mean and
    lam, split back into layers. As MergeLM's `ties_merging` (yule-BUAA/MergeLM,
    model_merging_methods/merging_methods.py); the TIES code's `disjoint_merge` keeps the
    negative values where the majority ties."""
    names = list(task_vectors[0])
    flat = torch.stack([torch.cat([tv[n].flatten() for n in names]) for tv in task_vectors])  # (T, N)
    trimmed = torch.stack([trim_at_threshold(f, keep) for f in flat])
    merged = ties_merge(trimmed, lam, zero="majority")  # (N,)
    sizes = [task_vectors[0][n].numel() for n in names]
    return {n: part.view_as(task_vectors[0][n]) for n, part in zip(names, merged.split(sizes))}  # (N,) -> layers


def regmean(deltas, grams, alpha=1.0):
    """RegMean: the update whose outputs on every task's inputs are closest to that task's own,
    min_W sum_t ||X_t W^T - X_t W_t^T||^2 / n_t, which is W* = (sum_t W_t G_t)(sum_t G_t)^-1
    with G_t = X_t^T X_t / n_t. With W_t = W0 + dW_t this is W0 + (sum_t dW_t G_t)(sum_t G_t)^-1.

    OSRM and RegMean read the same Gram matrices: OSRM picks each A_t before training so that
    dW_t G_j is small for the other tasks j; RegMean solves for the merge afterwards that
    minimises the same outputs' errors. Worked case: equal G_t give the average (1/T) sum_t dW_t.
    Each G_t is the mean over the task's n_t input rows, so every task weighs the same however
    long its inputs (the sums X_t^T X_t would weigh tasks by their rows); its off-diagonal
    entries are scaled by alpha (alpha * G_t + (1 - alpha) diag(G_t)), which keeps the sum
    invertible and pulls towards averaging. Solved in float64, never inverted; a SingularError
    if the sum is singular. As MergeLM's `regmean_merging` (yule-BUAA/MergeLM, model_merging_
    methods/merging_methods.py; alpha = 1 its default, its GLUE script searches 0.7 to 1.0).
    """
    G = [alpha * g.double() + (1 - alpha) * torch.diag(torch.diag(g.double())) for g in grams]
    numerator = sum(d.double() @ g for d, g in zip(deltas, G))  # (d_out, d_in)
    total = sum(G)  # (d_in, d_in), symmetric
    L, info = torch.linalg.cholesky_ex(total)
    if info != 0:
        raise SingularError("regmean: the sum of the tasks' Gram matrices is singular")
    # W* total = numerator, and total is symmetric: total W*^T = numerator^T
    return torch.cholesky_solve(numerator.T, L).T.to(deltas[0].dtype)  # (d_in, d_out) -> (d_out, d_in)


def fisher_norm_weights(fishers, eps=1e-6):
    """Each task's weight c_t in Fisher merging when the Fishers are normalised:
    c_t = (1 / (||F_t|| + eps)) / sum_s (1 / (||F_s|| + eps)), ||F_t|| the L2 norm of task t's
    whole Fisher [{layer name: F_t}], every layer. Without it each task weighs 1/T, so a task
    whose Fisher is larger throughout (another loss, another scale) would dominate everywhere.
    As MergeLM's `fisher_merging` with normalize_fisher_weight (its default, and FusionBench's)."""
    norms = torch.stack([torch.stack([f.double().norm() for f in tf.values()]).norm() for tf in fishers])
    inverse = 1.0 / (norms + eps)
    return inverse / inverse.sum()


def fisher_merge(deltas, fishers, weights=None, eps=1e-6):
    """Fisher merging: each entry of the update weighted by how much each task's likelihood
    depends on it, sum_t c_t (F_t + eps) dW_t / sum_t c_t (F_t + eps), eps added to every
    Fisher; weights c_t: 1/T unless given (`fisher_norm_weights`). Equal Fishers give the
    average; where every task's Fisher is 0 the c-weighted mean; where only one task's is
    large, that task's value. As MergeLM's `merging_with_fisher_weights` (yule-BUAA/MergeLM,
    model_merging_methods/merging_methods.py; eps is its minimal_fisher_weight)."""
    F = torch.stack([f.double() for f in fishers]) + eps  # (T, d_out, d_in)
    c = torch.full((len(deltas),), 1.0 / len(deltas), dtype=torch.float64,
                   device=F.device) if weights is None else weights.to(F)
    c = c.view(-1, *[1] * (F.dim() - 1))  # (T,) -> (T, 1, 1), to broadcast over F
    merged = (c * F * torch.stack([d.double() for d in deltas])).sum(0) / (c * F).sum(0)
    return merged.to(deltas[0].dtype)


def emr(task_vectors):
    """EMR-Merging on whole task vectors [{layer: dW_t}]: (elected, masks, rescalers).

    Elect: per entry, the sign of sum_t dW_t, a zero sum counting as negative (the code's
    `(sum > 0) * 2 - 1`), and the largest magnitude among the tasks whose entry has that sign.
    Mask: task t keeps the entries where its own sign agrees with the elected one. Rescale:
    lambda_t = sum_l mean|dW_t,l| / sum_l mean|mask_t,l * elected_l| over layers l (the EMR
    paper's ratio of sums; the two agree when every tensor has one size), in the task vectors'
    dtype; an empty mask (a zero task vector) gets lambda_t = 0, not the code's 0/0 = NaN. Task
    t is evaluated with its own update lambda_t * mask_t * elected: not one merged model. As the
    official code's `emr_merging` (harveyhuang18/EMR_Merging, merge_lm/model_merging_methods/).
    """
    names = list(task_vectors[0])
    elected, masks = {}, [{} for _ in task_vectors]
    for n in names:
        stacked = torch.stack([tv[n] for tv in task_vectors])  # (T, d_out, d_in)
        sign = torch.where(stacked.sum(0) > 0, 1.0, -1.0).to(stacked.dtype)
        agree = stacked * sign > 0  # (T, d_out, d_in)
        elected[n] = sign * (stacked.abs() * agree).amax(0)
        for t in range(len(task_vectors)):
            masks[t][n] = agree[t]
    rescalers = []
    for tv, mask in zip(task_vectors, masks):
        own = sum(tv[n].abs().mean() for n in names)
        kept = sum((mask[n] * elected[n]).abs().mean() for n in names)
        rescalers.append(float(own / kept) if kept > 0 else 0.0)
    return elected, masks, rescalers


def dare(delta, p, generator):
    """DARE: drop each entry with probability p, multiply the survivors by 1 / (1 - p)."""
    keep = torch.rand(delta.shape, generator=generator) >= p
    return delta * keep.to(delta.device) / (1.0 - p)


# The names --merges accepts, with a line of help each.
METHODS = {"ta": "Task Arithmetic, lam * sum_t dW_t",
           "ties": "TIES: trim, elect signs, disjoint mean, then lam (PEFT's; --ties-scope global: MergeLM's)",
           "avg": "simple averaging, (1/T) sum_t dW_t",
           "dare-ta": "DARE (drop with rate p, rescale), then Task Arithmetic",
           "dare-ties": "DARE, then TIES with its trim (the DARE paper's code; PEFT's skips the trim)",
           "regmean": "RegMean: least squares on every task's layer inputs (MergeLM's; no lambda)",
           "fisher": "Fisher merging: entries weighted by each task's diagonal Fisher (no lambda)",
           "emr": "EMR-Merging: one elected update, a mask and rescaler per task (one model per task)"}
NO_LAMBDA = ("regmean", "fisher", "emr")


@dataclass(frozen=True)
class MergeSettings:
    """The merges' own settings (a run's: study/config.py's --ties-keep, --ties-scope, ...)."""
    keep: float = 0.2             # the fraction of each task vector's entries TIES keeps
    scope: str = "tensor"         # where TIES trims: each tensor (`ties`) or "global" (`ties_global`)
    p: float = 0.5                # DARE's drop rate
    regmean_alpha: float = 1.0    # RegMean's scale of the off-diagonal entries (`regmean`)
    fisher_normalize: bool = True  # weigh each task's Fisher by 1 / its norm (`fisher_norm_weights`)
    fisher_eps: float = 1e-6      # added to every Fisher (`fisher_merge`)


def merge_task_vectors(task_vectors, method, lam=None, settings=MergeSettings(), statistics=None,
                       seed=0):
    """Merge [{layer name: delta_w}, ...] (one dict per task) into {layer name: merged delta}.

    method: "ta" (Task Arithmetic), "avg" (simple averaging), "ties", "dare-ta" / "dare-ties"
    (DARE with drop rate settings.p first, task t's draws seeded with seed + t), "regmean" or
    "fisher" (`statistics`: one {layer: Gram matrix} or {layer: diagonal Fisher} per task).
    EMR gives one update per task: `emr_updates`.
    """
    keep, scope, p = settings.keep, settings.scope, settings.p
    alpha, fisher_normalize, fisher_eps = (settings.regmean_alpha, settings.fisher_normalize,
                                           settings.fisher_eps)
    names = list(task_vectors[0])
    if method == "regmean":
        return {n: regmean([tv[n] for tv in task_vectors], [s[n] for s in statistics], alpha)
                for n in names}
    if method == "fisher":
        weights = fisher_norm_weights(statistics, fisher_eps) if fisher_normalize else None
        return {n: fisher_merge([tv[n] for tv in task_vectors], [s[n] for s in statistics], weights,
                                fisher_eps) for n in names}
    if method.startswith("dare-"):
        gens = [torch.Generator().manual_seed(seed + t) for t in range(len(task_vectors))]
        task_vectors = [{n: dare(tv[n], p, g) for n in names} for tv, g in zip(task_vectors, gens)]
        method = method[len("dare-"):]
    if method == "ties" and scope == "global":
        return ties_global(task_vectors, lam, keep)
    if method == "ta":
        fn = lambda ds: task_arithmetic(ds, lam)
    elif method == "avg":
        fn = average
    elif method == "ties" and scope == "tensor":
        fn = lambda ds: ties(ds, lam, keep)
    else:
        raise ValueError(f"unknown merging method {method!r} or TIES scope {scope!r}")
    return {name: fn([tv[name] for tv in task_vectors]) for name in names}


def emr_updates(task_vectors):
    """EMR's update of each task, [{layer: rescaler_t * mask_t * elected}] (see `emr`), in the
    task vectors' dtype."""
    elected, masks, rescalers = emr(task_vectors)
    return [{n: (m[n] * elected[n]) * r for n in elected} for m, r in zip(masks, rescalers)]

"""Model merging on plain tensors: the methods OSRM is combined with in the paper.

Every function takes the task vectors of one layer, `deltas` = [delta_w_1, ..., delta_w_T]
(each the dense `s * B_t @ A_t`, d_out x d_in), and returns the merged update for that layer.
Merging the dense products, never A and B separately, avoids the cross terms `B_i A_j` that
averaging the factors would create. There is no model and no I/O here:
`merge_task_vectors` applies a method layer by layer to {layer name: tensor} dicts, and the
caller adds the result to the pretrained weights.

- Task Arithmetic (Ilharco et al. 2023): lam * sum_t delta_w_t.
- Simple averaging: the same with lam = 1/T.
- TIES (Yadav et al. 2023): trim each task vector to the fraction `keep` of its entries
  largest in magnitude, elect a sign per entry by total mass, average only the values that
  agree with it, scale by lam.
  Trimming is per tensor by default, as in PEFT and mergekit; scope="global" trims over the
  whole flattened task vector, as the TIES paper does.
- DARE (Yu et al. 2024): drop each entry with probability p, rescale the survivors by 1/(1-p)
  (so each entry keeps its expected value), then Task Arithmetic or TIES. `dare-ties` is DARE,
  then TIES with its own trim, as the DARE paper's code (MergeLM) does; PEFT's `dare_ties`
  skips the trim (with keep = 1.0 the two agree).

The merges that use data take, beside the task vectors, a statistic per task and layer:
- RegMean (Jin et al., ICLR 2023): the Gram matrix G_t = X_t^T X_t of the layer's inputs.
- Fisher merging (Matena & Raffel, NeurIPS 2022): the diagonal Fisher F_t of the dense weight.
- EMR-Merging (Huang et al., NeurIPS 2024) uses none, but gives each task its own model: one
  elected task vector, with a mask and a rescaler per task.
"""

import torch


def task_arithmetic(deltas, lam):
    """W_m - W0 = lam * sum_t delta_w_t (the task arithmetic of the paper's interference equation)."""
    return lam * torch.stack(deltas).sum(0)


def average(deltas):
    """Simple averaging: Task Arithmetic with lam = 1/T."""
    return task_arithmetic(deltas, 1.0 / len(deltas))


def trim(delta, keep):
    """Keep the fraction `keep` of the entries largest in magnitude, zero the rest (TIES step 1)."""
    n_keep = int(keep * delta.numel())
    if n_keep == 0:
        return torch.zeros_like(delta)
    flat = delta.flatten()
    kept = torch.zeros_like(flat)
    idx = flat.abs().topk(n_keep).indices
    kept[idx] = flat[idx]
    return kept.view_as(delta)


def elect_sign(trimmed):
    """The sign of each entry's total mass over tasks, sign(sum_t trimmed_t) (TIES step 2)."""
    return torch.sign(trimmed.sum(0))


def disjoint_mean(trimmed, sign):
    """Average, per entry, only the values whose sign agrees with the elected one (TIES step 3).

    The divisor is the number of agreeing tasks, not T; an entry that no task keeps stays 0.
    """
    agree = (torch.sign(trimmed) == sign) & (trimmed != 0)  # (T, ...) which values take part
    total = (trimmed * agree).sum(0)
    count = agree.sum(0).clamp(min=1)
    return total / count


def ties(deltas, lam, keep=0.2):
    """TIES-Merging: trim to the largest fraction `keep`, elect signs, disjoint mean, then lam."""
    return ties_merge(torch.stack([trim(d, keep) for d in deltas]), lam)


def ties_merge(trimmed, lam):
    """TIES steps 2 and 3 and the scale, on already trimmed task vectors (T, d_out, d_in)."""
    return lam * disjoint_mean(trimmed, elect_sign(trimmed))


def trim_global(task_vector, keep):
    """TIES step 1 over a whole task vector {layer name: delta_w}: keep the fraction `keep` of
    all its entries largest in magnitude, wherever they are, zero the rest."""
    names = list(task_vector)
    flat = torch.cat([task_vector[n].flatten() for n in names])
    kept = trim(flat, keep)
    sizes = [task_vector[n].numel() for n in names]
    return {n: part.view_as(task_vector[n]) for n, part in zip(names, kept.split(sizes))}


def regmean(deltas, grams, alpha=0.9):
    """RegMean: the update whose outputs on every task's inputs are closest to that task's own,
    min_W sum_t ||X_t W^T - X_t W_t^T||^2, which is W* = (sum_t W_t G_t)(sum_t G_t)^-1 with
    G_t = X_t^T X_t. With W_t = W0 + dW_t this is W0 + (sum_t dW_t G_t)(sum_t G_t)^-1.

    As in the RegMean paper, each G_t's off-diagonal entries are scaled by alpha (alpha * G_t +
    (1 - alpha) diag(G_t)), which keeps the sum invertible and pulls towards averaging.
    OSRM and RegMean read the same Gram matrices: OSRM picks each A_t before training so that
    dW_t G_j is small for the other tasks j; RegMean solves for the merge afterwards that
    minimises the same outputs' errors. Solved (never inverted) in float64; a ValueError if
    the sum is singular. Worked case: equal G_t give the average (1/T) sum_t dW_t.
    """
    G = [alpha * g.double() + (1 - alpha) * torch.diag(torch.diag(g.double())) for g in grams]
    numerator = sum(d.double() @ g for d, g in zip(deltas, G))  # (d_out, d_in)
    total = sum(G)  # (d_in, d_in), symmetric
    L, info = torch.linalg.cholesky_ex(total)
    if info != 0:
        raise ValueError("the sum of the tasks' Gram matrices is singular")
    # W* total = numerator, and total is symmetric: total W*^T = numerator^T
    return torch.cholesky_solve(numerator.T, L).T.to(deltas[0].dtype)


def fisher_merge(deltas, fishers, eps=1e-12):
    """Fisher merging: each entry of the update weighted by how much each task's likelihood
    depends on it, sum_t F_t dW_t / (sum_t F_t + eps). Equal Fishers give the average; a
    Fisher that only one task has at an entry gives that task's value there."""
    F = torch.stack([f.double() for f in fishers])
    merged = (F * torch.stack([d.double() for d in deltas])).sum(0) / (F.sum(0) + eps)
    return merged.to(deltas[0].dtype)


def emr(task_vectors):
    """EMR-Merging on whole task vectors [{layer: dW_t}]: (elected, masks, rescalers).

    Elect: per entry, the sign of sum_t dW_t, and the largest magnitude among the tasks whose
    entry has that sign. Mask: task t keeps the entries where its own sign agrees with the
    elected one. Rescale: lambda_t = sum |dW_t| / sum |mask_t * elected| over the whole task
    vector (the EMR code sums per-tensor means; with tensors of one size the two agree). Task
    t is then evaluated with its own update lambda_t * mask_t * elected: this is not one merged
    model, and each task stores a mask (one bit per weight) and a number.
    """
    names = list(task_vectors[0])
    elected, masks = {}, [{} for _ in task_vectors]
    for n in names:
        stacked = torch.stack([tv[n] for tv in task_vectors])  # (T, d_out, d_in)
        sign = torch.sign(stacked.sum(0))
        agree = torch.sign(stacked) == sign
        elected[n] = sign * (stacked.abs() * agree).amax(0)
        for t in range(len(task_vectors)):
            masks[t][n] = (stacked[t] * elected[n]) > 0
    rescalers = [sum(tv[n].abs().sum() for n in names)
                 / sum((mask[n] * elected[n]).abs().sum() for n in names)
                 for tv, mask in zip(task_vectors, masks)]
    return elected, masks, [float(r) for r in rescalers]


def dare(delta, p, generator):
    """DARE: drop each entry with probability p, multiply the survivors by 1 / (1 - p)."""
    keep = torch.rand(delta.shape, generator=generator) >= p
    return delta * keep.to(delta.device) / (1.0 - p)


# The names --merges accepts, with a line of help each.
METHODS = {"ta": "Task Arithmetic, lam * sum_t dW_t",
           "ties": "TIES: trim, elect signs, disjoint mean, then lam",
           "avg": "simple averaging, (1/T) sum_t dW_t",
           "dare-ta": "DARE (drop with rate p, rescale), then Task Arithmetic",
           "dare-ties": "DARE, then TIES with its trim (as the DARE paper's code; PEFT's "
                        "dare_ties skips the trim)",
           "regmean": "RegMean: least squares on every task's layer inputs (no lambda)",
           "fisher": "Fisher merging: entries weighted by each task's diagonal Fisher (no lambda)",
           "emr": "EMR-Merging: an elected task vector with a mask and rescaler per task; one "
                  "model per task, not one merged model (no lambda)"}
NO_LAMBDA = ("regmean", "fisher", "emr")


def merge_task_vectors(task_vectors, method, lam=None, keep=0.2, scope="tensor", p=0.5, seed=0,
                       statistics=None, alpha=0.9):
    """Merge [{layer name: delta_w}, ...] (one dict per task) into {layer name: merged delta}.

    method: "ta" (Task Arithmetic), "avg" (simple averaging), "ties", "dare-ta" / "dare-ties"
    (DARE with drop rate p first, task t's draws seeded with seed + t), "regmean" or "fisher"
    (`statistics`: one {layer: Gram matrix} or {layer: diagonal Fisher} per task; `alpha`:
    RegMean's scaling of the off-diagonal entries). keep: the fraction TIES keeps; scope: where
    it trims, "tensor" (each layer) or "global". EMR gives one update per task: `emr_updates`.
    """
    names = list(task_vectors[0])
    if method == "regmean":
        return {n: regmean([tv[n] for tv in task_vectors], [s[n] for s in statistics], alpha)
                for n in names}
    if method == "fisher":
        return {n: fisher_merge([tv[n] for tv in task_vectors], [s[n] for s in statistics])
                for n in names}
    if method.startswith("dare-"):
        gens = [torch.Generator().manual_seed(seed + t) for t in range(len(task_vectors))]
        task_vectors = [{n: dare(tv[n], p, g) for n in names} for tv, g in zip(task_vectors, gens)]
        method = method[len("dare-"):]
    if method == "ties" and scope == "global":
        trimmed = [trim_global(tv, keep) for tv in task_vectors]
        return {n: ties_merge(torch.stack([tv[n] for tv in trimmed]), lam) for n in names}
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
    """EMR's update of each task, [{layer: rescaler_t * mask_t * elected}] (see `emr`)."""
    elected, masks, rescalers = emr(task_vectors)
    return [{n: r * m[n] * elected[n] for n in elected} for m, r in zip(masks, rescalers)]

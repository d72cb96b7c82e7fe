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
  (so each entry keeps its expected value), then Task Arithmetic or TIES.
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


def dare(delta, p, generator):
    """DARE: drop each entry with probability p, multiply the survivors by 1 / (1 - p)."""
    keep = torch.rand(delta.shape, generator=generator) >= p
    return delta * keep.to(delta.device) / (1.0 - p)


# The names --merges accepts, with a line of help each.
METHODS = {"ta": "Task Arithmetic, lam * sum_t dW_t",
           "ties": "TIES: trim, elect signs, disjoint mean, then lam",
           "avg": "simple averaging, (1/T) sum_t dW_t",
           "dare-ta": "DARE (drop with rate p, rescale), then Task Arithmetic",
           "dare-ties": "DARE, then TIES with its trim (as the DARE paper's code)"}


def merge_task_vectors(task_vectors, method, lam=None, keep=0.2, scope="tensor", p=0.5, seed=0):
    """Merge [{layer name: delta_w}, ...] (one dict per task) into {layer name: merged delta}.

    method: "ta" (Task Arithmetic), "avg" (simple averaging), "ties", or "dare-ta" /
    "dare-ties" (DARE with drop rate p first, task t's draws seeded with seed + t).
    keep: the fraction TIES keeps; scope: where it trims, "tensor" (each layer) or "global".
    """
    names = list(task_vectors[0])
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

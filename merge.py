"""Model merging on plain tensors: the methods OSRM is combined with in the paper.

Every function takes the task vectors of one layer, `deltas` = [delta_w_1, ..., delta_w_T]
(each the dense `s * B_t @ A_t`, d_out x d_in), and returns the merged update for that layer.
Merging the dense products, never A and B separately, avoids the cross terms `B_i A_j` that
averaging the factors would create. There is no model and no I/O here:
`merge_task_vectors` applies a method layer by layer to {layer name: tensor} dicts, and the
caller adds the result to the pretrained weights.

- Task Arithmetic (Ilharco et al. 2023): lam * sum_t delta_w_t.
- Simple averaging: the same with lam = 1/T.
- TIES (Yadav et al. 2023): trim each task vector to its top-k fraction by magnitude, elect a
  sign per entry by total mass, average only the values that agree with it, scale by lam.
  Trimming here is per tensor, as in PEFT and mergekit (the TIES paper trims over the whole
  flattened model).
"""

import torch


def task_arithmetic(deltas, lam):
    """W_m - W0 = lam * sum_t delta_w_t (the task arithmetic of the paper's interference equation)."""
    return lam * torch.stack(deltas).sum(0)


def average(deltas):
    """Simple averaging: Task Arithmetic with lam = 1/T."""
    return task_arithmetic(deltas, 1.0 / len(deltas))


def trim(delta, k):
    """Keep the top-k fraction of entries by magnitude, zero the rest (TIES step 1)."""
    n_keep = int(k * delta.numel())
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


def ties(deltas, lam, k=0.2):
    """TIES-Merging: trim to the top-k fraction, elect signs, disjoint mean, then lam."""
    trimmed = torch.stack([trim(d, k) for d in deltas])  # (T, d_out, d_in)
    return lam * disjoint_mean(trimmed, elect_sign(trimmed))


def merge_task_vectors(task_vectors, method, lam=None, k=0.2):
    """Merge [{layer name: delta_w}, ...] (one dict per task) into {layer name: merged delta}.

    method: "ta" (Task Arithmetic), "avg" (simple averaging) or "ties".
    """
    names = task_vectors[0].keys()
    if method == "ta":
        fn = lambda ds: task_arithmetic(ds, lam)
    elif method == "avg":
        fn = average
    elif method == "ties":
        fn = lambda ds: ties(ds, lam, k)
    else:
        raise ValueError(f"unknown merging method {method!r}")
    return {name: fn([tv[name] for tv in task_vectors]) for name in names}

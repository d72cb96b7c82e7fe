"""osrm-min's own measurements of OSRM's subspaces, beside the paper's interference: how much
of a task's input energy a subspace reads, for scale the same for random subspaces, the
spectrum OSRM picks its directions from, and how far fine-tuning moved A. The run calls
`describe_subspaces` before any training and `movement` after each fine-tune; results.json
keeps what they return, and the report and figures show it.
"""

import torch

from extensions.subspaces import direction_share


def energy_share(A, S):
    """tr(A S A^T) / tr(S) (osrm_min.quadratic_trace, in float64 where S lives): the share of
    the input energy of S = H^T H / n that the rows of A read."""
    from osrm_min import quadratic_trace  # (here: osrm_min imports this module)
    return (quadratic_trace(A, S) / S.trace()).item()


def subspace_energy(A_init, stats, task):
    """(own, others): the share of the input energy that the subspace A_t reads, of task t's own
    inputs and of the other tasks', `energy_share` averaged over layers.

    OSRM makes `others` small by construction. If the tasks' inputs to a shared encoder look
    alike, `own` is small too: the adapter then starts blind to its own task as well. For
    scale, a random r-dimensional subspace reads r / d_in of any isotropic input.
    """
    own, others = [], []
    for name, A in A_init.items():
        own.append(energy_share(A, stats[task][name]["S"]))
        others.append(energy_share(A, sum(stats[j][name]["S"] for j in stats if j != task)))
    return sum(own) / len(own), sum(others) / len(others)


def random_subspaces(stats, rank, seed):
    """{task: {layer: A}}: a random orthonormal A (rank x d_in) per task and layer, drawn from a
    generator seeded with `seed`: the scale against which OSRM's subspaces are read."""
    g = torch.Generator().manual_seed(seed)
    return {t: {n: torch.linalg.qr(torch.randn(s["S"].shape[0], rank, generator=g,
                                               dtype=torch.float64).to(s["S"].device))[0].T
                for n, s in by_layer.items()} for t, by_layer in stats.items()}


def describe_subspaces(stats, measured, subspaces, u, rank, seed):
    """(energy, spectrum), before any training. energy: for each statistic's A_t of each task
    (subspaces: {statistic: {task: {layer: A}}}), and for a random A, the energy it reads of its
    own task and of the others' on the rows that fitted A (`stats`, "fit") and on held-out rows
    (`measured`, "heldout", fair to every init: OSRM's A is fitted to the first), and its share
    of the LayerNorm direction u ({layer: u}). spectrum: the eigenvalues of S_{-t} in the middle
    adapted layer, whose `rank` smallest OSRM takes."""
    energy = []
    for name, by_task in {**subspaces, "random": random_subspaces(stats, rank, seed)}.items():
        for t, A_init in by_task.items():
            shares = [direction_share(A, u[n]) for n, A in A_init.items() if n in u]
            for rows, on in (("fit", stats), ("heldout", measured)):
                own, others = subspace_energy(A_init, on, t)
                energy.append({"seed": seed, "stat": name, "task": t, "rows": rows, "own": own,
                               "others": others,
                               "ln_share": sum(shares) / len(shares) if shares else None})
    tasks = list(stats)
    layers = list(stats[tasks[0]])
    layer = layers[(len(layers) - 1) // 2]  # of six layers' query and value: layers.2.value
    spectrum = [{"seed": seed, "task": t, "layer": layer, "rank": rank, "eigenvalues":
                 torch.linalg.eigvalsh(sum(stats[j][layer]["S"] for j in tasks if j != t)).tolist()}
                for t in tasks]
    return energy, spectrum


def row_space(A):
    """An orthonormal basis (r x d_in) of A's row space: what an adapter reads, at any scale."""
    Q, _ = torch.linalg.qr(A.double().T)
    return Q.T


def movement(A_start, A_end, stats, task):
    """How far training moved task t's A, averaged over layers: the share of its own task's and
    of the other tasks' input energy that A's row space reads at the start and at the end
    (`subspace_energy`, on `stats`), and the overlap of the two row spaces, the mean cos^2 of
    their principal angles, ||Q_start Q_end^T||_F^2 / r (1: A did not turn; about r / d_in
    between unrelated random subspaces)."""
    Q_start = {n: row_space(A) for n, A in A_start.items()}
    Q_end = {n: row_space(A) for n, A in A_end.items()}
    own_start, others_start = subspace_energy(Q_start, stats, task)
    own_end, others_end = subspace_energy(Q_end, stats, task)
    overlap = [(Q_start[n] @ Q_end[n].to(Q_start[n]).T).pow(2).sum().item() / Q_start[n].shape[0]
               for n in Q_start]
    return {"own_start": own_start, "others_start": others_start, "own_end": own_end,
            "others_end": others_end, "overlap": sum(overlap) / len(overlap)}

"""osrm-min's own additions to OSRM, beyond the paper: each is named as this project's in the
--inits help and the README, and none changes what the paper's `osrm` computes.

On a small shared encoder OSRM's A_t, where the other tasks' inputs have least energy, can
read almost none of its own task's input energy too (the tasks share their low-energy
directions), and one of its r directions is a LayerNorm direction that carries no
information at all (the "input energy" table of a run's summary measures both; results/README.md
has the numbers). These functions let a run separate the causes:

- `own_task_subspace` (--inits osrm-own): directions with much of task t's own energy and
  little of the others', instead of little of anybody's.
- `random_null_basis` (--inits osrm-mean-random): the authors' mean statistic with a seeded
  random basis of the null space, instead of LAPACK's basis, which puts every task on nearly
  the same last coordinates.
- `layernorm_direction`, `without_direction` (--osrm-skip-ln-direction): the constant input
  direction of a LayerNorm output, and OSRM's subspace chosen away from it.
"""

import zlib

import torch

from study.config import ExperimentError


# This project's inits, beside the paper's in osrm_min.INITS: {name: the fields of its Init}
INITS = {
    "osrm-own": dict(statistic="own", help="osrm-min's extension: A_t from the top generalised "
                     "eigenvectors of (S_t, S_others + eps I), much of the task's own input "
                     "energy and little of the others' (--own-eps)"),
    "osrm-mean-random": dict(statistic="mean-random", help="osrm-min's extension: osrm-mean "
                             "with a seeded random basis of the same null space"),
    "lora-orthonormal": dict(A_dist="orthonormal", help="osrm-min's control: a random A with "
                             "orthonormal rows, OSRM's shape and scale without its directions, "
                             "B = 0 (lora.random_A)"),
}


def variant_init(stats, task, statistic, ln_directions, seed, cfg):
    """{layer name: A_t} for `task` from `stats` = {task: {layer name: statistics}}, as
    osrm_min.osrm_init, for this project's variants: statistic "own" (`own_task_subspace`),
    "mean-random" (`random_null_basis`), and with `ln_directions` ({layer: u}, --osrm-skip-ln-
    direction) the second-moment subspace (and osrm-own's) chosen away from u."""
    from osrm_min import osrm_subspace  # (here: osrm_min imports this module)
    others = [t for t in stats if t != task]
    A = {}
    for name in stats[task]:
        of_others = [stats[t][name] for t in others]
        u = (ln_directions or {}).get(name)
        if u is not None and statistic in ("second_moment", "own"):
            of_others = [dict(s, S=without_direction(s["S"], u)) for s in of_others]
        if statistic == "own":
            S_others = sum(s["S"] for s in of_others) / len(of_others)
            try:
                A[name] = own_task_subspace(stats[task][name]["S"], S_others, cfg.rank, cfg.own_eps)
            except torch.linalg.LinAlgError:  # eps * tr(S)/d overflows, so Cholesky cannot run
                raise ExperimentError(f"osrm-own ({task}, {name}): S_others + eps I cannot be "
                                      f"factorised with --own-eps {cfg.own_eps:g}; use a smaller "
                                      f"--own-eps (the default is 0.1)") from None
        elif statistic == "mean-random":
            A[name] = random_null_basis([s["mu"] for s in of_others], cfg.rank,
                                        seed + zlib.crc32(name.encode()))
        else:
            A[name] = osrm_subspace(of_others, cfg.rank, statistic)
    return A


def own_task_subspace(S_own, S_others, rank, eps=0.1):
    """A (rank x d) with orthonormal rows spanning the top `rank` generalised eigenvectors of
    S_own v = mu M v, with M = S_others + eps * tr(S_others) / d * I.

    Derivation. The paper's objective asks A_t to read little of the other tasks' inputs,
    min tr(A S_others A^T) over A A^T = I, and nothing asks it to read its own task's; its
    minimiser can be blind to both. Asking for the task's own energy too, with the others'
    energy held fixed, max tr(A S_own A^T) subject to tr(A M A^T) = c, has the Lagrangian
    condition S_own a = mu M a for each row a: the generalised eigenvectors, the largest mu
    first (mu = own energy / others' energy along a). M is S_others, the mean of the other
    tasks' second moments, plus a ridge eps relative to its average eigenvalue, which keeps M
    invertible and stops a direction that nobody uses from winning on a ratio of two zeros.
    The generalised eigenvectors are M-orthogonal, not orthonormal; only A's row space
    matters (B A = (B R^-1)(R A)), so they are re-orthonormalised by a QR decomposition.
    """
    d = S_own.shape[0]
    M = S_others + eps * torch.trace(S_others) / d * torch.eye(d, dtype=S_others.dtype,
                                                               device=S_others.device)
    # S_own v = mu M v  <=>  (L^-1 S_own L^-T) w = mu w  with M = L L^T and v = L^-T w
    L = torch.linalg.cholesky(M)
    C = torch.linalg.solve_triangular(L, torch.linalg.solve_triangular(L, S_own, upper=False).T,
                                      upper=False)  # L^-1 S_own L^-T, symmetric
    _, W = torch.linalg.eigh((C + C.T) / 2)  # ascending
    V = torch.linalg.solve_triangular(L.T, W[:, -rank:], upper=True)  # (d, rank), v = L^-T w
    Q, _ = torch.linalg.qr(V)
    return Q.T.float()


def random_null_basis(mus, rank, seed):
    """A (rank x d): a seeded, uniformly random orthonormal basis of part of the null space of
    X = [mu_j]_j, so that A mu_j = 0 for every given mean, as the authors' mean statistic asks,
    without LAPACK's choice of basis (which is the same last coordinates for every task)."""
    X = torch.stack(mus).double()  # (T-1, d)
    d = X.shape[1]
    _, s, Vh = torch.linalg.svd(X, full_matrices=True)
    null = Vh[int((s > s.max() * d * torch.finfo(torch.float64).eps).sum()):]  # (d - rank(X), d)
    G = torch.randn(null.shape[0], rank, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64).to(null.device)  # the same draw on any device
    Q, _ = torch.linalg.qr(G)  # a random orthonormal frame in the null space's coordinates
    return (Q.T @ null).float()


def layernorm_inputs(encoder):
    """{layer name: the LayerNorm whose output is that layer's input}, for the adapted layers
    that read a LayerNorm output: query, key and value of block i read the output of block
    i-1's last LayerNorm (the embeddings' for block 0), and ffn_in the block's attention
    LayerNorm. attn_out and ffn_out read other things and have no such direction."""
    out = {}
    for i, block in enumerate(encoder.layers):
        previous = encoder.layers[i - 1].ffn_norm if i else encoder.embeddings.norm
        out.update({f"layers.{i}.{n}": previous for n in ("query", "key", "value")})
        out[f"layers.{i}.ffn_in"] = block.attn_norm
    return out


def layernorm_directions(encoder, names):
    """{layer name: u} for those of `names` whose input is a LayerNorm output, on the CPU
    (beside the statistics, `collect_statistics`)."""
    norms = layernorm_inputs(encoder)
    return {n: layernorm_direction(norms[n].weight.detach().cpu()) for n in names if n in norms}


def layernorm_direction(gain):
    """u = (1/g) / ||1/g|| for a LayerNorm with gain g: its output h = g * z + b has
    sum(z) = 0, so u . h = sum(b / g) / ||1/g|| is the same for every token. (Where some
    g_i = 0, h_i = b_i is itself constant, and u is the unit vector on those coordinates.)"""
    zero = gain == 0
    u = zero.double() if zero.any() else 1.0 / gain.double()
    return u / u.norm()


def without_direction(S, u):
    """S with u moved to the top of its spectrum (eigenvalue tr(S)), the rest of S restricted to
    u's orthogonal complement: the smallest eigenvectors of the result are OSRM's subspace
    chosen among the directions orthogonal to u."""
    uu = torch.outer(u, u).to(S)  # on S's device, in its dtype
    P = torch.eye(len(u), dtype=S.dtype, device=S.device) - uu
    return P @ S @ P + torch.trace(S) * uu


def direction_share(A, u):
    """||A u||^2: how much of the unit direction u lies in A's row space (A has orthonormal rows)."""
    return float((A.double() @ u.to(A.device, torch.float64)).pow(2).sum())

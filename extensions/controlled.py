"""When OSRM's mechanism works and when it cannot: a controlled experiment (this project's own,
not the paper's), small enough for a lab: about a minute on 2 CPU cores.

    python -m extensions.controlled                          # the table; results in runs/controlled/
    python -m extensions.controlled --overlaps 0,1 --seeds 42

T tasks see inputs x in R^d made of three parts, like the layer inputs of a real encoder:

    x = 3 C z_c  +  U_t(rho) z_t  +  0.1 noise

- C z_c: a common part with most of the energy, the same for every task, carrying no label
  (a real encoder's shared directions, such as the constant LayerNorm direction of its
  query and value inputs, extensions/subspaces.layernorm_direction);
- U_t(rho) z_t: the task's own k-dimensional signal. U_t = P_t (a private subspace of each
  task) when rho = 0, Q (one subspace shared by all) when rho = 1, and in between a mix of the
  two, the same angle for every task; the label is sign(w_t . z_t), a different w_t per task;
- a little isotropic noise.

The frozen model is one linear map W0 (h x d) with LoRA (rank r) followed by tanh and a head per
task: logits = head_t(tanh((W0 + dW) x)). Each task is fine-tuned alone, from plain LoRA's
random A, from OSRM's A (osrm_min.osrm_subspace, trained or frozen) and from this project's
own-task-aware A (subspaces.own_task_subspace); the T updates are merged by Task Arithmetic,
lambda picked on validation inputs, and each task scored (accuracy x100) on test inputs with
its own head. `interference` is osrm_min's measure, `subspace_energy` extensions/measures.py's.

What it shows (results/controlled.md has the table, 3 seeds): with private subspaces
(rho = 0) the directions where the other tasks have least energy are the task's own, so OSRM's
A_t reads its own signal and almost none of the others' inputs; frozen there, its interference
is a quarter of plain LoRA's and merging costs it half a point instead of two. Trained, A_t
drifts towards the high-energy common part and keeps only a third of that gain. As the overlap
grows, the private part shrinks: frozen OSRM still interferes little but reads less and less of
its own signal, and with one shared subspace (rho = 1) those directions hold nobody's signal:
frozen, OSRM learns only through its head; trained, it interferes exactly as plain LoRA does.
"""

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lora
import train
from extensions import subspaces
from extensions.measures import subspace_energy
from osrm_min import interference, osrm_subspace
from study import figures
from study import resume
from study.config import ExperimentError

INITS = ("lora", "osrm", "osrm-frozen", "osrm-own")


def make_tasks(T, k, c, rho, sizes, seed):
    """{split: {task: (X (n x d), y (n,))}} for T tasks in d = c + T k dimensions (module
    docstring); `sizes` {split: n}. The bases and each task's w_t are drawn first, so that every
    split draws its inputs from the same tasks."""
    g = torch.Generator().manual_seed(seed)
    d = c + T * k
    R, _ = torch.linalg.qr(torch.randn(d, d, generator=g))  # a random orthonormal basis of R^d
    C = R[:, :c]
    P = [R[:, c + t * k: c + (t + 1) * k] for t in range(T)]  # private subspaces
    Q = sum(P) / math.sqrt(T)  # one shared subspace, inside theirs; orthonormal columns
    U = [math.sqrt(1 - rho) * P[t] + math.sqrt(rho) * Q for t in range(T)]
    U = [u / u.norm(dim=0) for u in U]  # the columns stay orthogonal; this makes them unit vectors
    w = [torch.randn(k, generator=g) for _ in range(T)]
    splits = {}
    for name, n in sizes.items():
        splits[name] = {}
        for t in range(T):
            z_c, z_t = torch.randn(n, c, generator=g), torch.randn(n, k, generator=g)
            X = 3 * z_c @ C.T + z_t @ U[t].T + 0.1 * torch.randn(n, d, generator=g)
            splits[name][t] = (X, (z_t @ w[t] > 0).long())
    return splits


def second_moment(X):
    return {"W": {"S": X.double().T @ X.double() / len(X)}}


def initial_A(init, t, stats, r, seed):
    """A_t (r x d) as each init builds it; stats: {task: second moments of its first inputs}."""
    others = [stats[j]["W"] for j in stats if j != t]
    if init == "lora":  # Kaiming-uniform, as lora.random_As draws it
        return lora.random_A(r, stats[t]["W"]["S"].shape[0], torch.Generator().manual_seed(seed))
    if init in ("osrm", "osrm-frozen"):
        return osrm_subspace(others, r)
    return subspaces.own_task_subspace(stats[t]["W"]["S"], sum(s["S"] for s in others) / len(others), r)


def fine_tune(W0, A, train_A, X, y, r, steps, lr, seed):
    """(dW, head) after full-batch AdamW on one task's training inputs."""
    torch.manual_seed(seed)
    layer = lora.LoRALinear(W0.shape[1], W0.shape[0])
    layer.weight.data.copy_(W0)
    layer.bias.data.zero_()
    layer.weight.requires_grad_(False), layer.bias.requires_grad_(False)
    layer.set_lora(A, r, alpha=2 * r)
    layer.A.requires_grad_(train_A)
    head = torch.nn.Linear(W0.shape[0], 2)
    params = [p for p in (layer.A, layer.B, *head.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):  # AdamW on minibatches of 64, as the real fine-tuning
        rows = torch.randint(len(X), (64,), generator=g)
        loss = F.cross_entropy(head(torch.tanh(layer(X[rows]))), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return layer.delta_w(), head


def accuracy(W, head, X, y):
    with torch.no_grad():
        return 100 * (head(torch.tanh(X @ W.T)).argmax(-1) == y).float().mean().item()


def run_one(rho, seed, T=4, k=4, c=8, h=16, r=4, steps=150, lr=1e-2, lams=(0.3, 0.5, 0.7, 1.0)):
    """Every init at one overlap and seed: {init: {"individual", "merged", "lambda",
    "interference" (the matrix's mean off-diagonal entry), "matrix", "own", "others"}}; scores
    are means over the T tasks. Sizes: T tasks with k-dimensional signals in d = c + T k
    dimensions, a frozen map to h units, LoRA rank r = k, so that OSRM's A_t can span a private
    subspace exactly; AdamW at `lr` for `steps` minibatches."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # its matrices are tiny: threads cost more than they give
    try:
        return _run_one(rho, seed, T, k, c, h, r, steps, lr, lams)
    finally:
        torch.set_num_threads(threads)


def _run_one(rho, seed, T, k, c, h, r, steps, lr, lams):
    splits = make_tasks(T, k, c, rho, {"train": 512, "val": 512, "test": 1000}, seed)
    d = c + T * k
    W0 = torch.randn(h, d, generator=torch.Generator().manual_seed(seed + 7)) / math.sqrt(d)
    stats = {t: second_moment(X[:100]) for t, (X, _) in splits["train"].items()}  # OSRM's k = 100
    held_out = {t: second_moment(X) for t, (X, _) in splits["test"].items()}
    out = {}
    for init in INITS:
        updates, heads, A_init = {}, {}, {}
        for t, (X, y) in splits["train"].items():
            A_init[t] = initial_A(init, t, stats, r, seed * 100 + t)
            updates[t], heads[t] = fine_tune(W0, A_init[t], init != "osrm-frozen", X, y, r,
                                             steps, lr, seed * 100 + t)
        score = lambda split, W_of: statistics.mean(
            accuracy(W_of(t), heads[t], *splits[split][t]) for t in heads)
        merged = {lam: (lambda t, lam=lam: W0 + lam * sum(updates.values())) for lam in lams}
        best = max(lams, key=lambda lam: score("val", merged[lam]))
        energy = [subspace_energy({"W": A_init[t]}, held_out, t) for t in heads]
        matrix = interference({t: {"W": dW} for t, dW in updates.items()}, held_out)
        out[init] = {"individual": score("test", lambda t: W0 + updates[t]),
                     "merged": score("test", merged[best]), "lambda": best,
                     "interference": statistics.mean(matrix[i][j] for i in range(T)
                                                     for j in range(T) if i != j),
                     "matrix": matrix,
                     "own": statistics.mean(e[0] for e in energy),
                     "others": statistics.mean(e[1] for e in energy)}
    return out


def mean_std(values):
    return f"{statistics.mean(values):.2f}" + (f"±{statistics.stdev(values):.2f}" if len(values) > 1 else "")


def table(results):
    """A row per overlap and init: scores, the merged score's loss, interference, energy."""
    cols = ("individual", "merged", "loss", "interference", "own %", "others %")
    lines = [f"{'overlap':>7}  {'init':<12}" + "".join(f"{c:>15}" for c in cols)]
    for rho in results["overlaps"]:
        for init in INITS:
            rows = [r for r in results["rows"] if r["overlap"] == rho and r["init"] == init]
            cells = [mean_std([r[key] for r in rows]) for key in ("individual", "merged")]
            cells.append(mean_std([r["individual"] - r["merged"] for r in rows]))
            cells.append(mean_std([r["interference"] for r in rows]))
            cells += [mean_std([100 * r[key] for r in rows]) for key in ("own", "others")]
            lines.append(f"{rho:>7g}  {init:<12}" + "".join(f"{c:>15}" for c in cells))
    return "\n".join(lines)


def figure(results, out):
    """controlled.png: individual accuracy, interference and merging loss against the overlap,
    per init (needs matplotlib, which is optional)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "figure skipped: matplotlib is not installed (pip install -r requirements-figures.txt)"
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    for init in INITS:
        for ax, key in zip(axes, ("individual", "interference", "loss")):
            means = []
            for rho in results["overlaps"]:
                rows = [r for r in results["rows"] if r["overlap"] == rho and r["init"] == init]
                means.append(statistics.mean(r[key] if key != "loss" else r["individual"] - r["merged"]
                                             for r in rows))
            ax.plot(results["overlaps"], means, marker="o", label=init)
    axes[0].set_ylabel("individual accuracy")
    axes[1].set_ylabel("interference ||dW_t H_j|| / ||dW_j H_j||")
    axes[2].set_ylabel("individual - merged accuracy")
    for ax in axes:
        ax.set_xlabel("overlap of the tasks' input subspaces")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    figures.save_figure(fig, out / "controlled.png")
    plt.close(fig)
    return f"figure: {out / 'controlled.png'}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--overlaps", default="0,0.25,0.5,0.75,1", help="rho values, from 0 (private "
                   "subspaces) to 1 (one shared subspace)")
    p.add_argument("--seeds", default="42,43,44")
    p.add_argument("--out", default="runs/controlled", help="folder for results.json and the figure")
    args = p.parse_args(argv)
    try:
        overlaps = [float(x) for x in args.overlaps.split(",")]
        seeds = [int(x) for x in args.seeds.split(",")]
        # a seed becomes seed * 100 + t in a torch generator, which takes 64-bit integers
        if not all(0 <= rho <= 1 for rho in overlaps) or not all(0 <= s < 2**56 for s in seeds):
            raise ValueError
    except ValueError:
        print("error: --overlaps are numbers in [0, 1] and --seeds integers in [0, 2^56), "
              "comma-separated", file=sys.stderr)
        return 2
    try:  # before the minute of work, not after it
        resume.check_writable(args.out, ["results.json", "controlled.png"])
    except (ExperimentError, train.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    rows = [{"overlap": rho, "seed": seed, "init": init, **values}
            for rho in overlaps for seed in seeds for init, values in run_one(rho, seed).items()]
    results = {"overlaps": overlaps, "seeds": seeds, "rows": rows,
               "wall_time_s": round(time.time() - t0, 1)}
    print(table(results))
    try:
        resume.write_json_atomic(results, Path(args.out) / "results.json")
        print(figure(results, Path(args.out)))
    except OSError as e:  # a full disk, say: write_atomic names the file
        print(f"error: {e.strerror or e}: {e.filename}", file=sys.stderr)
        return 2
    print(f"wall time {results['wall_time_s']:.0f}s; results in {Path(args.out) / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

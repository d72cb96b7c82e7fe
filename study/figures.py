"""The figures of a run (with the optional matplotlib: pip install -r requirements-figures.txt):
lambda curves, interference matrices, the spectrum OSRM's subspace is taken from, and the
energy each init's A_t reads before and after training.
"""

import statistics
from pathlib import Path

from study.tables import has_lambda_grid, interference_matrices, lambda_curves

FIGURES = ("lambda.png", "interference.png", "spectrum.png", "energy.png")  # write_figures' files


def save_figure(fig, path):
    """fig as a PNG at `path`, written whole beside it and then put in its place
    (resume.write_atomic), so that a link at `path` is replaced, never written through."""
    from study import resume  # here, not above: a report without matplotlib needs no torch
    resume.write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))


def write_figures(results, out):
    """Draw lambda.png and interference.png in `out`; returns a line saying where they are, or
    that they were skipped because matplotlib is missing (it is optional:
    pip install -r requirements-figures.txt)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "figures skipped: matplotlib is not installed (pip install -r requirements-figures.txt)"
    out = Path(out)
    curves = lambda_curves(results)
    merges = [m for m in results["config"]["merges"] if m not in ("avg", "regmean", "fisher", "emr")]
    drawn = [out / "interference.png"]
    if merges and has_lambda_grid(results):  # a curve for each merge run at several lambdas
        draw_lambda_curves(plt, results, curves, merges, out)
        drawn.insert(0, out / "lambda.png")
    draw_interference(plt, results, out)
    if results.get("spectrum"):
        draw_spectrum(plt, results, out)
        drawn.append(out / "spectrum.png")
    if results.get("subspace_energy"):
        draw_energy(plt, results, out)
        drawn.append(out / "energy.png")
    for name in FIGURES:  # one an earlier run in this folder drew and this run does not
        if out / name not in drawn:
            (out / name).unlink(missing_ok=True)
    return f"figures: {', '.join(map(str, drawn))}"


def draw_spectrum(plt, results, out):
    """spectrum.png: the eigenvalues of S_{-t} (the other tasks' second moment) in one layer,
    per task, first seed, smallest first, with the r smallest, the ones OSRM's A_t spans,
    marked at the left (a log index axis, so that they are not crowded)."""
    entries = [e for e in results["spectrum"] if e["seed"] == results["spectrum"][0]["seed"]]
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for e in entries:
        values = sorted(e["eigenvalues"])
        line, = ax.loglog(range(1, len(values) + 1), values, label=f"S_-t, t = {e['task']}")
        r = e["rank"]
        ax.loglog(range(1, r + 1), values[:r], "o", color=line.get_color(), markersize=4)
    ax.set_xlabel("eigenvalue index, smallest first (log scale)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{entries[0]['layer']}: dots = the {entries[0]['rank']} directions OSRM picks",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "spectrum.png")
    plt.close(fig)


def draw_energy(plt, results, out):
    """energy.png: per init, the share of its own task's input energy and of the other tasks'
    that A_t's row space reads, at the start of training and at its end (results "movement",
    on held-out rows; mean over tasks, layers and seeds), beside a random subspace's share.
    Results that predate "movement" show the initial A of each statistic instead."""
    entries = results.get("movement") or []
    if entries:
        groups = list(dict.fromkeys(e["init"] for e in entries))
        pick = lambda g: [e for e in entries if e["init"] == g]
        bars = [("own_start", "own task, initial A"), ("own_end", "own task, trained A"),
                ("others_start", "other tasks, initial A"), ("others_end", "other tasks, trained A")]
    else:
        entries = results["subspace_energy"]
        groups = list(dict.fromkeys(e["stat"] for e in entries if e["stat"] != "random"))
        pick = lambda g: [e for e in entries if e["stat"] == g]
        bars = [("own", "own task, initial A"), ("others", "other tasks, initial A")]
    mean = lambda g, key: 100 * statistics.mean(e[key] for e in pick(g))
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(1.3 * len(groups) + 2.8, 3.6))
    for k, (key, label) in enumerate(bars):
        ax.bar([i + (k - (len(bars) - 1) / 2) * width for i in range(len(groups))],
               [mean(g, key) for g in groups], width, label=label)
    random = [e["own"] for e in results.get("subspace_energy", [])
              if e["stat"] == "random" and e.get("rows", "heldout") == "heldout"]
    if random:
        ax.axhline(100 * statistics.mean(random), color="gray", linestyle="--", linewidth=1,
                   label="a random subspace")
    ax.set_xticks(list(range(len(groups))), groups, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("% of input energy A_t reads")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "energy.png")
    plt.close(fig)


def draw_lambda_curves(plt, results, curves, merges, out):
    fig, axes = plt.subplots(1, len(merges), figsize=(4.2 * len(merges), 3.4),
                             squeeze=False, sharey=True)
    for ax, merge in zip(axes[0], merges):
        for init in results["config"]["inits"]:
            curve = curves.get((init, merge), {})
            lams = sorted(curve)
            means = [statistics.mean(curve[lam]) for lam in lams]
            ax.plot(lams, means, marker="o", label=init)
            if all(len(curve[lam]) > 1 for lam in lams) and lams:
                sd = [statistics.stdev(curve[lam]) for lam in lams]
                ax.fill_between(lams, [m - d for m, d in zip(means, sd)],
                                [m + d for m, d in zip(means, sd)], alpha=0.15)
        ax.set_title(merge)
        ax.set_xlabel("lambda")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("merged average score (dev)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "lambda.png")
    plt.close(fig)


def draw_interference(plt, results, out):
    matrices = interference_matrices(results)
    fig, axes = plt.subplots(1, len(matrices), figsize=(3.6 * len(matrices), 3.4), squeeze=False)
    vmax = max(v for _, m in matrices.values() for row in m for v in row)
    for ax, (init, (tasks, m)) in zip(axes[0], matrices.items()):
        ax.imshow(m, vmin=0, vmax=vmax, cmap="viridis")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, fontsize=7)
        ax.set_yticks(range(len(tasks)), tasks, fontsize=7)
        for t in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, t, f"{m[t][j]:.2f}", ha="center", va="center", fontsize=6,
                        color="white" if m[t][j] < vmax / 2 else "black")
        ax.set_title(init, fontsize=9)
        ax.set_xlabel("inputs of task j", fontsize=7)
    axes[0][0].set_ylabel("adapter of task t", fontsize=7)
    fig.tight_layout()
    save_figure(fig, out / "interference.png")
    plt.close(fig)

"""The figures of a run (with the optional matplotlib: pip install -r requirements-figures.txt):
lambda curves, interference matrices, the spectrum OSRM's subspace is taken from, and the
energy each statistic's A_t reads.
"""

import statistics
from pathlib import Path

from study.tables import interference_matrices, lambda_curves

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
    if merges:  # a lambda curve for each merge that has a lambda
        draw_lambda_curves(plt, results, curves, merges, out)
        drawn.insert(0, out / "lambda.png")
    draw_interference(plt, results, out)
    if results.get("spectrum"):
        draw_spectrum(plt, results, out)
        drawn.append(out / "spectrum.png")
    if results.get("subspace_energy"):
        draw_energy(plt, results, out)
        drawn.append(out / "energy.png")
    return f"figures: {', '.join(map(str, drawn))}"


def draw_spectrum(plt, results, out):
    """spectrum.png: the eigenvalues of S_{-t} (the other tasks' second moment) in one layer,
    per task, first seed, with the r smallest, the ones OSRM's A_t spans, marked."""
    entries = [e for e in results["spectrum"] if e["seed"] == results["spectrum"][0]["seed"]]
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    for e in entries:
        values = sorted(e["eigenvalues"], reverse=True)
        line, = ax.semilogy(range(1, len(values) + 1), values, label=f"S_-t, t = {e['task']}")
        r = e["rank"]
        ax.semilogy(range(len(values) - r + 1, len(values) + 1), values[-r:], "o",
                    color=line.get_color(), markersize=4)
    ax.set_xlabel("eigenvalue index (largest first)")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"{entries[0]['layer']}: dots = the {entries[0]['rank']} directions OSRM picks",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "spectrum.png")
    plt.close(fig)


def draw_energy(plt, results, out):
    """energy.png: the share of its own task's input energy and of the other tasks' that each
    statistic's A_t reads (mean over tasks, layers and seeds), random subspace included."""
    entries = results["subspace_energy"]
    stats = list(dict.fromkeys(e["stat"] for e in entries))
    mean = lambda stat, key: 100 * statistics.mean(e[key] for e in entries if e["stat"] == stat)
    fig, ax = plt.subplots(figsize=(1.3 * len(stats) + 2.4, 3.4))
    x = range(len(stats))
    ax.bar([i - 0.2 for i in x], [mean(s, "own") for s in stats], 0.4, label="own task")
    ax.bar([i + 0.2 for i in x], [mean(s, "others") for s in stats], 0.4, label="other tasks")
    ax.set_xticks(list(x), stats, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("% of input energy A_t reads")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
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

"""Turning results.json into what a reader looks at: the headline table, lambda curves, the
interference matrices, and (with matplotlib installed) two figures.

Everything here reads the dict that `osrm_min.run` returns and that results.json holds:
`config`, `rows` (one score per seed, init, merge, lambda and task) and `interference`
(one matrix per seed and init). Nothing is recomputed from a model.

    python report.py runs/cola-sst2-mrpc-stsb-rte/results.json   # print it again, redraw figures
"""

import json
import math
import statistics
import sys
from pathlib import Path


def mean_std(values):
    """'85.21' for one value, '85.21±0.40' (sample standard deviation) for several; 'n/a' if a
    value is undefined (nan: a normalised score whose individual score was not positive)."""
    if any(v is None or math.isnan(v) for v in values):
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f}±{statistics.stdev(values):.2f}"


def scores(results, split="dev"):
    """{(seed, init, merge, lambda): {task: score}}; lambda is None for the individual ones.
    split "heldout": the merges' scores on held-out training rows (--select-on heldout)."""
    out = {}
    for r in results["rows" if split == "dev" else "heldout_rows"]:
        out.setdefault((r["seed"], r["init"], r["merge"], r["lambda"]), {})[r["task"]] = r["score"]
    return out


def task_mean(by_task):
    """The mean score over tasks, {task: score} -> float (the `average` column)."""
    return sum(by_task.values()) / len(by_task)


def normalised(merged, alone):
    """The mean over tasks of merged / individual score, x100: the share each task keeps.
    Undefined (nan) when an individual score is not positive (e.g. CoLA's Matthews at 0)."""
    ratios = [merged[t] / alone[t] if alone[t] > 0 else float("nan") for t in merged]
    return 100 * sum(ratios) / len(ratios)


def lambda_curves(results, split="dev"):
    """{(init, merge): {lambda: [merged average score per seed]}}, every merge and lambda run."""
    curves = {}
    for (seed, init, merge, lam), by_task in scores(results, split).items():
        if merge != "none":
            curves.setdefault((init, merge), {}).setdefault(lam, []).append(task_mean(by_task))
    return curves


def selected_on(results):
    """Where lambda is picked: "dev" (the paper) or "heldout" (--select-on heldout)."""
    return results["config"].get("select_on", "dev")


def best_lambdas(results, on=None):
    """{(init, merge): lambda} with the best merged average over the seeds' mean, on dev or on
    held-out training rows (`on`, default: the run's --select-on). The paper picks lambda on
    the GLUE dev sets that it also reports, which flatters every merge a little."""
    curves = lambda_curves(results, on or selected_on(results))
    best = {key: max(curve, key=lambda lam: statistics.mean(curve[lam]))
            for key, curve in curves.items()}
    best.update({key: None for key, curve in lambda_curves(results).items() if None in curve})
    return best


def headline(results, on=None):
    """[(init, merge, lambda, {task: [scores per seed]}, [average per seed], [normalised per
    seed])] for each init alone and under each merge at its best lambda (picked `on`), scored
    on dev."""
    cfg, s = results["config"], scores(results)
    best = best_lambdas(results, on)
    out = []
    for init in cfg["inits"]:
        for merge in ["none"] + cfg["merges"]:
            lam = best.get((init, merge))
            per_seed = [s[seed, init, merge, lam] for seed in cfg["seeds"]]
            alone = [s[seed, init, "none", None] for seed in cfg["seeds"]]
            out.append((init, merge, lam, {t: [p[t] for p in per_seed] for t in cfg["tasks"]},
                        [task_mean(p) for p in per_seed],
                        [normalised(p, a) for p, a in zip(per_seed, alone)]))
    return out


def init_width(results):
    """The width of the init column: the longest init name and two spaces (at least 12)."""
    return max(12, 2 + max(map(len, results["config"]["inits"])))


LEARNED_MARGIN = 5.0  # points (x100) that a fine-tune must score above a constant prediction


def clearly_above(score, baseline):
    """Whether a fine-tune's dev score clears a constant prediction's by LEARNED_MARGIN."""
    return score >= baseline + LEARNED_MARGIN


def failed_finetunes(results):
    """[(seed, init, task, why)] for every adapter whose individual dev score says it did not
    clearly learn its task (a failed fine-tune, or a budget too small for the task):
    less than LEARNED_MARGIN points above what a constant prediction scores (the run's
    `baselines`), or less than half-way from that baseline to the best individual score of the
    task in this run (a collapsed STS-B fine-tune: 21.6 where the others reach 80)."""
    base = results.get("baselines") or {}
    alone = [r for r in results["rows"] if r["merge"] == "none" and r["task"] in base]
    best = {}
    for r in alone:
        best[r["task"]] = max(best.get(r["task"], r["score"]), r["score"])
    failed = []
    for r in alone:
        b, score = base[r["task"]], r["score"]
        if not clearly_above(score, b):
            why = f"{score:.2f}, not {LEARNED_MARGIN:g} points above a constant prediction's {b:.2f}"
        elif score < (b + best[r["task"]]) / 2:
            why = (f"{score:.2f}, less than half-way from a constant prediction's {b:.2f} to the "
                   f"task's best {best[r['task']]:.2f}")
        else:
            continue
        failed.append((r["seed"], r["init"], r["task"], why))
    return failed


def format_table(results, on=None):
    """The headline table: a row per init and merge (at its best lambda), a column per task;
    first the score of a constant prediction, and a * on every mean that holds a fine-tune
    that did not clearly learn (failed_finetunes)."""
    cfg = results["config"]
    cols = cfg["tasks"] + ["average", "normalised"]
    widths = [max(len(c), 13 if len(cfg["seeds"]) > 1 else 7) + 3 for c in cols]
    w0 = init_width(results)
    row = lambda a, b, c, cells: (f"{a:<{w0}}{b:<10}{c:>7}"
                                  + "".join(f"{x:>{w}}" for x, w in zip(cells, widths)))
    lines = [row("init", "merge", "lambda", cols)]
    base = results.get("baselines")
    if base:
        cells = [f"{base[t]:.2f}" for t in cfg["tasks"]] + [f"{task_mean(base):.2f}", "-"]
        lines.append(row("constant", "-", "-", cells))
    failed = {(init, task) for _, init, task, _ in failed_finetunes(results)}
    for init, merge, lam, by_task, avg, norm in headline(results, on):
        mark = {t: "*" if (init, t) in failed else "" for t in cfg["tasks"]}
        cells = ([mean_std(by_task[t]) + mark[t] for t in cfg["tasks"]]
                 + [mean_std(avg) + ("*" if any(mark.values()) else ""), mean_std(norm)])
        lines.append(row(init, "indiv" if merge == "none" else merge,
                         "-" if lam is None else f"{lam:g}", cells))
    return "\n".join(lines)


def t_quantile(p, df):
    """The p-quantile of Student's t distribution with df degrees of freedom (p > 0.5): the x
    with 1/2 + integral_0^x f = p, f the t density, by Simpson's rule and bisection."""
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)
    f = lambda t: math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    def cdf(x, n=2000):
        h = x / n
        inner = sum((4 if i % 2 else 2) * f(i * h) for i in range(1, n))
        return 0.5 + h / 3 * (f(0) + inner + f(x))

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def t_interval(differences):
    """{"mean", "low", "high"}: the mean of paired differences and its 95% t-interval,
    mean +- t(0.975, n-1) sd / sqrt(n); low and high are None with one seed."""
    n, mean = len(differences), statistics.mean(differences)
    if n < 2:
        return {"mean": mean, "low": None, "high": None}
    half = t_quantile(0.975, n - 1) * statistics.stdev(differences) / math.sqrt(n)
    return {"mean": mean, "low": mean - half, "high": mean + half}


def paired(results, baseline="lora"):
    """For every init against `baseline`, alone and under every merge (each at its own selected
    lambda): the per-seed differences of the task-averaged scores, their mean and a 95%
    t-interval. The seeds pair the runs: the same training rows and statistics examples for
    both inits."""
    rows = {(init, merge): (lam, avg) for init, merge, lam, _, avg, _ in headline(results)}
    out = []
    for (init, merge), (lam, avg) in rows.items():
        if init == baseline or (baseline, merge) not in rows:
            continue
        base_lam, base = rows[baseline, merge]
        diffs = [a - b for a, b in zip(avg, base)]
        out.append({"init": init, "baseline": baseline, "merge": merge, "lambda": lam,
                    "baseline_lambda": base_lam, "differences": diffs, **t_interval(diffs)})
    return out


def lambda_spread(results):
    """{(init, merge): [per seed: best minus worst merged average on dev over the lambdas]}
    for every merge run at two or more lambdas: how much the choice of lambda matters (the
    paper's third claim is that it matters far less for OSRM's adapters)."""
    by_seed = {}
    for (seed, init, merge, lam), by_task in scores(results).items():
        if merge != "none" and lam is not None:
            by_seed.setdefault((init, merge), {}).setdefault(seed, []).append(task_mean(by_task))
    seeds = results["config"]["seeds"]
    return {key: [max(v[s]) - min(v[s]) for s in seeds]
            for key, v in by_seed.items() if len(v[seeds[0]]) > 1}


def paired_spread(results, baseline="lora"):
    """Per init and merge, the per-seed difference of lambda_spread against `baseline`, with
    its mean and 95% t-interval; negative: flatter in lambda than plain LoRA."""
    spread = lambda_spread(results)
    out = []
    for (init, merge), own in spread.items():
        if init == baseline or (baseline, merge) not in spread:
            continue
        diffs = [a - b for a, b in zip(own, spread[baseline, merge])]
        out.append({"init": init, "baseline": baseline, "merge": merge, "spread": own,
                    "baseline_spread": spread[baseline, merge], "differences": diffs,
                    **t_interval(diffs)})
    return out


POINT = 1.0  # "within about a point": the paper's own wording for its single-task scores


def verdict(low, high, held, not_held):
    """'held', 'not held' or 'inconclusive' for a 95% interval [low, high]; 'no interval'
    with one seed. held/not_held: predicates on the interval."""
    if low is None:
        return "no interval"
    return "held" if held(low, high) else "not held" if not_held(low, high) else "inconclusive"


def claims(results, baseline="lora"):
    """The paper's three claims for every init against plain LoRA, read off the 95% intervals
    of the paired differences (the claims as PAPER.md section 3 summarises the paper):
      1 merged: the merged average is above plain LoRA's (held: the interval is above 0;
        not held: below 0; inconclusive: it holds 0);
      2 alone: the single-task average is within about a point of plain LoRA's (held: the
        interval is above -POINT; not held: below -POINT);
      3 lambda: the merged average depends less on lambda (the spread over the lambdas is
        smaller: held: the interval of the spread's difference is below 0; not held: above 0).
    [{"claim", "init", "merge", "mean", "low", "high", "verdict"}]."""
    out = []
    for e in paired(results, baseline):
        if e["merge"] == "none":
            v = verdict(e["low"], e["high"], lambda lo, hi: lo > -POINT, lambda lo, hi: hi < -POINT)
            claim = "2 alone within a point"
        else:
            v = verdict(e["low"], e["high"], lambda lo, hi: lo > 0, lambda lo, hi: hi < 0)
            claim = "1 merged above lora"
        out.append({"claim": claim, "init": e["init"], "merge": e["merge"], "mean": e["mean"],
                    "low": e["low"], "high": e["high"], "verdict": v})
    for e in paired_spread(results, baseline):
        v = verdict(e["low"], e["high"], lambda lo, hi: hi < 0, lambda lo, hi: lo > 0)
        out.append({"claim": "3 flatter in lambda", "init": e["init"], "merge": e["merge"],
                    "mean": e["mean"], "low": e["low"], "high": e["high"], "verdict": v})
    return sorted(out, key=lambda c: (c["claim"], c["init"]))


def interval_text(e):
    """'[-1.23, +0.45]', or 'no interval (one seed)'."""
    return ("no interval (one seed)" if e["low"] is None
            else f"[{e['low']:+.2f}, {e['high']:+.2f}]")


def format_claims(results):
    """The claims table: one line per claim, init and merge, with the interval behind it."""
    entries = claims(results)
    if not entries:
        return ""
    w0 = init_width(results)
    lines = [f"{'claim':<26}{'init':<{w0}}{'merge':<10}{'mean':>8}{'95% interval':>20}  verdict"]
    for c in entries:
        lines.append(f"{c['claim']:<26}{c['init']:<{w0}}"
                     f"{'indiv' if c['merge'] == 'none' else c['merge']:<10}"
                     f"{c['mean']:>+8.2f}{interval_text(c):>20}  {c['verdict']}")
    return "\n".join(lines)


def format_paired(results, entries=None):
    """Paired differences against plain LoRA (default: paired(results)), one line per init and
    merge: the per-seed differences, their mean and 95% interval."""
    entries = paired(results) if entries is None else entries
    if not entries:
        return ""
    w0 = init_width(results)
    lines = [f"{'init':<{w0}}{'merge':<10}{'differences per seed':>30}{'mean':>9}{'95% interval':>24}"]
    for e in entries:
        diffs = " ".join(f"{d:+.2f}" for d in e["differences"])
        lines.append(f"{e['init']:<{w0}}{'indiv' if e['merge'] == 'none' else e['merge']:<10}"
                     f"{diffs:>30}{e['mean']:>+9.2f}{interval_text(e):>24}")
    return "\n".join(lines)


def format_curves(results):
    """Merged average score against lambda, a row per init and merge (mean over seeds)."""
    curves = {key: c for key, c in lambda_curves(results).items() if None not in c}
    lams = sorted({lam for c in curves.values() for lam in c})
    w0 = init_width(results)
    lines = [f"{'init':<{w0}}{'merge':<10}" + "".join(f"{lam:>8g}" for lam in lams)]
    for (init, merge), curve in curves.items():
        cells = [f"{statistics.mean(curve[lam]):>8.2f}" if lam in curve else f"{'':>8}"
                 for lam in lams]
        lines.append(f"{init:<{w0}}{merge:<10}" + "".join(cells))
    return "\n".join(lines)


def interference_matrices(results):
    """{init: (tasks, T x T matrix averaged over seeds)}; entry [t][j] is adapter t's output on
    task j's inputs relative to task j's own adapter's."""
    by_init = {}
    for entry in results["interference"]:
        by_init.setdefault(entry["init"], []).append(entry)
    out = {}
    for init, entries in by_init.items():
        tasks = entries[0]["tasks"]
        n = len(tasks)
        out[init] = (tasks, [[statistics.mean(e["matrix"][t][j] for e in entries)
                              for j in range(n)] for t in range(n)])
    return out


def format_interference(results):
    lines = []
    for init, (tasks, m) in interference_matrices(results).items():
        off = [m[t][j] for t in range(len(tasks)) for j in range(len(tasks)) if t != j]
        lines.append(f"{init}: adapter (row) on task's inputs (column); mean off-diagonal "
                     f"{statistics.mean(off):.3f}")
        lines.append(f"{'':<8}" + "".join(f"{t:>8}" for t in tasks))
        for t, row in zip(tasks, m):
            lines.append(f"{t:<8}" + "".join(f"{v:>8.3f}" for v in row))
    return "\n".join(lines)


def format_subspace_energy(results):
    """The share of each task's input energy (own / other tasks') that OSRM's A_t reads, per
    statistic, mean over layers and seeds; '' for a results.json without it."""
    entries = results.get("subspace_energy") or []
    if not entries:
        return ""
    cfg = results["config"]
    tasks = cfg["tasks"]
    lines = [f"{'statistic':<14}" + "".join(f"{t:>16}" for t in tasks) + f"{'||A u||^2':>11}"]
    for stat in dict.fromkeys(e["stat"] for e in entries):
        cells = []
        for t in tasks:
            es = [e for e in entries if e["stat"] == stat and e["task"] == t]
            own, others = (statistics.mean(e[k] for e in es) for k in ("own", "others"))
            cells.append(f"{100 * own:.3f}%/{100 * others:.3f}%")
        shares = [e["ln_share"] for e in entries if e["stat"] == stat and e.get("ln_share") is not None]
        cells.append(f"{statistics.mean(shares):.3f}" if shares else "-")
        lines.append(f"{stat:<14}" + "".join(f"{c:>16}" for c in cells[:-1]) + f"{cells[-1]:>11}")
    return "\n".join(lines)


def summary(results):
    """Everything printed at the end of a run, as one text (saved next to results.json)."""
    cfg = results["config"]
    on = selected_on(results)
    where = "dev" if on == "dev" else "held-out training rows, scored on dev"
    dev = (f"{cfg['dev_samples']} rows of each GLUE dev set (--dev-samples)"
           if cfg.get("dev_samples") else "GLUE dev")
    parts = [f"tasks {','.join(cfg['tasks'])}; seeds {','.join(map(str, cfg['seeds']))}; "
             f"scores x100 on {dev}; merges at their best lambda on {where} (mean over seeds); "
             f"constant: the best constant prediction",
             format_table(results)]
    if on == "heldout":
        parts += ["", "the same, lambda picked on dev (the paper's way):",
                  format_table(results, "dev")]
    paired_table = format_paired(results)
    if paired_table:
        parts += ["", "paired against plain LoRA: per-seed difference of the average (init - "
                  "lora, lambda as above), mean and 95% t-interval:", paired_table]
    spread_table = format_paired(results, paired_spread(results))
    if spread_table:
        parts += ["", "sensitivity to lambda: per-seed spread of the merged average over the "
                  "lambdas (best - worst, on dev), init - lora; negative: flatter than plain "
                  "LoRA:", spread_table]
    claims_table = format_claims(results)
    if claims_table:
        parts += ["", f"the paper's three claims against plain LoRA, read off the 95% intervals "
                  f"above (1: held if above 0; 2: held if above -{POINT:g}, not held if below; "
                  f"3: held if below 0; inconclusive: the interval holds the bar):", claims_table]
    parts += ["", "merged average score on dev against lambda:",
             format_curves(results), "", "interference ||dW_t H_j|| / ||dW_j H_j||, mean over "
             "layers and seeds:", format_interference(results)]
    energy = format_subspace_energy(results)
    if energy:
        parts += ["", "input energy that OSRM's A_t reads, own task / other tasks (mean over "
                  f"layers and seeds; a random {cfg['rank']}-dimensional subspace reads "
                  f"{cfg['rank']}/d_in of isotropic inputs); ||A u||^2: the share of the "
                  f"LayerNorm direction u, constant over all inputs, in A_t (1: all of it):", energy]
    failed = failed_finetunes(results)
    if failed:
        parts += ["", "warning: fine-tunes that did not clearly learn their task, in every mean "
                      "marked * above:"]
        parts += [f"  {init}/{task} (seed {seed}): {why}" for seed, init, task, why in failed]
    stalled = [f"{t['init']}/{t['task']} (seed {t['seed']})" for t in results.get("training", [])
               if not t["learned"]]
    if stalled:
        parts += ["", f"warning: the training loss did not fall for {', '.join(stalled)}: "
                      f"these adapters learned nothing"]
    if "wall_time_s" in results:
        parts += ["", f"wall time {results['wall_time_s']:.0f}s"]
    return "\n".join(parts)


FIGURES = ("lambda.png", "interference.png", "spectrum.png", "energy.png")  # write_figures' files


def save_figure(fig, path):
    """fig as a PNG at `path`, written whole beside it and then put in its place
    (resume.write_atomic), so that a link at `path` is replaced, never written through."""
    import resume  # here, not above: `python report.py` without matplotlib needs no torch
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


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python report.py PATH/results.json", file=sys.stderr)
        return 2
    path = Path(argv[0])
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
        text, figures = summary(results), write_figures(results, path.parent)
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or path}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, ArithmeticError,
            RecursionError) as e:  # truncated, edited, nested too deep, or another program's
        print(f"error: {path} does not hold the results of a finished osrm-min run "
              f"({type(e).__name__}: {str(e)[:100]}); run the command that writes it again",
              file=sys.stderr)
        return 2
    print(text)
    print(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

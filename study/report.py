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
    """The headline table: a row per init and merge (at its best lambda), a column per task,
    the average, the normalised score and the merging cost (average alone - merged); first
    the score of a constant prediction, a * on every mean that holds a fine-tune that did not
    clearly learn (failed_finetunes), and a ~ on every task scored on carved rows."""
    cfg = results["config"]
    carved = results.get("carved") or {}
    cols = [t + ("~" if t in carved else "") for t in cfg["tasks"]] + ["average", "normalised", "cost"]
    widths = [max(len(c), 13 if len(cfg["seeds"]) > 1 else 7) + 3 for c in cols]
    w0 = init_width(results)
    row = lambda a, b, c, cells: (f"{a:<{w0}}{b:<10}{c:>7}"
                                  + "".join(f"{x:>{w}}" for x, w in zip(cells, widths)))
    lines = [row("init", "merge", "lambda", cols)]
    base = results.get("baselines")
    if base:
        cells = [f"{base[t]:.2f}" for t in cfg["tasks"]] + [f"{task_mean(base):.2f}", "-", "-"]
        lines.append(row("constant", "-", "-", cells))
    failed = {(init, task) for _, init, task, _ in failed_finetunes(results)}
    alone = {}
    for init, merge, lam, by_task, avg, norm in headline(results, on):
        mark = {t: "*" if (init, t) in failed else "" for t in cfg["tasks"]}
        alone.setdefault(init, avg)  # each init's first row is its individual one
        cost = "-" if merge == "none" else mean_std([a - m for a, m in zip(alone[init], avg)])
        cells = ([mean_std(by_task[t]) + mark[t] for t in cfg["tasks"]]
                 + [mean_std(avg) + ("*" if any(mark.values()) else ""), mean_std(norm), cost])
        lines.append(row(init, "indiv" if merge == "none" else merge,
                         "-" if lam is None else f"{lam:g}", cells))
    for t, split in carved.items():
        lines.append(f"~ {t}: scored on rows carved from its "
                     f"{'training' if split == 'dev' else 'dev'} file (--carve-splits), not on "
                     f"GLUE's own dev split")
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


def t_interval(differences, level=0.95):
    """{"mean", "low", "high"}: the mean of paired differences and its t-interval at `level`,
    mean +- t((1 + level) / 2, n-1) sd / sqrt(n); low and high are None with one seed."""
    n, mean = len(differences), statistics.mean(differences)
    if n < 2:
        return {"mean": mean, "low": None, "high": None}
    half = t_quantile((1 + level) / 2, n - 1) * statistics.stdev(differences) / math.sqrt(n)
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


def merging_cost(results, on=None):
    """{(init, merge): [per seed: the task average alone minus merged (at the selected lambda)]}:
    what merging costs each init's adapters, in points."""
    rows = {(init, merge): avg for init, merge, _, _, avg, _ in headline(results, on)}
    return {(init, merge): [a - m for a, m in zip(rows[init, "none"], avg)]
            for (init, merge), avg in rows.items() if merge != "none"}


def cost_reduction(results, baseline="lora"):
    """The primary endpoint: per init and merge, the per-seed reduction in merging cost against
    `baseline`, cost(baseline) - cost(init) (positive: the init's adapters lose less when
    merged), its mean and 95% t-interval, and `share`: the mean reduction over the baseline's
    mean cost, the part of plain LoRA's merging loss the init recovers (None if that cost is
    not positive)."""
    cost = merging_cost(results)
    out = []
    for (init, merge), own in cost.items():
        if init == baseline or (baseline, merge) not in cost:
            continue
        base = cost[baseline, merge]
        diffs = [b - c for b, c in zip(base, own)]
        base_mean = statistics.mean(base)
        out.append({"init": init, "baseline": baseline, "merge": merge, "cost": own,
                    "baseline_cost": base, "differences": diffs, **t_interval(diffs),
                    "share": statistics.mean(diffs) / base_mean if base_mean > 0 else None})
    return out


POINT = 1.0  # "within about a point": the paper's own wording for its single-task scores
MARGIN = 1.0  # claim 1's equivalence margin: a merged gain under a point is no gain of note
MIN_SEEDS = 3  # the claims are read off intervals over at least this many seeds


def interior_best(results, init, merge):
    """(interior, lambda): whether the selected lambda of `init` under `merge` lies strictly
    inside the grid of lambdas run, and that lambda."""
    lams = sorted(lambda_curves(results, selected_on(results)).get((init, merge), {}))
    best = best_lambdas(results).get((init, merge))
    return (len(lams) >= 3 and best not in (lams[0], lams[-1])), best


def claim_merged(low, high):
    """Claim 1, merged scores above plain LoRA's: held if the 95% interval of the difference is
    above 0; not held if it lies below +MARGIN (inside the margin around 0, or below it);
    inconclusive otherwise."""
    return "held" if low > 0 else "not held" if high < MARGIN else "inconclusive"


def claim_alone(low90, high90):
    """Claim 2, single-task scores within a point of plain LoRA's, as equivalence: two one-sided
    tests at +-POINT, i.e. the 90% interval inside [-POINT, +POINT]: held. Only the lower side
    (the interval above -POINT): no worse than a point. Worse by more than a point (below
    -POINT): not held; better by more than a point (above +POINT): said so."""
    if -POINT < low90 and high90 < POINT:
        return "held"
    if low90 > POINT:
        return "better by over a point"
    if low90 > -POINT:
        return "no worse than a point"
    return "not held" if high90 < -POINT else "inconclusive"


def claim_flatter(low, high):
    """Claim 3, less sensitive to lambda: held if the 95% interval of the spread's difference
    is below 0, not held if above 0, inconclusive otherwise."""
    return "held" if high < 0 else "not held" if low > 0 else "inconclusive"


def claims(results, baseline="lora"):
    """The paper's three claims for every init against plain LoRA, by the rules of
    claim_merged, claim_alone and claim_flatter (the claims as the paper states them: merged
    scores well above plain LoRA's, single-task scores within about a point, far less
    sensitivity to lambda). Claim 3 is tested only where the selected lambda is interior for
    both inits; elsewhere its verdict is "not testable here". With fewer than MIN_SEEDS seeds,
    []. [{"claim", "init", "merge", "mean", "low", "high", "verdict"}]."""
    if len(results["config"]["seeds"]) < MIN_SEEDS:
        return []
    out = []
    for e in paired(results, baseline):
        if e["merge"] == "none":
            ninety = t_interval(e["differences"], 0.90)
            out.append({"claim": "2 alone within a point", "init": e["init"], "merge": "none",
                        "mean": e["mean"], "low": ninety["low"], "high": ninety["high"],
                        "level": 0.90, "verdict": claim_alone(ninety["low"], ninety["high"])})
        else:
            out.append({"claim": "1 merged above lora", "init": e["init"], "merge": e["merge"],
                        "mean": e["mean"], "low": e["low"], "high": e["high"], "level": 0.95,
                        "verdict": claim_merged(e["low"], e["high"])})
    for e in paired_spread(results, baseline):
        (ok, lam), (base_ok, base_lam) = (interior_best(results, e["init"], e["merge"]),
                                          interior_best(results, baseline, e["merge"]))
        verdict = (claim_flatter(e["low"], e["high"]) if ok and base_ok else
                   f"not testable here (best lambda at the grid's edge: {baseline} {base_lam:g}, "
                   f"{e['init']} {lam:g})")
        out.append({"claim": "3 flatter in lambda", "init": e["init"], "merge": e["merge"],
                    "mean": e["mean"], "low": e["low"], "high": e["high"], "level": 0.95,
                    "verdict": verdict})
    return sorted(out, key=lambda c: (c["claim"], c["init"]))


def interval_text(e):
    """'[-1.23, +0.45]', or 'no interval (one seed)'."""
    return ("no interval (one seed)" if e["low"] is None
            else f"[{e['low']:+.2f}, {e['high']:+.2f}]")


def format_claims(results):
    """The claims table: one line per claim, init and merge, with the interval behind it (90%
    for claim 2's equivalence test, 95% otherwise); with fewer than MIN_SEEDS seeds, one line
    that says so."""
    seeds = len(results["config"]["seeds"])
    if seeds < MIN_SEEDS:
        return (f"the paper's claims are read off intervals over seeds: they need {MIN_SEEDS} or "
                f"more --seeds (this run has {seeds})")
    entries = claims(results)
    if not entries:
        return ""
    w0 = init_width(results)
    lines = [f"{'claim':<26}{'init':<{w0}}{'merge':<10}{'mean':>8}  {'interval':<22}verdict"]
    for c in entries:
        interval = f"{interval_text(c)} {round(100 * c['level'])}%"
        lines.append(f"{c['claim']:<26}{c['init']:<{w0}}"
                     f"{'indiv' if c['merge'] == 'none' else c['merge']:<10}"
                     f"{c['mean']:>+8.2f}  {interval:<22}{c['verdict']}")
    return "\n".join(lines)


def format_cost_reduction(results):
    """The primary endpoint's table: per init and merge, plain LoRA's merging cost, the init's,
    the reduction with its 95% interval, and the share of plain LoRA's cost recovered."""
    entries = cost_reduction(results)
    if not entries:
        return ""
    w0 = init_width(results)
    lines = [f"{'init':<{w0}}{'merge':<10}{'lora cost':>10}{'its cost':>10}{'reduction':>11}"
             f"  {'95% interval':<24}{'share':>7}"]
    for e in entries:
        share = "-" if e["share"] is None else f"{100 * e['share']:.0f}%"
        lines.append(f"{e['init']:<{w0}}{e['merge']:<10}{statistics.mean(e['baseline_cost']):>10.2f}"
                     f"{statistics.mean(e['cost']):>10.2f}{e['mean']:>+11.2f}  "
                     f"{interval_text(e):<24}{share:>7}")
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


def interference_matrices(results, key="interference"):
    """{init: (tasks, T x T matrix averaged over seeds)}; entry [t][j] is adapter t's output on
    task j's inputs relative to task j's own adapter's (results[key])."""
    by_init = {}
    for entry in results.get(key) or []:
        by_init.setdefault(entry["init"], []).append(entry)
    out = {}
    for init, entries in by_init.items():
        tasks = entries[0]["tasks"]
        n = len(tasks)
        out[init] = (tasks, [[statistics.mean(e["matrix"][t][j] for e in entries)
                              for j in range(n)] for t in range(n)])
    return out


def format_interference(results, key="interference", matrices=True):
    """Each init's interference matrix (results[key]) and its mean off-diagonal entry; with
    matrices=False, only the means, on one line."""
    lines, means = [], []
    for init, (tasks, m) in interference_matrices(results, key).items():
        off = statistics.mean(m[t][j] for t in range(len(tasks)) for j in range(len(tasks)) if t != j)
        means.append(f"{init} {off:.3f}")
        if matrices:
            lines.append(f"{init}: adapter (row) on task's inputs (column); mean off-diagonal "
                         f"{off:.3f}")
            lines.append(f"{'':<8}" + "".join(f"{t:>8}" for t in tasks))
            for t, row in zip(tasks, m):
                lines.append(f"{t:<8}" + "".join(f"{v:>8.3f}" for v in row))
    return "\n".join(lines) if matrices else "mean off-diagonal: " + ", ".join(means)


def format_movement(results):
    """A's energy before and after training and how far its row space turned, per init (mean
    over tasks, layers and seeds); '' for a results.json without it."""
    entries = results.get("movement") or []
    if not entries:
        return ""
    w0 = init_width(results)
    pct = lambda key, es: f"{100 * statistics.mean(e[key] for e in es):.3f}%"
    lines = [f"{'init':<{w0}}{'own start':>11}{'own end':>11}{'others start':>14}"
             f"{'others end':>12}{'overlap':>9}"]
    for init in dict.fromkeys(e["init"] for e in entries):
        es = [e for e in entries if e["init"] == init]
        lines.append(f"{init:<{w0}}{pct('own_start', es):>11}{pct('own_end', es):>11}"
                     f"{pct('others_start', es):>14}{pct('others_end', es):>12}"
                     f"{statistics.mean(e['overlap'] for e in es):>9.3f}")
    return "\n".join(lines)


def score_error(metrics, n):
    """The standard error, x100, of a score on n rows, from its metrics: binomial,
    sqrt(p (1 - p) / n), for an accuracy (also for the mean of accuracy and F1, roughly); for
    a correlation r (Pearson/Spearman, Matthews), (1 - r^2) / sqrt(n - 1)."""
    if "accuracy" in metrics:
        p = metrics["accuracy"]
        return 100 * math.sqrt(p * (1 - p) / n)
    r = statistics.mean(metrics.values())
    return 100 * (1 - r * r) / math.sqrt(max(n - 1, 1))


def heldout_error(results, baseline="lora"):
    """(rows per task, the standard error of one merged task average on the held-out rows),
    for plain LoRA's first merge at its selected lambda, first seed; None without held-out
    selection."""
    cfg = results["config"]
    rows = results.get("heldout_rows") or []
    if selected_on(results) != "heldout" or not rows:
        return None
    merges = [m for m in cfg["merges"] if lambda_curves(results, "heldout").get((baseline, m))]
    if not merges:
        return None
    lam = best_lambdas(results).get((baseline, merges[0]))
    picked = [r for r in rows if (r["seed"], r["init"], r["merge"], r["lambda"])
              == (cfg["seeds"][0], baseline, merges[0], lam)]
    if not picked:
        return None
    n = cfg["heldout_samples"]
    errors = [score_error(r["metrics"], n) for r in picked]
    return n, math.sqrt(sum(e * e for e in errors)) / len(errors)


def format_subspace_energy(results):
    """The share of each task's input energy (own / other tasks') that OSRM's A_t reads, per
    statistic, mean over layers and seeds; '' for a results.json without it."""
    entries = results.get("subspace_energy") or []
    if any(e.get("rows") == "heldout" for e in entries):  # older runs measured on the fit rows
        entries = [e for e in entries if e.get("rows") == "heldout"]
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
    parts = [f"({note})" for note in results.get("notes", [])]
    parts += [f"tasks {','.join(cfg['tasks'])}; seeds {','.join(map(str, cfg['seeds']))}; "
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
    reduction = format_cost_reduction(results)
    if reduction:
        parts += ["", "PRIMARY ENDPOINT: the reduction in merging cost against plain LoRA, per "
                  "seed (lora's cost - the init's; cost = average alone - merged, lambda as "
                  "above), mean and 95% t-interval; share: of plain LoRA's cost recovered:",
                  reduction]
    claims_table = format_claims(results)
    if claims_table:
        parts += ["", f"the paper's three claims against plain LoRA (1: held if the 95% interval "
                  f"of the merged difference is above 0, not held if it lies below +{MARGIN:g}; "
                  f"2: held if the 90% interval of the difference alone lies inside "
                  f"[-{POINT:g}, +{POINT:g}] (equivalence), no worse than a point if only above "
                  f"-{POINT:g}; 3: only where the selected lambda is interior for both, held if "
                  f"the spread's 95% interval is below 0):", claims_table]
    n_intervals = len(claims(results)) + len(cost_reduction(results))
    if n_intervals and len(cfg["seeds"]) >= MIN_SEEDS:
        parts += [f"exploratory: every interval but the primary endpoint's ({n_intervals} in "
                  f"these two tables), none corrected for multiple comparisons"]
    error = heldout_error(results)
    if error:
        parts += ["", f"lambda is picked on {error[0]} held-out training rows per task: one "
                  f"merged average there has a standard error of about {error[1]:.2f} points "
                  f"(binomial for accuracies, (1 - r^2) / sqrt(n - 1) for correlations)"]
    parts += ["", "merged average score on dev against lambda:",
             format_curves(results), "", "interference ||dW_t H_j|| / ||dW_j H_j||, mean over "
             "layers and seeds, on held-out rows:" if results.get("interference_fit") else
             "interference ||dW_t H_j|| / ||dW_j H_j||, mean over layers and seeds:",
             format_interference(results)]
    if results.get("interference_fit"):
        fit = format_interference(results, "interference_fit", matrices=False)
        parts += ["on the statistics rows OSRM's subspace was fitted to (flatters OSRM):", fit]
    energy = format_subspace_energy(results)
    if energy:
        parts += ["", "input energy that each statistic's A_t reads before training, own task / "
                  f"other tasks (mean over layers and seeds; held-out rows where recorded; a "
                  f"random {cfg['rank']}-dimensional subspace reads {cfg['rank']}/d_in of "
                  f"isotropic inputs); ||A u||^2: the share of the LayerNorm direction u, "
                  f"constant over all inputs, in A_t (1: all of it):", energy]
    moved = format_movement(results)
    if moved:
        parts += ["", "how far training moves A (held-out rows; mean over tasks, layers and "
                  "seeds): the input energy A's row space reads of its own task / of the "
                  "others', at the start and the end, and the overlap of the two row spaces "
                  f"(mean cos^2 of the principal angles; 1: unmoved, about {cfg['rank']}/d_in "
                  "for unrelated subspaces):", moved]
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
    if results.get("parts"):
        parts += ["", "combined from runs side by side: " + "; ".join(
            f"{p['out']} ({','.join(p['inits'])}, {p['wall_time_s'] or 0:.0f}s)" for p in results["parts"])]
    if "wall_time_s" in results:
        parts += ["", f"wall time {results['wall_time_s']:.0f}s"]
    return "\n".join(parts)


FIGURES = ("lambda.png", "interference.png", "spectrum.png", "energy.png")  # write_figures' files


def save_figure(fig, path):
    """fig as a PNG at `path`, written whole beside it and then put in its place
    (resume.write_atomic), so that a link at `path` is replaced, never written through."""
    from study import resume  # here, not above: `python report.py` without matplotlib needs no torch
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


def finish(results):
    """Add the paired comparisons, the primary endpoint and the claims to a run's results (what
    results.json holds beside the raw rows)."""
    results["paired"] = paired(results)
    results["paired_lambda_spread"] = paired_spread(results)
    results["cost_reduction"] = cost_reduction(results)
    results["claims"] = claims(results)
    return results


LISTS = ("rows", "heldout_rows", "interference", "interference_fit", "subspace_energy",
         "spectrum", "training", "movement", "merge_statistics_s")


def combine(parts):
    """One results dict from runs that differ only in their --inits and --out, such as a study
    split over two processes: the same seeds, tasks, settings and input files, disjoint inits.
    Entries both runs record (the subspace energy of the random reference, the spectra) are
    kept once. A ValueError names what differs."""
    first = parts[0]
    inits = []
    for p in parts:
        c = p["config"]
        differ = sorted(k for k in set(c) | set(first["config"])
                        if k not in ("inits", "out", "seed") and c.get(k) != first["config"].get(k))
        if differ or p.get("inputs") != first.get("inputs"):
            raise ValueError(f"{c['out']} and {first['config']['out']} differ in "
                             f"{', '.join(differ) or 'their input files'}; only --inits and --out may")
        if set(c["inits"]) & set(inits):
            raise ValueError(f"{c['out']} repeats inits of another run: {sorted(set(c['inits']) & set(inits))}")
        inits += c["inits"]
    out = {k: v for k, v in first.items() if k not in LISTS}
    out["config"] = dict(first["config"], inits=inits, out=None)
    for key in LISTS:
        seen, out[key] = set(), []
        for p in parts:
            for entry in p.get(key) or []:
                text = json.dumps(entry, sort_keys=True)
                if text not in seen:
                    seen.add(text)
                    out[key].append(entry)
    out["parts"] = [{"out": p["config"]["out"], "inits": p["config"]["inits"],
                     "wall_time_s": p.get("wall_time_s")} for p in parts]
    out["wall_time_s"] = max((p.get("wall_time_s") or 0) for p in parts)
    return finish(out)


def main(argv=None):
    """python report.py RUN/results.json [RUN2/results.json ...] [--out DIR]: print the summary
    and draw the figures again; several runs that differ only in --inits are combined into one
    report, written with its results.json into --out."""
    import argparse
    from study import resume
    p = argparse.ArgumentParser(description=main.__doc__.split(":", 1)[1].strip())
    p.add_argument("results", nargs="+", help="results.json of a finished run")
    p.add_argument("--out", help="where a combined report goes (results.json, summary.txt, figures)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.results) > 1 and not args.out:
        print("error: combining runs needs --out DIR", file=sys.stderr)
        return 2
    path = None
    try:
        parts = []
        for path in map(Path, args.results):
            parts.append(json.loads(path.read_text(encoding="utf-8")))
        if len(parts) > 1:
            path = None  # from here on a mistake is in what the runs hold together
        if len(parts) == 1 and not args.out:
            results, out = parts[0], Path(args.results[0]).parent
        else:
            results = combine(parts) if len(parts) > 1 else finish(parts[0])
            out = Path(args.out)
            out.mkdir(parents=True, exist_ok=True)
            resume.write_json_atomic(results, out / "results.json")
        text = summary(results)
        if args.out:
            resume.write_text_atomic(text + "\n", out / "summary.txt")
        figures = write_figures(results, out)
    except OSError as e:
        print(f"error: {e.strerror or e}: {e.filename or path}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, ArithmeticError,
            RecursionError) as e:  # truncated, edited, nested too deep, or another program's
        if path is None:  # the files read, but do not go together (combine's ValueError)
            print(f"error: these runs cannot be reported together: {str(e)[:200]}", file=sys.stderr)
        else:
            print(f"error: {path} does not hold the results of a finished osrm-min run "
                  f"({type(e).__name__}: {str(e)[:100]}); run the command that writes it again",
                  file=sys.stderr)
        return 2
    print(text)
    print(figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())

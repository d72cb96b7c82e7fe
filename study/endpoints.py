"""The statistics of a study: each init against plain LoRA seed by seed (paired differences,
t-intervals), the primary endpoint (the reduction in merging cost), and the rules that read
the paper's three claims off the intervals, fixed before any run and tested on worked cases
(tests/study/test_report.py).
"""

import math
import statistics

from study.tables import (best_lambdas, headline, lambda_curves, merging_cost, scores, selected_on,
                           task_mean)


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
        if merge != "none" and lam is not None and not merge.endswith(":own"):
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


CONTROL = "lora-orthonormal"  # this project's scale-matched control for OSRM


def against_control(results, control=CONTROL):
    """Exploratory, this project's own: each OSRM init against the scale-matched control, which
    differs from it in one thing only, where A points (random orthonormal rows, OSRM's row
    norm). Returns the paired differences of the average, alone and merged (paired), and the
    reduction in merging cost (cost_reduction), both against the control instead of plain LoRA."""
    def osrm(entries):
        return [e for e in entries if e["init"].startswith("osrm")]
    return osrm(paired(results, control)), osrm(cost_reduction(results, control))


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
    """Claim 1, merged scores above plain LoRA's, from the 95% interval [low, high] of the
    difference; four cases that never overlap:
    low > 0 and high >= MARGIN: "held" (a gain, and one of a point or more not excluded);
    low > 0 and high < MARGIN: "a gain under a point" (above plain LoRA, not by a point);
    low <= 0 and high < MARGIN: "not held" (no gain shown, a gain of a point excluded);
    low <= 0 and high >= MARGIN: "inconclusive"."""
    if low > 0:
        return "held" if high >= MARGIN else "a gain under a point"
    return "not held" if high < MARGIN else "inconclusive"


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


def finish(results):
    """Add the paired comparisons, the primary endpoint, the claims and the exploratory pairing
    against the scale-matched control to a run's results (what results.json holds beside the
    raw rows)."""
    results["paired"] = paired(results)
    results["paired_lambda_spread"] = paired_spread(results)
    results["cost_reduction"] = cost_reduction(results)
    results["claims"] = claims(results)
    diffs, reductions = against_control(results)
    results["against_control"] = {"control": CONTROL, "paired": diffs, "cost_reduction": reductions}
    return results

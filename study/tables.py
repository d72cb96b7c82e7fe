"""Reading a run's results (the dict that `osrm_min.run` returns and results.json holds): its
scores by seed, init, merge and lambda, each merge at its selected lambda (`headline`), the
merging cost, and which fine-tunes did not clearly learn. Nothing is recomputed from a model;
study/endpoints.py reads intervals off these, study/report.py prints them.
"""

import math
import statistics


def mean_std(values):
    """'85.21' for one value, '85.21±0.40' (sample standard deviation) for several; 'n/a' if a
    value is undefined (nan: a normalised score whose individual score was not positive)."""
    if any(v is None or math.isnan(v) for v in values):
        return "n/a"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f}±{statistics.stdev(values):.2f}"


def resolved_settings(results):
    """The run's settings as they resolved on its machine: results.json's "config" (as given)
    with "located" over it (the model and GLUE folders, the device, the heads' pooling).
    results.json from before "located" held those in "config" itself."""
    return dict(results["config"], **results.get("located", {}))


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
    """{(init, merge): {lambda: [merged average score per seed]}}, every merge and lambda run
    (averages_by_seed without the seeds' names)."""
    return {key: {lam: list(by_seed.values()) for lam, by_seed in curve.items()}
            for key, curve in averages_by_seed(results, split).items()}


def has_lambda_grid(results):
    """Whether some merge ran at more than one lambda: only then has the lambda table or figure
    something to show."""
    return any(len(set(curve) - {None}) > 1 for curve in lambda_curves(results).values())


def selected_on(results):
    """Where lambda is picked: "dev" (the paper) or "heldout" (--select-on heldout)."""
    return results["config"].get("select_on", "dev")


# Selection's rule for near-ties, fixed before the four-task study's successor ran: lambdas whose
# merged averages (mean over seeds, on the rows that pick) differ from the best one's by no more
# than TIE_FRACTION of the standard error of that difference (paired by seed) are tied; the
# smallest tied lambda is picked, and the report gives every verdict the other side would change.
TIE_FRACTION = 0.1


def averages_by_seed(results, split="dev"):
    """{(init, merge): {lambda: {seed: merged average}}} of every merge and lambda run (not the
    own updates scored alone, --own-at-lambda)."""
    out = {}
    for (seed, init, merge, lam), by_task in scores(results, split).items():
        if merge != "none" and not merge.endswith(":own"):
            out.setdefault((init, merge), {}).setdefault(lam, {})[seed] = task_mean(by_task)
    return out


def tied_best(curve):
    """The lambdas tied for the best in `curve` ({lambda: {seed: average}}), sorted: the best by
    the mean over seeds, and every lambda whose mean is within TIE_FRACTION of the standard
    error of its per-seed difference from the best (with one seed, or differences that do not
    vary, only an equal mean ties)."""
    mean = lambda lam: statistics.mean(curve[lam].values())
    best = max(curve, key=mean)
    tied = []
    for lam in curve:
        diffs = [curve[best][s] - curve[lam][s] for s in curve[best]]
        se = statistics.stdev(diffs) / math.sqrt(len(diffs)) if len(diffs) > 1 else 0.0
        if mean(best) - mean(lam) <= TIE_FRACTION * se:
            tied.append(lam)
    return sorted(tied)


def best_lambdas(results, on=None):
    """{(init, merge): lambda} with the best merged average over the seeds' mean, on dev or on
    held-out training rows (`on`, default: the run's --select-on), near-ties resolved by
    `tied_best`'s rule (its smallest lambda). results["lambda_choice"] ({"init/merge": lambda})
    overrides a pick: how the report reads the other side of a tie. The paper picks lambda on
    the GLUE dev sets that it also reports, which flatters every merge a little."""
    chosen = results.get("lambda_choice") or {}
    best = {key: chosen.get("/".join(key), tied_best(curve)[0])
            for key, curve in averages_by_seed(results, on or selected_on(results)).items()}
    best.update({key: None for key, curve in lambda_curves(results).items() if None in curve})
    return best


def lambda_ties(results, on=None):
    """{(init, merge): [tied lambdas]} wherever selection met a tie (tied_best), on the rows
    that pick lambda."""
    ties = {key: tied_best(curve) for key, curve in
            averages_by_seed(results, on or selected_on(results)).items() if None not in curve}
    return {key: lams for key, lams in ties.items() if len(lams) > 1}


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
    task in this run (a collapsed fine-tune, far below the same task's others)."""
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


def merging_cost(results, on=None):
    """{(init, merge): [per seed: the task average alone minus merged (at the selected lambda)]}:
    what merging costs each init's adapters, in points."""
    rows = {(init, merge): avg for init, merge, _, _, avg, _ in headline(results, on)}
    return {(init, merge): [a - m for a, m in zip(rows[init, "none"], avg)]
            for (init, merge), avg in rows.items() if merge != "none"}


def cost_split(results, on=None):
    """{(init, merge): {"own": [per seed], "others": [per seed]}} where the run scored each
    task's own update alone at the merge's selected lambda (--own-at-lambda): the merging cost
    (merging_cost) split into what shrinking or trimming a task's own update costs (average
    alone - own update merged alone) and what the other tasks' updates cost (that - merged).
    The two parts sum to the cost, seed by seed."""
    s, cfg = scores(results), results["config"]
    best = best_lambdas(results, on)
    out = {}
    for (init, merge), lam in best.items():
        keys = [(seed, init, f"{merge}:own", lam) for seed in cfg["seeds"]]
        if lam is None or not all(k in s for k in keys):
            continue
        alone = [task_mean(s[seed, init, "none", None]) for seed in cfg["seeds"]]
        own = [task_mean(s[k]) for k in keys]
        merged = [task_mean(s[seed, init, merge, lam]) for seed in cfg["seeds"]]
        out[init, merge] = {"own": [a - o for a, o in zip(alone, own)],
                            "others": [o - m for o, m in zip(own, merged)]}
    return out


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


LISTS = ("rows", "heldout_rows", "interference", "interference_fit", "subspace_energy",
         "spectrum", "training", "movement", "merge_statistics_s", "labels")

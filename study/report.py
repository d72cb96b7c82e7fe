"""Turning results.json into what a reader looks at: the headline table with the merging cost,
the primary endpoint and the claims (study/endpoints.py), lambda curves, interference matrices,
how far A moved, and (with matplotlib installed) the figures (study/figures.py). Nothing is
recomputed from a model; runs split by --inits or --seeds are combined into one report.

    python -m study.report runs/sst2-mrpc/results.json              # print it again, redraw
    python -m study.report A/results.json B/results.json --out DIR  # one report over both
"""

import json
import math
import os
import statistics
import sys
from pathlib import Path

from study.endpoints import (CONTROL, MARGIN, MIN_SEEDS, POINT, against_control, claims,
                             cost_reduction, finish, heldout_error, paired, paired_spread,
                             t_interval)
from study.figures import write_figures
from study.tables import (LISTS, TIE_FRACTION, best_lambdas, cost_split, failed_finetunes,
                           has_lambda_grid, headline, init_width, interference_matrices,
                           lambda_curves, lambda_ties, mean_std, resolved_settings,
                           selected_on, task_mean)


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


def format_cost_split(results):
    """The merging cost of each init and merge split in two (tables.cost_split), mean ± sd over
    seeds, and, against plain LoRA, the paired reduction of the other tasks' part with its 95%
    interval; '' where the run did not score own updates alone (--own-at-lambda)."""
    split = cost_split(results)
    if not split:
        return ""
    w0 = init_width(results)
    lines = [f"{'init':<{w0}}{'merge':<10}{'own update':>14}{'other tasks':>14}"
             f"{'reduction of the other tasks part':>36}"]
    for (init, merge), parts in split.items():
        base = split.get(("lora", merge))
        reduction = "-"
        if init != "lora" and base is not None:
            e = t_interval([b - o for b, o in zip(base["others"], parts["others"])])
            reduction = f"{e['mean']:+.2f} {interval_text(e)}"
        lines.append(f"{init:<{w0}}{merge:<10}{mean_std(parts['own']):>14}"
                     f"{mean_std(parts['others']):>14}{reduction:>36}")
    return "\n".join(lines)


def format_ties(results):
    """Each near-tie of lambda selection (tables.tied_best), the lambda picked, and every claim
    verdict and primary-endpoint interval that the other side of the tie would change; '' if
    selection met no tie."""
    ties = lambda_ties(results)
    if not ties:
        return ""
    picked, where = best_lambdas(results), selected_on(results)
    verdicts = lambda r: {(c["claim"], c["init"], c["merge"]): c for c in claims(r)}
    reductions = lambda r: {(e["init"], e["merge"]): e for e in cost_reduction(r)}
    before, reduced = verdicts(results), reductions(results)
    lines = []
    for (init, merge), lams in ties.items():
        lines.append(f"{init}/{merge}: lambdas {', '.join(f'{lam:g}' for lam in lams)} tied on the "
                     f"{where} rows; picked {picked[init, merge]:g}")
        for other in (lam for lam in lams if lam != picked[init, merge]):
            alt = dict(results, lambda_choice={**(results.get("lambda_choice") or {}),
                                               f"{init}/{merge}": other})
            changed = [f"claim {k[0][0]} {k[1]}/{k[2]}: {before[k]['verdict']} -> {c['verdict']}"
                       for k, c in verdicts(alt).items()
                       if k in before and c["verdict"].split(" (")[0] != before[k]["verdict"].split(" (")[0]]
            changed += [f"primary endpoint {k[0]}/{k[1]}: {reduced[k]['mean']:+.2f} "
                        f"{interval_text(reduced[k])} -> {e['mean']:+.2f} {interval_text(e)}"
                        for k, e in reductions(alt).items() if k in reduced and e["mean"] != reduced[k]["mean"]]
            lines += [f"  with {other:g} instead: {c}" for c in changed] or [
                f"  with {other:g} instead: no verdict or endpoint changes"]
    return "\n".join(lines)


def format_cost_reduction(results, entries=None, label="lora cost"):
    """The primary endpoint's table: per init and merge, plain LoRA's merging cost, the init's,
    the reduction with its 95% interval, and the share of plain LoRA's cost recovered (entries:
    cost_reduction(results) unless given, against another baseline, named by label)."""
    entries = cost_reduction(results) if entries is None else entries
    if not entries:
        return ""
    w0 = init_width(results)
    lines = [f"{'init':<{w0}}{'merge':<10}{label:>10}{'its cost':>10}{'reduction':>11}"
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
    split_table = format_cost_split(results)
    if split_table:
        parts += ["", "exploratory: the merging cost in two parts, at the selected lambda: the own "
                  "update's (average alone - each task's own update merged alone) and the other "
                  "tasks' (that - merged); against plain LoRA, the per-seed reduction of the "
                  "second, mean and 95% t-interval:", split_table]
    claims_table = format_claims(results)
    if claims_table:
        parts += ["", f"the paper's three claims against plain LoRA (1: held if the 95% interval "
                  f"of the merged difference is above 0 and reaches +{MARGIN:g}, a gain under a "
                  f"point if above 0 and below +{MARGIN:g}, not held if it holds 0 or less and lies "
                  f"below +{MARGIN:g}; "
                  f"2: held if the 90% interval of the difference alone lies inside "
                  f"[-{POINT:g}, +{POINT:g}] (equivalence), no worse than a point if only above "
                  f"-{POINT:g}; 3: only where the selected lambda is interior for both, held if "
                  f"the spread's 95% interval is below 0):", claims_table]
    ties = format_ties(results)
    if ties:
        parts += ["", f"ties in lambda selection (within {TIE_FRACTION:g} of the standard error "
                  f"of their paired difference from the best; the smallest tied lambda is "
                  f"picked), and what the other side of each tie would change:", ties]
    n_intervals = len(claims(results))
    if n_intervals and len(cfg["seeds"]) >= MIN_SEEDS:
        parts += [f"exploratory: every interval but the primary endpoint's (the {n_intervals} of "
                  f"the claims above, and those below), none corrected for multiple comparisons"]
    diffs, reductions = against_control(results)
    if diffs:
        parts += ["", f"exploratory, this project's own: OSRM against the scale-matched control "
                  f"({CONTROL}: random orthonormal rows, OSRM's row norm; what differs is where "
                  f"A points), per-seed difference of the average (osrm - {CONTROL}, lambda as "
                  f"above), mean and 95% t-interval:", format_paired(results, diffs)]
    if reductions:
        parts += [f"and the reduction in merging cost against it ({CONTROL}'s cost - OSRM's; "
                  f"share: of the control's cost):",
                  format_cost_reduction(results, reductions, "ctrl cost")]
    error = heldout_error(results)
    if error:
        parts += ["", f"lambda is picked on {error[0]} held-out training rows per task: one "
                  f"merged average there has a standard error of about {error[1]:.2f} points "
                  f"(binomial for accuracies, (1 - r^2) / sqrt(n - 1) for correlations)"]
    if has_lambda_grid(results):
        parts += ["", "merged average score on dev against lambda:", format_curves(results)]
    parts += ["", "interference ||dW_t H_j|| / ||dW_j H_j||, mean over "
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
        parts += ["", "combined from runs: " + "; ".join(
            f"{p['out']} ({','.join(p['inits'])}"
            + (f"; seeds {','.join(map(str, p['seeds']))}" if p.get("seeds") else "")
            + f", {p['wall_time_s'] or 0:.0f}s)" for p in results["parts"])]
    if "wall_time_s" in results:
        parts += ["", f"wall time {results['wall_time_s']:.0f}s"]
    return "\n".join(parts)


def read_results(path):
    """A run's results.json, checked (`check`). Strict JSON: NaN and Infinity, which Python's
    json module reads but no osrm-min run writes (it writes null), are refused."""
    def refuse(constant):
        raise ValueError(f"it holds {constant}, which is not JSON")
    results = json.loads(Path(path).read_text(encoding="utf-8"), parse_constant=refuse)
    check(results)
    return results


def check(results):
    """That `results` is what a finished osrm-min run writes, as far as the report reads it:
    every score row one a run writes (resume.valid_score), every interference, energy and
    movement a finite number. A ValueError says what is not."""
    from study.resume import is_a, valid_score
    if not isinstance(results, dict) or not isinstance(results.get("config"), dict):
        raise ValueError("it is not a run's results (no config)")
    for key in ("rows", "heldout_rows"):
        bad = next((r for r in results.get(key) or [] if not valid_score(r)), None)
        if bad is not None:
            raise ValueError(f"a score in {key} is not one a run writes: {json.dumps(bad)[:80]}")
    numbers = ([v for e in results.get("interference", []) + results.get("interference_fit", [])
                for row in e["matrix"] for v in row]
               + [e[k] for e in results.get("subspace_energy", []) for k in ("own", "others")]
               + [e[k] for e in results.get("movement", [])
                  for k in ("own_start", "others_start", "own_end", "others_end", "overlap")])
    if not all(is_a(v, (int, float)) and math.isfinite(v) for v in numbers):
        raise ValueError("an interference, subspace energy or movement is not a finite number")


def holds_an_input(out, inputs):
    """The first of `inputs` (results.json paths) in the folder `out`, where a report writes
    results.json, summary.txt and the figures; None if none is."""
    for path in inputs:
        if out.is_dir() and path.parent.is_dir() and os.path.samefile(out, path.parent):
            return path
    return None


def combine(parts):
    """One results dict from runs that differ only in their --inits, --seeds and --out, such as
    a study split over two processes, over GPUs or over a cluster's job array: the same tasks,
    settings and input files, and together every init for every seed, each (seed, init) from
    one run only. Entries several runs record (the subspace energy of the random reference, the
    spectra of a seed) are kept once. A ValueError names what differs or is missing."""
    for p in parts:
        check(p)
    first = parts[0]
    inits, seeds, done = [], [], set()
    settings = resolved_settings(first)
    for p in parts:
        c, resolved = p["config"], resolved_settings(p)
        differ = sorted(k for k in set(resolved) | set(settings)  # ("seed": in older files)
                        if k not in ("inits", "seeds", "out", "seed") and resolved.get(k) != settings.get(k))
        if differ or p.get("inputs") != first.get("inputs"):
            raise ValueError(f"{c['out']} and {first['config']['out']} differ in "
                             f"{', '.join(differ) or 'their input files'}; only --inits, --seeds "
                             f"and --out may")
        pairs = {(s, i) for s in c["seeds"] for i in c["inits"]}
        if pairs & done:
            raise ValueError(f"{c['out']} repeats seed and init {sorted(pairs & done)[0]} of another run")
        done |= pairs
        inits += [i for i in c["inits"] if i not in inits]
        seeds += [s for s in c["seeds"] if s not in seeds]
    missing = sorted({(s, i) for s in seeds for i in inits} - done)
    if missing:
        raise ValueError(f"together the runs lack seed {missing[0][0]} of init {missing[0][1]}"
                         f"{f' and {len(missing) - 1} more' if len(missing) > 1 else ''}; every "
                         f"init needs every seed")
    out = {k: v for k, v in first.items() if k not in LISTS}
    out["config"] = {k: v for k, v in dict(first["config"], inits=inits, seeds=seeds, out=None).items()
                     if k != "seed"}
    for key in LISTS:
        seen, out[key] = set(), []
        for p in parts:
            for entry in p.get(key) or []:
                text = json.dumps(entry, sort_keys=True)
                if text not in seen:
                    seen.add(text)
                    out[key].append(entry)
    out["parts"] = [{"out": p["config"]["out"], "inits": p["config"]["inits"],
                     "seeds": p["config"]["seeds"], "wall_time_s": p.get("wall_time_s"), "versions": p.get("versions")} for p in parts]
    versions = {json.dumps(p.get("versions"), sort_keys=True) for p in parts}
    if len(versions) > 1:
        out.pop("versions", None)
        out["notes"] = out.get("notes", []) + [
            "the combined runs were made by different versions: " + "; ".join(
                f"{p['config']['out']}: osrm-min {(p.get('versions') or {}).get('osrm_min', 'unknown')}, "
                f"torch {(p.get('versions') or {}).get('torch', 'unknown')}" for p in parts)]
    out["wall_time_s"] = max((p.get("wall_time_s") or 0) for p in parts)
    return finish(out)


def main(argv=None):
    """python -m study.report RUN/results.json [RUN2/results.json ...] [--out DIR]: print the summary
    and write it and the figures again, beside the run's results.json; several runs that differ
    only in --inits and --seeds are combined into one report, written with its results.json into --out, a
    folder that holds none of the runs it reads."""
    import argparse
    from study import resume
    p = argparse.ArgumentParser(description=main.__doc__.split(":", 1)[1].strip())
    p.add_argument("results", nargs="+", help="results.json of a finished run")
    p.add_argument("--out", help="where a combined report goes (results.json, summary.txt, figures)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)
    if len(args.results) > 1 and not args.out:
        print("error: combining runs needs --out DIR", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    held = out and holds_an_input(out, list(map(Path, args.results)))
    if held:
        print(f"error: --out {out} holds {held}, which this report reads and would write over; "
              f"choose another folder", file=sys.stderr)
        return 2
    path = None
    try:
        parts = []
        for path in map(Path, args.results):
            parts.append(read_results(path))
        if len(parts) > 1:
            path = None  # from here on a mistake is in what the runs hold together
        if out is None:
            results, out = parts[0], Path(args.results[0]).parent
        else:
            results = combine(parts) if len(parts) > 1 else finish(parts[0])
            out.mkdir(parents=True, exist_ok=True)
            resume.write_json_atomic(results, out / "results.json")
        text = summary(results)
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

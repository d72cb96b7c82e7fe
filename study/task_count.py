"""Does OSRM's benefit grow with the number of merged tasks? The endpoint of the two-against-four
study (results/two-vs-four/PLAN.md), fixed in code, with worked tests, before its run.

    python -m study.task_count T4/results.json T2a/results.json T2b/results.json

Three runs of the same tasks, settings and seeds: T4 merges all four tasks, T2a and T2b two
each (the tasks split in two pairs, OSRM fitted to the tasks being merged). Per seed, the
reduction in merging cost against a baseline (endpoints.cost_reduction: the baseline's cost
minus OSRM's, Task Arithmetic at each run's own selected lambda) at T = 4, and at T = 2 as the
mean of the two pairs'; the endpoint is their difference,

    Delta = reduction(T = 4) - (reduction(T2a) + reduction(T2b)) / 2,

with its 95% t-interval over seeds. Primary against plain LoRA, co-primary against
lora-orthonormal; `verdict` reads them by the rule stated before the run.
"""

import json
import sys

from study.endpoints import cost_reduction, t_interval
from study.tables import cost_split, failed_finetunes

MERGE = "ta"
BASELINES = ("lora", "lora-orthonormal")  # primary, co-primary
GROWTH = 1.0     # points of reduction per added pair of tasks that "too few tasks" would predict
UNDECIDED = 2.0  # an interval that holds 0 and reaches this far cannot tell growth from none


def reductions(results, baseline, init="osrm"):
    """{seed: the reduction in merging cost of `init` against `baseline`} under MERGE."""
    entry = next((e for e in cost_reduction(results, baseline)
                  if e["init"] == init and e["merge"] == MERGE), None)
    if entry is None:
        raise ValueError(f"the run of {','.join(results['config']['tasks'])} has no {init} and "
                         f"{baseline} under {MERGE}")
    return dict(zip(results["config"]["seeds"], entry["differences"]))


def others_part(results, baseline, init="osrm"):
    """Exploratory: {seed: the other tasks' part of the baseline's merging cost minus `init`'s}
    under MERGE (tables.cost_split: each task's own update merged alone against the merged
    model, at the selected lambda; --own-at-lambda)."""
    split = cost_split(results)
    if (baseline, MERGE) not in split or (init, MERGE) not in split:
        raise ValueError(f"the run of {','.join(results['config']['tasks'])} has no own-update "
                         f"scores of {init} and {baseline} (--own-at-lambda)")
    b, o = split[baseline, MERGE]["others"], split[init, MERGE]["others"]
    return {s: x - y for s, x, y in zip(results["config"]["seeds"], b, o)}


def energy_ratio(results, _baseline=None, statistic="second_moment"):
    """Exploratory: {seed: the input energy OSRM's starting subspace reads of its own task over
    what it reads of the other merged tasks'}, each the mean over the run's tasks, on held-out
    rows (results.json's subspace_energy; before any training)."""
    by_seed = {}
    for e in results["subspace_energy"]:
        if e["stat"] == statistic and e["rows"] == "heldout":
            by_seed.setdefault(e["seed"], []).append((e["own"], e["others"]))
    return {s: sum(o for o, _ in v) / sum(x for _, x in v) for s, v in by_seed.items()}


def learned_seeds(*runs):
    """The seeds in which every fine-tune of every run learned (tables.failed_finetunes)."""
    failed = {seed for r in runs for seed, *_ in failed_finetunes(r)}
    return [s for s in runs[0]["config"]["seeds"] if s not in failed]


def delta(t4, t2a, t2b, baseline, per_seed=reductions, seeds=None):
    """{"seeds", "t4", "t2", "differences", "mean", "low", "high"} and the T = 4 value's own
    interval ("t4_interval"): the endpoint over the seeds all three runs have (or those of
    them in `seeds`). per_seed(results, baseline) -> {seed: value}: by default the reduction in
    merging cost (the endpoint)."""
    r4, ra, rb = (per_seed(r, baseline) for r in (t4, t2a, t2b))
    seeds = [s for s in r4 if s in ra and s in rb and (seeds is None or s in seeds)]
    if len(seeds) < 2:
        raise ValueError("the three runs share fewer than two seeds: no interval")
    t2 = [(ra[s] + rb[s]) / 2 for s in seeds]
    diffs = [r4[s] - x for s, x in zip(seeds, t2)]
    return {"baseline": baseline, "seeds": seeds, "t4": [r4[s] for s in seeds], "t2": t2,
            "differences": diffs, **t_interval(diffs), "t4_interval": t_interval([r4[s] for s in seeds])}


def verdict(low, high, t4_low, t4_high):
    """The rule, stated before the run, on Delta's 95% interval [low, high] and the T = 4
    reduction's [t4_low, t4_high]; the first that applies:
    1. low > 0: "grows with the number of tasks";
    2. high < 0: "shrinks with the number of tasks" (the direction the subspaces' energy
       ratios predict: 1.93 for two tasks, 1.31 for four);
    3. high < GROWTH and the T = 4 reduction inside (-1, +1): "too few tasks rejected": no
       growth of a point, and at four tasks no benefit of a point either;
    4. low <= 0 and high >= UNDECIDED: "more seeds needed";
    5. otherwise "inconclusive"."""
    if low > 0:
        return "grows with the number of tasks"
    if high < 0:
        return "shrinks with the number of tasks"
    if high < GROWTH and -1 < t4_low and t4_high < 1:
        return "too few tasks rejected"
    if high >= UNDECIDED:
        return "more seeds needed"
    return "inconclusive"


def report(t4, t2a, t2b):
    """The endpoint's lines: per baseline, the per-seed values, Delta and its verdict."""
    lines = []
    for i, baseline in enumerate(BASELINES):
        d = delta(t4, t2a, t2b, baseline)
        v = verdict(d["low"], d["high"], d["t4_interval"]["low"], d["t4_interval"]["high"])
        lines += [f"{'PRIMARY' if i == 0 else 'CO-PRIMARY'}: Delta against {baseline} (osrm's "
                  f"reduction in {MERGE} merging cost at T = 4 minus at T = 2, pairs averaged), "
                  f"seeds {','.join(map(str, d['seeds']))}",
                  "  T = 4: " + " ".join(f"{x:+.2f}" for x in d["t4"])
                  + f"   mean {d['t4_interval']['mean']:+.2f} [{d['t4_interval']['low']:+.2f}, "
                  f"{d['t4_interval']['high']:+.2f}]",
                  "  T = 2: " + " ".join(f"{x:+.2f}" for x in d["t2"]),
                  f"  Delta {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]: {v}"]
    learned = learned_seeds(t4, t2a, t2b)
    if len(learned) < len(d["seeds"]) and len(learned) >= 2:  # each run's own lambdas, kept
        for baseline in BASELINES:
            d = delta(t4, t2a, t2b, baseline, seeds=learned)
            lines += [f"EXPLORATORY: Delta against {baseline} over the seeds in which every "
                      f"fine-tune learned ({','.join(map(str, learned))}; lambdas as above): "
                      f"{d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]; T = 4 "
                      f"{d['t4_interval']['mean']:+.2f} [{d['t4_interval']['low']:+.2f}, "
                      f"{d['t4_interval']['high']:+.2f}]"]
    for name, per_seed, baseline in (
            ("the other tasks' part of the cost, reduced by osrm against lora", others_part, "lora"),
            ("the energy osrm's starting subspace reads, own task over the others'", energy_ratio, None)):
        try:
            d = delta(t4, t2a, t2b, baseline, per_seed)
        except (ValueError, KeyError):  # not recorded by these runs
            continue
        lines += [f"EXPLORATORY: {name}, T = 4 minus T = 2 (pairs averaged)",
                  "  T = 4: " + " ".join(f"{x:+.2f}" for x in d["t4"])
                  + f"   mean {d['t4_interval']['mean']:+.2f}",
                  "  T = 2: " + " ".join(f"{x:+.2f}" for x in d["t2"])
                  + f"   mean {sum(d['t2']) / len(d['t2']):+.2f}",
                  f"  difference {d['mean']:+.2f} [{d['low']:+.2f}, {d['high']:+.2f}]"]
    return lines


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print("usage: python -m study.task_count T4/results.json T2a/results.json T2b/results.json",
              file=sys.stderr)
        return 2
    try:
        runs = [json.loads(open(p, encoding="utf-8").read()) for p in argv]
        t4, t2a, t2b = runs
        if len(t4["config"]["tasks"]) != 4 or sorted(t2a["config"]["tasks"] + t2b["config"]["tasks"]) \
                != sorted(t4["config"]["tasks"]):
            raise ValueError("T2a and T2b must split T4's four tasks in two pairs")
        print("\n".join(report(t4, t2a, t2b)))
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"error: these runs cannot be read together ({type(e).__name__}: {str(e)[:160]})",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

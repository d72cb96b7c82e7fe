"""The two-against-four endpoint (study/task_count.py) on worked numbers, and its rule, with
its boundaries, as stated before the run."""

import json

import pytest

from study import task_count


def run(costs, tasks=("a",)):
    """A results dict whose inits (lora, lora-orthonormal, osrm) score 80 alone and 80 - cost
    merged by TA at 0.5, per seed 1, 2, 3: costs {init: (cost per seed)}."""
    rows = []
    for init, per_seed in costs.items():
        for seed, cost in zip((1, 2, 3), per_seed):
            for t in tasks:
                rows += [dict(seed=seed, init=init, merge="none", task=t, score=80.0, **{"lambda": None}),
                         dict(seed=seed, init=init, merge="ta", task=t, score=80.0 - cost, **{"lambda": 0.5})]
    return {"config": dict(tasks=list(tasks), seeds=[1, 2, 3], inits=list(costs), merges=["ta"]),
            "rows": rows, "interference": []}


T4 = run({"lora": (4, 4, 4), "lora-orthonormal": (4, 4, 4), "osrm": (3, 3.5, 2)})
T2A = run({"lora": (2, 2, 2), "lora-orthonormal": (2, 2, 2), "osrm": (1.5, 1.5, 1.5)})
T2B = run({"lora": (2, 2, 2), "lora-orthonormal": (2, 2, 2), "osrm": (2.5, 1.5, 2)})


def test_delta_is_the_reduction_at_four_tasks_minus_the_mean_of_the_pairs():
    d = task_count.delta(T4, T2A, T2B, "lora")
    # reductions: T = 4 1, 0.5, 2; pairs 0.5, 0.5, 0.5 and -0.5, 0.5, 0: their mean 0, 0.5, 0.25
    assert d["t4"] == [1.0, 0.5, 2.0] and d["t2"] == [0.0, 0.5, 0.25]
    assert d["differences"] == [1.0, 0.0, 1.75]
    # mean 0.9167, sd 0.87797, half-width 4.302653 * 0.87797 / sqrt(3) = 2.18099
    assert d["mean"] == pytest.approx(11 / 12) and d["low"] == pytest.approx(11 / 12 - 2.18099, abs=1e-4)
    assert task_count.verdict(d["low"], d["high"], d["t4_interval"]["low"], d["t4_interval"]["high"]) \
        == "more seeds needed"
    lines = task_count.report(T4, T2A, T2B)
    assert lines[0].startswith("PRIMARY: Delta against lora") and "CO-PRIMARY: Delta against lora-orthonormal" in lines[4]
    assert lines[3] == "  Delta +0.92 [-1.26, +3.10]: more seeds needed"


@pytest.mark.parametrize("low, high, t4_low, t4_high, verdict", [
    (0.01, 3.0, -5, 5, "grows with the number of tasks"),
    (0.0, 3.0, -5, 5, "more seeds needed"),                # touching 0 is not growth
    (-2.0, -0.01, -5, 5, "shrinks with the number of tasks"),
    (-2.0, 0.0, -0.5, 0.5, "too few tasks rejected"),     # holds 0, below a point, T = 4 inside +-1
    (-0.5, 0.99, -0.9, 0.9, "too few tasks rejected"),
    (-0.5, 1.0, -0.9, 0.9, "inconclusive"),                # a point of growth not excluded
    (-0.5, 0.99, -1.0, 0.9, "inconclusive"),               # T = 4's interval touches -1
    (-0.5, 1.99, -5, 5, "inconclusive"),
    (-0.5, 2.0, -5, 5, "more seeds needed"),
])
def test_the_rule_stated_before_the_run(low, high, t4_low, t4_high, verdict):
    assert task_count.verdict(low, high, t4_low, t4_high) == verdict


def test_the_command_refuses_runs_that_do_not_split_four_tasks_in_pairs(tmp_path, capsys):
    paths = []
    for name, r in (("t4", run({"lora": (4, 4, 4), "lora-orthonormal": (4, 4, 4), "osrm": (3, 3, 3)},
                               ("sst2", "stsb", "qqp", "qnli"))),
                    ("a", run({"lora": (2,) * 3, "lora-orthonormal": (2,) * 3, "osrm": (1,) * 3}, ("sst2", "stsb"))),
                    ("b", run({"lora": (2,) * 3, "lora-orthonormal": (2,) * 3, "osrm": (1,) * 3}, ("sst2", "qqp")))):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(r))
    assert task_count.main(list(map(str, paths))) == 2
    assert "split T4's four tasks in two pairs" in capsys.readouterr().err


def test_the_exploratory_parts_on_worked_numbers():
    """The other tasks' part of the cost (own update merged alone, minus merged) and the energy
    ratio of OSRM's starting subspace, each T = 4 minus the mean of the pairs."""
    def with_own(results, own_scores, energies):
        """own_scores {init: (score of the own update merged alone, per seed)}; energies
        {seed: [(own, others) per task]}."""
        out = dict(results, rows=list(results["rows"]))
        for init, per_seed in own_scores.items():
            for seed, score in zip((1, 2, 3), per_seed):
                out["rows"].append(dict(seed=seed, init=init, merge="ta:own", task="a", score=score,
                                        **{"lambda": 0.5}))
        out["subspace_energy"] = [dict(seed=s, stat=stat, task=t, rows=rows, own=o, others=x)
                                  for s, pairs in energies.items() for t, (o, x) in zip("ab", pairs)
                                  for stat, rows in (("second_moment", "heldout"), ("random", "heldout"),
                                                     ("second_moment", "fit"))]
        return out
    # T = 4: lora's own update alone scores 79 (others' part 79 - 76 = 3), osrm's 79.5 (79.5 - 77,
    # 79.5 - 76.5, 79.5 - 78 = 2.5, 3, 1.5): reductions 0.5, 0, 1.5
    t4 = with_own(T4, {"lora": (79, 79, 79), "osrm": (79.5, 79.5, 79.5)},
                  {s: [(0.002, 0.001), (0.004, 0.004)] for s in (1, 2, 3)})  # 0.006 / 0.005 = 1.2
    # the pairs: lora 79 (others' part 1), osrm 79 (0.5; 0.5, 1.5, 1): reductions 0.5 | -0.5, 0.5, 0
    t2a = with_own(T2A, {"lora": (79,) * 3, "osrm": (79,) * 3}, {s: [(0.003, 0.001)] for s in (1, 2, 3)})
    t2b = with_own(T2B, {"lora": (79,) * 3, "osrm": (79,) * 3}, {s: [(0.002, 0.002)] for s in (1, 2, 3)})
    d = task_count.delta(t4, t2a, t2b, "lora", task_count.others_part)
    assert d["t4"] == [0.5, 0.0, 1.5] and d["t2"] == [0.0, 0.5, 0.25] and d["differences"] == [0.5, -0.5, 1.25]
    e = task_count.delta(t4, t2a, t2b, None, task_count.energy_ratio)
    assert e["t4"] == pytest.approx([1.2] * 3) and e["t2"] == pytest.approx([2.0] * 3)  # (3 + 1) / 2
    lines = task_count.report(t4, t2a, t2b)
    # mean 5/12, sd 0.87797: half-width 2.18099
    assert lines[8].startswith("EXPLORATORY: the other tasks' part") and lines[11] == "  difference +0.42 [-1.76, +2.60]"
    assert lines[12].startswith("EXPLORATORY: the energy") and lines[15].startswith("  difference -0.80 [")
    # runs without own-update scores or energies: the endpoint alone
    assert len(task_count.report(T4, T2A, T2B)) == 8


def test_seeds_with_a_fine_tune_that_did_not_learn_are_named_and_left_out_of_a_second_reading():
    import copy
    t4 = copy.deepcopy(T4)
    t4["baselines"] = {"a": 48.0}
    for r in t4["rows"]:  # seed 2's osrm alone: 50, not 5 points above the constant's 48
        if (r["seed"], r["init"], r["merge"]) == (2, "osrm", "none"):
            r["score"] = 50.0
    assert task_count.learned_seeds(t4, T2A, T2B) == [1, 3]
    d = task_count.delta(t4, T2A, T2B, "lora", seeds=[1, 3])
    # reductions at T = 4: 1, 2; pairs' mean 0, 0.25; Delta 1, 1.75: mean 1.375, sd 0.53033,
    # half-width 12.7062 * 0.53033 / sqrt(2) = 4.7648
    assert d["differences"] == [1.0, 1.75] and d["low"] == pytest.approx(1.375 - 4.7648, abs=1e-4)
    lines = task_count.report(t4, T2A, T2B)
    assert lines[8] == ("EXPLORATORY: Delta against lora over the seeds in which every fine-tune "
                        "learned (1,3; lambdas as above): +1.38 [-3.39, +6.14]; T = 4 +1.50 [-4.85, +7.85]")

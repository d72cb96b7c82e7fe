"""The report from results.json: worked values, and a normalised score that is undefined."""

import pytest

from study import endpoints
from study import report
from study import tables


def results_with(cola_alone_by_seed):
    """Two tasks, two seeds, plain LoRA alone and under TA at one lambda."""
    rows = []
    for seed, cola_alone in zip((1, 2), cola_alone_by_seed):
        for merge, lam, cola, sst2 in (("none", None, cola_alone, 80.0), ("ta", 0.5, 5.0, 70.0)):
            rows += [dict(seed=seed, init="lora", merge=merge, lam=lam, task="cola", score=cola),
                     dict(seed=seed, init="lora", merge=merge, lam=lam, task="sst2", score=sst2)]
    for r in rows:
        r["lambda"] = r.pop("lam")
    config = dict(tasks=["cola", "sst2"], seeds=[1, 2], inits=["lora"], merges=["ta"])
    return {"config": config, "rows": rows, "interference": []}


def test_table_gives_mean_and_sample_std_over_seeds():
    lines = report.format_table(results_with([10.0, 20.0])).splitlines()
    ta = lines[2].split()
    assert ta[:3] == ["lora", "ta", "0.5"]
    assert ta[3:5] == ["5.00±0.00", "70.00±0.00"]
    # normalised: seed 1 (5/10 + 70/80) / 2 = 68.75; seed 2 (5/20 + 70/80) / 2 = 56.25
    assert ta[-2] == "62.50±8.84"
    # the merging cost, average alone - merged: seed 1 45 - 37.5 = 7.5; seed 2 50 - 37.5 = 12.5
    assert ta[-1] == "10.00±3.54"
    assert lines[1].split()[3] == "15.00±7.07"  # CoLA alone: 10 and 20
    assert lines[1].split()[-1] == "-"  # alone, nothing is lost to merging


def test_normalised_is_na_when_an_individual_score_is_not_positive():
    # CoLA's Matthews correlation can be exactly 0 for an adapter that predicts one class
    lines = report.format_table(results_with([10.0, 0.0])).splitlines()
    assert lines[2].split()[-2] == "n/a"
    assert lines[2].split()[-3] == "37.50±0.00"  # the plain average is still defined


def test_t_quantile_matches_the_tables():
    # Student's t, two-sided 95%: 12.7062 (1 df), 4.3027 (2 df), 2.2622 (9 df); large df: 1.96
    for df, value in ((1, 12.706205), (2, 4.302653), (9, 2.262157), (1000, 1.962339)):
        assert abs(endpoints.t_quantile(0.975, df) - value) < 2e-6


def test_paired_differences_and_their_interval_on_a_worked_case():
    rows = []
    # three seeds; task averages of lora alone 80, 82, 84 and of osrm alone 79, 82, 82
    for seed, (lora, osrm) in zip((1, 2, 3), ((80.0, 79.0), (82.0, 82.0), (84.0, 82.0))):
        for init, score in (("lora", lora), ("osrm", osrm)):
            rows += [dict(seed=seed, init=init, merge="none", task=t, score=score, **{"lambda": None})
                     for t in ("a", "b")]
    config = dict(tasks=["a", "b"], seeds=[1, 2, 3], inits=["lora", "osrm"], merges=[])
    [entry] = endpoints.paired({"config": config, "rows": rows, "interference": []})
    assert entry["differences"] == [-1.0, 0.0, -2.0]
    # mean -1, sample sd 1, half-width 4.302653 / sqrt(3) = 2.484138
    assert entry["mean"] == -1.0
    assert abs(entry["low"] - (-1 - 2.484138)) < 1e-5 and abs(entry["high"] - (-1 + 2.484138)) < 1e-5
    one_seed = {"config": dict(config, seeds=[1]), "rows": [r for r in rows if r["seed"] == 1],
                "interference": []}
    [entry] = endpoints.paired(one_seed)
    assert entry["low"] is None and "no interval (one seed)" in report.format_paired(one_seed)


def test_failed_finetunes_are_named_and_marked_in_the_table():
    # STS-B: seeds 1 and 2 learn (80, 82), seed 3 collapses (21.6: above a constant's 0, but not
    # half-way to the best); SST-2's seed 3 is within 5 points of its majority class (50)
    rows = []
    for seed, stsb, sst2 in ((1, 80.0, 81.0), (2, 82.0, 80.0), (3, 21.6, 53.0)):
        rows += [dict(seed=seed, init="lora", merge="none", task="stsb", score=stsb, **{"lambda": None}),
                 dict(seed=seed, init="lora", merge="none", task="sst2", score=sst2, **{"lambda": None})]
    results = {"config": dict(tasks=["sst2", "stsb"], seeds=[1, 2, 3], inits=["lora"], merges=[]),
               "rows": rows, "interference": [], "baselines": {"sst2": 50.0, "stsb": 0.0}}
    failed = tables.failed_finetunes(results)
    assert [(seed, task) for seed, _, task, _ in failed] == [(3, "stsb"), (3, "sst2")]
    assert "half-way" in failed[0][3] and "not 5 points above" in failed[1][3]
    lines = report.format_table(results).splitlines()
    assert lines[1].split() == ["constant", "-", "-", "50.00", "0.00", "25.00", "-", "-"]
    assert lines[2].split()[3:6] == ["71.33±15.89*", "61.20±34.31*", "66.27±25.09*"]
    assert "lora/stsb (seed 3): 21.60" in report.summary(results)


def test_long_init_names_keep_their_own_column():
    results = results_with([10.0, 20.0])
    for r in results["rows"]:
        r["init"] = "osrm-mean-random"
    results["config"]["inits"] = ["osrm-mean-random"]
    for text in (report.format_table(results), report.format_curves(results)):
        for line in text.splitlines()[1:]:
            assert line.split()[0] == "osrm-mean-random", line  # once 'osrm-mean-randomindiv'


def three_seed_merges(lams=(0.2, 0.5, 1.0)):
    """Two inits, three seeds, one task; alone and under TA at lambdas 0.2, 0.5 and 1.0 (the
    best, 0.5, inside the grid), with averages chosen so that every difference is worked out by
    hand below."""
    scores = {  # (init, merge, lambda): score per seed 1, 2, 3
        ("lora", "none", None): (80.0, 81.0, 82.0), ("osrm", "none", None): (76.0, 77.5, 78.0),
        ("lora", "ta", 0.2): (65.0, 66.0, 64.0), ("osrm", "ta", 0.2): (72.0, 73.0, 74.0),
        ("lora", "ta", 0.5): (70.0, 71.0, 72.0), ("lora", "ta", 1.0): (60.0, 63.0, 62.0),
        ("osrm", "ta", 0.5): (73.0, 74.0, 76.0), ("osrm", "ta", 1.0): (71.0, 72.0, 73.0)}
    rows = [dict(seed=seed, init=init, merge=merge, task="a", score=score, **{"lambda": lam})
            for (init, merge, lam), per_seed in scores.items() if lam is None or lam in lams
            for seed, score in zip((1, 2, 3), per_seed)]
    config = dict(tasks=["a"], seeds=[1, 2, 3], inits=["lora", "osrm"], merges=["ta"])
    return {"config": config, "rows": rows, "interference": []}


def test_lambda_spread_is_best_minus_worst_per_seed_and_is_paired_against_lora():
    results = three_seed_merges()
    spread = endpoints.lambda_spread(results)
    assert spread == {("lora", "ta"): [10.0, 8.0, 10.0], ("osrm", "ta"): [2.0, 2.0, 3.0]}
    [entry] = endpoints.paired_spread(results)
    assert entry["differences"] == [-8.0, -6.0, -7.0]
    # mean -7, sd 1, half-width 4.302653 / sqrt(3) = 2.484138
    assert abs(entry["low"] - (-7 - 2.484138)) < 1e-5 and abs(entry["high"] - (-7 + 2.484138)) < 1e-5


def test_the_primary_endpoint_is_the_paired_reduction_in_merging_cost():
    [entry] = endpoints.cost_reduction(three_seed_merges())
    # plain LoRA loses 80-70, 81-71, 82-72 = 10 each by merging (TA at 0.5); OSRM 76-73 = 3,
    # 77.5-74 = 3.5 and 78-76 = 2: a reduction of 7, 6.5 and 8 points
    assert entry["baseline_cost"] == [10.0, 10.0, 10.0] and entry["cost"] == [3.0, 3.5, 2.0]
    assert entry["differences"] == [7.0, 6.5, 8.0]
    # mean 43/6 = 7.1667, sd 0.763763, half-width 4.302653 * 0.763763 / sqrt(3) = 1.897296
    assert abs(entry["mean"] - 43 / 6) < 1e-12
    assert abs(entry["low"] - (43 / 6 - 1.897296)) < 1e-5
    assert abs(entry["share"] - 43 / 60) < 1e-12  # 72% of plain LoRA's merging cost recovered
    table = report.format_cost_reduction(three_seed_merges()).splitlines()
    assert table[1].split() == ["osrm", "ta", "10.00", "2.83", "+7.17", "[+5.27,", "+9.06]", "72%"]


def test_osrm_is_also_paired_against_its_scale_matched_control():
    results = three_seed_merges()  # the plain LoRA of that case, renamed to the control
    for r in results["rows"]:
        r["init"] = "lora-orthonormal" if r["init"] == "lora" else r["init"]
    results["config"]["inits"] = ["lora-orthonormal", "osrm"]
    diffs, [reduction] = endpoints.against_control(results)
    # averages alone 76-80, 77.5-81, 78-82; merged (TA at 0.5 for both) 73-70, 74-71, 76-72
    assert [(e["merge"], e["differences"]) for e in diffs] == [
        ("none", [-4.0, -3.5, -4.0]), ("ta", [3.0, 3.0, 4.0])]
    assert reduction["baseline"] == "lora-orthonormal" and reduction["differences"] == [7.0, 6.5, 8.0]
    assert endpoints.cost_reduction(results) == []  # no plain LoRA: no primary endpoint
    text = report.summary(results)
    assert "scale-matched control" in text and "ctrl cost" in text
    assert [line.split() for line in text.splitlines() if line.startswith("osrm") and "%" in line
            ] == [["osrm", "ta", "10.00", "2.83", "+7.17", "[+5.27,", "+9.06]", "72%"]]


def test_claims_read_each_interval_against_its_rule():
    claims = {c["claim"][0]: c for c in endpoints.claims(three_seed_merges())}
    # 1: merged (TA at the best lambda 0.5): osrm - lora = +3, +3, +4: interval above 0
    assert claims["1"]["mean"] == 10 / 3 and claims["1"]["verdict"] == "held"
    # 2: alone: -4, -3.5, -4; 90% interval -3.833 +- 2.919986 * 0.288675 / sqrt(3) =
    # [-4.32, -3.35], below -1 point
    assert abs(claims["2"]["high"] - (-23 / 6 + 0.486664)) < 1e-5 and claims["2"]["level"] == 0.90
    assert claims["2"]["verdict"] == "not held"
    # 3: 0.5 is inside the grid for both; the spread's difference -8, -6, -7: below 0
    assert claims["3"]["verdict"] == "held"
    text = report.summary(three_seed_merges())
    assert "3 flatter in lambda" in text and "not held" in text and "PRIMARY ENDPOINT" in text


def test_claim_three_is_not_testable_where_the_best_lambda_is_at_the_grids_edge():
    results = three_seed_merges(lams=(0.5, 1.0))  # 0.5, the best, is now the smallest
    assert endpoints.interior_best(results, "lora", "ta") == (False, 0.5)
    [claim3] = [c for c in endpoints.claims(results) if c["claim"].startswith("3")]
    assert claim3["verdict"].startswith("not testable here")
    assert endpoints.interior_best(three_seed_merges(), "lora", "ta") == (True, 0.5)


@pytest.mark.parametrize("low, high, verdict", [
    (0.1, 2.0, "held"),                    # a gain the interval sees, a point or more possible
    (0.02, 0.70, "a gain under a point"),  # inside (0, +1): above plain LoRA, not by a point
    (0.36, 1.0, "held"),                   # reaching +1 exactly: a point is not excluded
    (0.0, 0.8, "not held"),                # touching 0: no gain shown
    (-0.5, 0.8, "not held"),               # holds 0, below the margin: no gain of note
    (-3.0, -1.0, "not held"),              # below 0
    (-0.5, 1.5, "inconclusive"),           # holds 0 and gains above the margin
    (0.0, 1.0, "inconclusive"),            # both boundaries: no gain shown, a point possible
])
def test_claim_one_rule(low, high, verdict):
    assert endpoints.claim_merged(low, high) == verdict


@pytest.mark.parametrize("low90, high90, verdict", [
    (-0.8, 0.9, "held"),                     # both one-sided tests at +-1 reject
    (-0.5, 1.6, "no worse than a point"),    # only the lower one does
    (-2.5, -1.2, "not held"),                # worse by more than a point
    (-1.5, 0.5, "inconclusive"),
    (1.2, 2.0, "better by over a point"),
])
def test_claim_two_is_an_equivalence_test(low90, high90, verdict):
    assert endpoints.claim_alone(low90, high90) == verdict


@pytest.mark.parametrize("low, high, verdict", [
    (-3.0, -0.1, "held"), (0.2, 1.0, "not held"), (-1.0, 1.0, "inconclusive")])
def test_claim_three_rule(low, high, verdict):
    assert endpoints.claim_flatter(low, high) == verdict


def test_one_seed_prints_one_line_for_the_claims_and_no_run_together_columns():
    one = three_seed_merges()
    one["config"]["seeds"] = [1]
    one["rows"] = [r for r in one["rows"] if r["seed"] == 1]
    assert endpoints.claims(one) == []
    text = report.summary(one)
    assert "they need 3 or more --seeds (this run has 1)" in text
    assert "(one seed)no" not in text and ")no interval" not in text
    assert "no interval (one seed)" in text  # the primary endpoint, still printed
    for line in report.format_cost_reduction(one).splitlines()[1:]:
        assert line.split()[5:9] == ["no", "interval", "(one", "seed)"]


def test_standard_errors_of_a_score_on_held_out_rows():
    # accuracy 0.8 on 400 rows: sqrt(0.8 * 0.2 / 400) = 0.02; Pearson/Spearman 0.8 on 401:
    # (1 - 0.64) / sqrt(400) = 0.018
    assert abs(endpoints.score_error({"accuracy": 0.8}, 400) - 2.0) < 1e-12
    assert abs(endpoints.score_error({"accuracy": 0.8, "f1": 0.9}, 400) - 2.0) < 1e-12
    assert abs(endpoints.score_error({"pearson": 0.79, "spearman": 0.81}, 401) - 1.8) < 1e-12


def tied_merges(lora_07, lora_10):
    """Three seeds, one task; plain LoRA's TA averages at lambda 0.7 and 1.0 per seed as given,
    OSRM's clearly best at 0.7."""
    scores = {("lora", "none", None): (80.0, 81.0, 82.0), ("osrm", "none", None): (80.0, 81.0, 82.0),
              ("lora", "ta", 0.7): lora_07, ("lora", "ta", 1.0): lora_10,
              ("osrm", "ta", 0.7): (75.0, 76.5, 77.0), ("osrm", "ta", 1.0): (70.0, 71.0, 72.0)}
    rows = [dict(seed=seed, init=init, merge=merge, task="a", score=score, **{"lambda": lam})
            for (init, merge, lam), per_seed in scores.items() for seed, score in zip((1, 2, 3), per_seed)]
    return {"config": dict(tasks=["a"], seeds=[1, 2, 3], inits=["lora", "osrm"], merges=["ta"]),
            "rows": rows, "interference": []}


def test_a_near_tie_in_lambda_is_picked_by_the_fixed_rule_and_reported_both_ways():
    # per-seed differences 1.0 - 0.7: +1.0, -1.0, +0.06 -> mean +0.02, sd 1.0, SE 0.577: a tie
    results = tied_merges((74.0, 76.0, 74.94), (75.0, 75.0, 75.0))
    assert tables.lambda_ties(results) == {("lora", "ta"): [0.7, 1.0]}
    assert tables.best_lambdas(results)[("lora", "ta")] == 0.7  # the smaller, though 1.0's mean is higher
    text = report.summary(results)
    assert "lora/ta: lambdas 0.7, 1 tied on the dev rows; picked 0.7" in text
    # the other side: lora's merged average 75 instead of 74.98, every difference shrinks
    # reductions 1, 0.5, 2.06 with 0.7; 0, 1.5, 2 with 1.0
    assert "with 1 instead: primary endpoint osrm/ta: +1.19 [-0.79, +3.17] -> +1.17 [-1.42, +3.75]" in text
    assert "claim 3" not in report.format_ties(results)  # not testable either way
    other = dict(results, lambda_choice={"lora/ta": 1.0})
    assert tables.best_lambdas(other)[("lora", "ta")] == 1.0


@pytest.mark.parametrize("gap, tied", [(0.0577, True), (0.0578, False), (0.0, True)])
def test_the_tie_boundary_is_a_tenth_of_the_paired_standard_error(gap, tied):
    # differences gap+1, gap-1, gap: sd 1, SE 1/sqrt(3) = 0.57735; a tenth of it: 0.057735
    results = tied_merges((75.0, 75.0, 75.0), (75.0 + gap + 1, 75.0 + gap - 1, 75.0 + gap))
    assert (("lora", "ta") in tables.lambda_ties(results)) is tied
    assert tables.best_lambdas(results)[("lora", "ta")] == (0.7 if tied else 1.0)


def test_one_seed_ties_only_on_equal_averages():
    results = tied_merges((75.0, 75.0, 75.0), (75.0, 75.0, 75.0))
    results["config"]["seeds"] = [1]
    results["rows"] = [r for r in results["rows"] if r["seed"] == 1]
    assert tables.best_lambdas(results)[("lora", "ta")] == 0.7  # equal: the smaller
    results["rows"] = [dict(r, score=75.001) if (r["merge"], r["lambda"], r["init"]) == ("ta", 1.0, "lora")
                       else r for r in results["rows"]]
    assert tables.best_lambdas(results)[("lora", "ta")] == 1.0


def test_the_merging_cost_splits_into_the_own_update_part_and_the_other_tasks_part():
    results = three_seed_merges(lams=(0.5,))
    # each task's own update alone, merged at 0.5: lora 77, 78, 79 (own part 3 each seed, so
    # the other tasks' part is 7); osrm 75, 76, 77 (own part 1, 1.5, 1; others 2, 2, 1)
    for init, own in (("lora", (77.0, 78.0, 79.0)), ("osrm", (75.0, 76.0, 77.0))):
        results["rows"] += [dict(seed=s, init=init, merge="ta:own", task="a", score=o, **{"lambda": 0.5})
                            for s, o in zip((1, 2, 3), own)]
    split = tables.cost_split(results)
    assert split[("lora", "ta")] == {"own": [3.0, 3.0, 3.0], "others": [7.0, 7.0, 7.0]}
    assert split[("osrm", "ta")] == {"own": [1.0, 1.5, 1.0], "others": [2.0, 2.0, 1.0]}
    costs = tables.merging_cost(results)
    for key, parts in split.items():  # the parts add up to the cost, seed by seed
        assert [o + t for o, t in zip(parts["own"], parts["others"])] == costs[key]
    text = report.summary(results)
    # the other tasks' part shrinks by 5, 5, 6: mean 5.33, sd 0.577, half-width 1.434
    assert "+5.33 [+3.90, +6.77]" in text
    assert ("osrm", "ta:own") not in tables.lambda_curves(results)  # never a merge of its own
    assert [c for c in endpoints.claims(results) if "own" in c["merge"]] == []


def test_runs_combine_by_their_resolved_settings_from_before_and_after_located():
    """results.json from before "located" held the model, GLUE folder, device and the heads'
    pooling in "config"; later ones keep "config" as given and those in "located". Parts of
    both kinds combine when they resolved alike, and are refused when they did not."""
    def part(init, config, located=None):
        rows = [dict(seed=1, init=init, merge="none", task=t, split="dev", score=80.0,
                     metrics={"accuracy": 0.8}, **{"lambda": None}) for t in ("sst2", "qnli")]
        common = dict(tasks=["sst2", "qnli"], seeds=[1], inits=[init], merges=[], out=init)
        return {"config": dict(common, **config), "rows": rows, "inputs": {"model": "m"},
                **({"located": located} if located else {})}
    found = {"model": "/m", "data_dir": "/g", "device": "cpu", "pooling": "mean"}
    old = part("lora", dict(found, seed=1))
    new = part("osrm", {"model": "", "data_dir": "", "device": "auto", "pooling": "auto"}, found)
    both = report.combine([old, new])
    assert both["config"]["inits"] == ["lora", "osrm"] and "seed" not in both["config"]
    on_gpu = part("lora", {"model": "", "data_dir": "", "device": "auto", "pooling": "auto"},
                  dict(found, device="cuda"))  # given alike, resolved apart
    with pytest.raises(ValueError, match="differ in device;"):
        report.combine([new, on_gpu])

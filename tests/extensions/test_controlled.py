"""The controlled experiment (controlled.py) shows OSRM's mechanism in both directions."""

from extensions import controlled


def test_osrm_removes_interference_when_the_tasks_are_separable_and_not_when_they_share():
    separable, shared = controlled.run_one(0.0, seed=42), controlled.run_one(1.0, seed=42)
    # private subspaces: OSRM's A_t starts on its own task's signal and nobody else's
    assert separable["osrm"]["others"] < 0.01 * separable["lora"]["others"]
    assert separable["osrm"]["interference"] < 0.8 * separable["lora"]["interference"]
    assert separable["osrm-frozen"]["interference"] < 0.4 * separable["lora"]["interference"]
    assert separable["osrm-frozen"]["individual"] > separable["lora"]["individual"] - 3
    # one shared subspace: no gain; frozen where nobody's signal is, OSRM's A learns little
    assert shared["osrm"]["interference"] > 0.95 * shared["lora"]["interference"]
    assert shared["osrm-frozen"]["interference"] > 0.95 * shared["lora"]["interference"]
    assert shared["osrm-frozen"]["individual"] < shared["lora"]["individual"] - 10
    # and plain LoRA interferes more when the tasks share their inputs
    assert shared["lora"]["interference"] > 2 * separable["lora"]["interference"]


def test_the_table_has_a_row_per_overlap_and_init():
    results = {"overlaps": [0.5], "rows": [
        {"overlap": 0.5, "seed": 1, "init": init, "individual": 90.0, "merged": 80.0,
         "interference": 0.5, "own": 0.02, "others": 0.01} for init in controlled.INITS]}
    lines = controlled.table(results).splitlines()
    assert len(lines) == 1 + len(controlled.INITS)
    assert lines[1].split() == ["0.5", "lora", "90.00", "80.00", "10.00", "0.50", "2.00", "1.00"]

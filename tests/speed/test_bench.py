"""bench.py end to end on a tiny checkpoint and tiny data, and its FLOP count on a worked case.
Nothing here asserts a timing: the numbers must only be consistent with each other."""

import json
import re
from types import SimpleNamespace

import torch

from conftest import write_tiny_glue
from speed import bench


def test_step_flops_on_a_worked_case():
    # B = 2 sequences padded to T = 3, 4 real tokens; H = 2, I = 4, one layer, rank 8:
    # per token 2 (4 H^2 + 2 H I) + 8 H r = 2 (16 + 16) + 128 = 192; attention 4 B T^2 H = 144
    batch = {"input_ids": torch.zeros(2, 3), "attention_mask": torch.tensor([[1, 1, 1], [1, 0, 0]])}
    c = SimpleNamespace(hidden_size=2, intermediate_size=4, num_hidden_layers=1)
    assert bench.step_flops(batch, c, train=False) == {"padded": 192 * 6 + 144, "real": 192 * 4 + 144}
    # training: the linear layers twice (forward, backward to the inputs), attention three times
    assert bench.step_flops(batch, c, train=True) == {"padded": 2 * 192 * 6 + 3 * 144,
                                                      "real": 2 * 192 * 4 + 3 * 144}


def test_bench_reports_consistent_measurements(tmp_path, tiny_model, capsys):
    glue = write_tiny_glue(tmp_path / "glue")
    args = ["--model", str(tiny_model), "--data-dir", str(glue), "--warmup", "0", "--steps", "1",
            "--repeats", "1", "--epoch-rows", "16", "--no-compare", "--json"]
    assert bench.main(args) == 0
    r = json.loads(capsys.readouterr().out)
    # the run's own batches first (SST-2 and MRPC, training and evaluation), then the ungrouped
    assert list(r["workloads"]) == [
        "sst2 train, the run's batches (16, grouped)", "sst2 dev, the run's evaluation",
        "mrpc train, the run's batches (16, grouped)", "mrpc dev, the run's evaluation",
        "sst2 train, random batches (32, ungrouped)", "sst2 dev, in file order (128)"]
    assert all(0 <= p < 1 for p in r["padding"].values())
    for label, part in r["workloads"].items():
        assert set(part) == {"ours", "ours_padded"}  # no transformers side with --no-compare
        for side in part.values():  # seconds are rounded to 1 ms, examples/s to 0.1
            n = side["examples_per_s"] * side["seconds"]  # the examples of the timed batches
            assert n == 0 or abs(n - round(n)) <= 0.06 * side["seconds"] + 0.001 * side["examples_per_s"] + 0.05
    # the default fine-tune it is compared with: 2 epochs of tiny SST-2's 24 rows at batch 16
    assert r["osrm"]["steps"] == 2 * 2 and r["osrm"]["fraction"] > 0
    assert set(r["ceiling"]) == {f"{side}, {label}" for label in r["workloads"] if " train" in label
                                 for side in ("ours", "ours_padded")}
    e = r["epoch"]
    assert e["grouped"]["padded_tokens"] <= e["random"]["padded_tokens"]
    assert e["random"]["full_epoch_real_tokens"] <= e["random"]["full_epoch_padded_tokens"]
    assert r["transformers_peft"].startswith("skipped")
    # the table shows the measured numbers, not others
    table = bench.report(r)
    row = next(line for line in table.splitlines() if line.startswith("mrpc dev"))
    assert [float(x) for x in re.findall(r"\d+\.\d", row)] == [
        r["workloads"]["mrpc dev, the run's evaluation"][k]["examples_per_s"] for k in ("ours", "ours_padded")]

"""gpu_check.py's dry run: every step of the prepared GPU check, on the CPU with a tiny
checkpoint, so that the script cannot rot between visits to a GPU."""

import json

from tools import gpu_check


def test_the_dry_run_passes_every_step_and_writes_its_report(tmp_path, capsys):
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "results.json").read_text())
    assert r["dry_run"] and r["environment"]["device"] == "cpu"
    assert r["tests"]["passed"] and "passed" in r["tests"]["summary"]
    n = r["numerics"]
    assert n["passed"] and n["hidden_max_abs_err_vs_cpu"] == 0.0  # the same device: bitwise
    assert n["loss_rel_diff"] < 2e-2 and n["grad_cosine"] > 0.99  # CPU autocast stands in for bf16
    s = r["speed"]
    assert all(s[k] > 0 for k in ("train_examples_per_s", "eval_examples_per_s",
                                   "roberta_large_train_examples_per_s", "matmul_tflops"))
    assert 0 < s["fraction_of_matmul_peak"] < 1
    assert r["default_command"]["passed"] and "lora/ta" in r["default_command"]["table"]
    assert set(r["projection_hours"]) == {"sst2", "mrpc"}
    assert (tmp_path / "summary.txt").read_text() == capsys.readouterr().out.split("default_command ...\n")[1]


def test_without_a_gpu_it_says_so_in_one_line(capsys, monkeypatch):
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no CUDA GPU" in err

"""gpu_check.py's dry run: every step of the prepared GPU check, on the CPU with a tiny
checkpoint, so that the script cannot rot between visits to a GPU; and what makes it fit a bare
GPU machine: no pip, no virtual environment, inputs named on the command line."""

import contextlib
import inspect
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import data
import train
from tools import gpu_bundle, gpu_check

SCRIPT = Path(gpu_check.__file__).with_suffix(".sh")


def called_from(name):
    """Whether gpu_check's function `name` is on the caller's stack."""
    return any(f.function == name and f.filename == gpu_check.__file__ for f in inspect.stack(0))


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """One dry run for the tests below, with spies on the run's own functions: which batches
    data.make_batches made, and what train.finetune and train.evaluate were given during the
    speed step. Returns (exit code, results, printed output, what the spies saw)."""
    out = tmp_path_factory.mktemp("check") / "out"
    made, seen = [], {"finetune": [], "evaluate": 0}
    make, finetune, evaluate = data.make_batches, train.finetune, train.evaluate

    def make_spy(*args, **kwargs):
        batches = make(*args, **kwargs)
        made.append((batches, kwargs))  # kept alive, so that no id is reused
        return batches

    def finetune_spy(encoder, head, batches_for_epoch, *args, **kwargs):
        if not called_from("speed"):
            return finetune(encoder, head, batches_for_epoch, *args, **kwargs)
        record = {"hidden": encoder.config.hidden_size, "batches": 0, "from_make_batches": True}
        seen["finetune"].append(record)

        def epoch(e):
            batches = batches_for_epoch(e)
            origin = [kw for bs, kw in made if any(b is batches[0] for b in bs)]
            record["batches"] += len(batches)
            record["from_make_batches"] &= bool(origin) and all(
                any(b is x for bs, _ in made for x in bs) for b in batches)
            record["grouped"] = bool(origin) and origin[-1].get("group_by_length", False)
            return batches
        return finetune(encoder, head, epoch, *args, **kwargs)

    def evaluate_spy(*args, **kwargs):
        seen["evaluate"] += called_from("speed")
        return evaluate(*args, **kwargs)

    printed = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(printed):
        mp.setattr(data, "make_batches", make_spy)
        mp.setattr(train, "finetune", finetune_spy)
        mp.setattr(train, "evaluate", evaluate_spy)
        rc = gpu_check.main(["--dry-run", "--out", str(out)])
    return rc, json.loads((out / "results.json").read_text()), printed.getvalue(), seen, out


def test_the_dry_run_passes_every_step_and_writes_its_report(dry_run):
    rc, r, printed, _, out = dry_run
    assert rc == 0
    assert r["dry_run"] and r["environment"]["device"] == "cpu"
    assert printed.startswith("torch ")  # which torch and which card, first
    assert r["steps"] == list(gpu_check.STEPS)
    assert r["device_tests"]["passed"] and "passed" in r["device_tests"]["summary"]
    p = r["parity"]
    assert p["passed"] and p["hidden_max_abs_err"] == 0.0  # the same device: bitwise
    assert p["run_packs_this_batch"] and p["hidden_run_max_abs_err"] < 1e-5  # the packed view
    assert p["run_loss_rel_err_vs_cpu"] < 1e-6 and p["run_grad_cosine_vs_cpu"] > 0.9999
    assert p["stats_S_rel_err"] == 0.0 and p["subspace_max_sine"] < 1e-6
    s = r["speed"]
    for key in ("default/sst2", "default/mrpc", "roberta_large/sst2", "roberta_large/mrpc"):
        assert s[key]["train_examples_per_s"] > 0 and s[key]["eval_examples_per_s"] > 0
        assert 0 < s[key]["fraction_of_matmul"] < 1
    j = r["projection"]
    assert set(j["per_task"]) == set(data.TASKS)
    assert j["per_task"]["qqp"]["train_rows_complete"] == 105_000  # GLUE's size, capped
    assert j["per_task"]["sst2"]["train_rows"] == 24  # the tiny file's own rows
    assert 0 < j["readme_full_hours"]["complete_glue"] < j["paper_grid_hours"]["complete_glue"]
    assert "skipped" in r["default_command"]
    report = printed.split("default_command: skipped in ")[1].split("\n", 1)[1]
    assert (out / "summary.txt").read_text() == report


def test_the_first_step_is_the_command_end_to_end_with_every_init_and_merge(dry_run):
    _, r, printed, _, out = dry_run
    assert gpu_check.STEPS[0] == r["steps"][0] == "end_to_end"
    assert printed.index("end_to_end ...") < printed.index("device_tests ...")
    e = r["end_to_end"]
    assert e["passed"] and e["covered"] == "9 inits x 8 merges"
    run = json.loads((out / "end_to_end" / "results.json").read_text())["config"]
    import merge
    import osrm_min
    assert run["inits"] == list(osrm_min.INITS) and run["merges"] == list(merge.METHODS)
    assert run["device"] == "cpu" and "--data-dir" in e["command"] and "--model" in e["command"]


def test_the_speed_step_trains_and_scores_through_the_runs_own_functions(dry_run):
    _, _, _, seen, _ = dry_run
    trained = seen["finetune"]
    # build_adapter's warm-up and timed fine-tunes, for each task, on both models
    assert {t["hidden"] for t in trained} == {32, 64} and len(trained) == 8
    assert all(t["batches"] > 0 and t["from_make_batches"] and t["grouped"] for t in trained)
    assert seen["evaluate"] == 8  # a warm-up and a timed scoring per task and model


def test_missing_inputs_without_dry_run_are_a_one_line_error(tmp_path, capsys):
    assert gpu_check.main(["--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--data-dir" in err and "--model-dir" in err
    (tmp_path / "glue").mkdir()
    assert gpu_check.main(["--data-dir", str(tmp_path / "glue"), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pass --model-dir" in err
    assert gpu_check.main(["--data-dir", str(tmp_path / "glue"), "--model-dir", str(tmp_path),
                           "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lacks SST-2/train.tsv" in err


def test_without_a_gpu_it_says_so_in_one_line(tmp_path, tiny_model, capsys, monkeypatch):
    from tools import tiny
    tiny.write_glue(tmp_path / "glue")
    monkeypatch.setattr(gpu_check.torch.cuda, "is_available", lambda: False)
    args = ["--data-dir", str(tmp_path / "glue"), "--model-dir", str(tiny_model),
            "--out", str(tmp_path / "o")]
    assert gpu_check.main(args) == 1
    out, err = capsys.readouterr()
    assert out.startswith("torch ") and "GPU: none" in out
    assert err.count("\n") == 1 and "no CUDA GPU" in err


def test_the_shell_script_runs_the_python_it_is_given_and_never_pip_or_a_venv(tmp_path):
    code = [line for line in SCRIPT.read_text().splitlines() if not line.lstrip().startswith("#")]
    assert not any(re.search(r"\b(pip3?|venv|virtualenv|activate|ensurepip)\b", line) for line in code)
    assert 'PYTHON=${PYTHON:-python3}' in code and 'exec "$PYTHON" -m tools.gpu_check "$@"' in code
    # run it on a PATH whose pip, pip3 and virtualenv only leave a mark, with a PYTHON that
    # logs its arguments: without --data-dir it stops at once, having installed nothing
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    for tool in ("pip", "pip3", "virtualenv"):
        (bin_ / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/used-{tool}\nexit 1\n")
    (bin_ / "python3").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/python-args\n'
                                  f'exec {sys.executable} "$@"\n')
    for f in bin_.iterdir():
        f.chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_}:{os.environ['PATH']}")
    env.pop("PYTHON", None)
    done = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path / "out")], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "--data-dir" in done.stderr
    assert not list(tmp_path.glob("used-*"))
    args = (tmp_path / "python-args").read_text()
    assert args.startswith("-m tools.gpu_check") and "pip" not in args and "venv" not in args


def test_pack_copies_what_the_check_reads(tmp_path, tiny_model):
    from tools import tiny
    tiny.write_glue(tmp_path / "glue")
    folder, size = gpu_bundle.pack(tmp_path / "bundle", tmp_path / "glue", tiny_model, half=True)
    gpu_bundle.check_inputs(folder / "glue", folder / "model")  # a usable --data-dir, --model-dir
    from pretrained import checkpoint
    a, _ = checkpoint.load_checkpoint(tiny_model)
    b, _ = checkpoint.load_checkpoint(folder / "model")
    w = "layers.0.query.weight"
    assert (a.state_dict()[w].half().float() == b.state_dict()[w]).all()  # float16 weights
    assert size < 1e6 and (folder / "python" / "tqdm" / "__init__.py").is_file()
    with pytest.raises(gpu_bundle.BundleError, match="not empty"):
        gpu_bundle.pack(folder, tmp_path / "glue", tiny_model)

"""The command line end to end on a tiny checkpoint and tiny GLUE-format data, and bad input."""

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

import data
import osrm_min
import train
from conftest import ROOT, tiny_args, write_tiny_glue
from study import report
from study import tables


def test_end_to_end_writes_results_and_resumes(tmp_path, tiny_model, capsys):
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, tiny_model)) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = first["rows"]
    assert len(rows) == 2 * 3 * 2  # inits x (individual, ta, ties) x tasks
    assert {(r["init"], r["merge"], r["lambda"]) for r in rows} == {
        (i, m, lam) for i in ("lora", "osrm") for m, lam in (("none", None), ("ta", 0.7), ("ties", 1.0))}
    assert {r["seed"] for r in rows} == {42}
    assert all(0 <= r["score"] <= 100 for r in rows)
    mrpc = next(r for r in rows if r["task"] == "mrpc" and r["merge"] == "none")
    assert set(mrpc["metrics"]) == {"accuracy", "f1"}
    assert first["config"]["lam_ta"] == 0.7 and first["config"]["pooling"] == "auto"  # as given
    # what the settings resolved to here, kept apart from them: the checkpoint's own pooling
    assert first["located"] == {"model": str(tiny_model), "data_dir": str(tmp_path / "glue"),
                                "device": "cpu", "pooling": "cls"}
    assert first["config"]["model"] == str(tiny_model) and first["config"]["device"] == "cpu"
    assert sorted(p.name for p in (tmp_path / "out" / "adapters").iterdir()) == [
        "lora-mrpc-seed42.pt", "lora-sst2-seed42.pt", "osrm-mrpc-seed42.pt", "osrm-sst2-seed42.pt"]
    out = capsys.readouterr().out
    assert "normalised" in out and "interference" in out and "input energy that each statistic" in out
    assert {(e["stat"], e["task"]) for e in first["subspace_energy"]} == {
        (stat, t) for stat in ("second_moment", "random") for t in ("sst2", "mrpc")}  # random: the reference
    assert (tmp_path / "out" / "summary.txt").read_text().strip() in out
    # what one constant prediction scores on the tiny dev sets: SST-2 half positive, MRPC's
    # always-paraphrase accuracy 1/2 and F1 2/3
    assert first["baselines"] == {"sst2": 50.0, "mrpc": pytest.approx(100 * (0.5 + 2 / 3) / 2)}
    # each score row keeps its predictions, in the order of the task's saved gold labels: a
    # bootstrap over rows recomputes every score from them
    gold = {(e["seed"], e["task"], e["split"]): e["labels"] for e in first["labels"]}
    assert {k[1]: len(v) for k, v in gold.items()} == {"sst2": 24, "mrpc": 8}
    for r in rows:
        assert data.glue_metrics(data.TASKS[r["task"]], r["predictions"], gold[r["seed"], r["task"], "dev"]) == r["metrics"]
    assert "constant    -               -     50.00     58.33" in out

    # The same command again trains nothing and reproduces every score.
    assert osrm_min.main(tiny_args(tmp_path, tiny_model)) == 0
    out = capsys.readouterr().out
    assert out.count("loaded the adapter trained earlier") == 4
    again = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [r["score"] for r in again["rows"]] == [r["score"] for r in rows]

    # A changed OSRM setting retrains the OSRM adapters only; a changed seed retrains all.
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--osrm-samples", "3")) == 0
    out = capsys.readouterr().out
    assert out.count("loaded the adapter trained earlier") == 2
    assert "osrm/sst2: settings changed" in out and "osrm/mrpc: settings changed" in out
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--seeds", "7")) == 0
    assert capsys.readouterr().out.count("loaded the adapter trained earlier") == 0


def test_mean_statistic_averaging_and_pooling_override(tmp_path, tiny_model):
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm-mean", "--merges", "avg",
                     "--pooling", "mean")
    assert osrm_min.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["config"]["pooling"] == results["located"]["pooling"] == "mean"
    assert {r["lambda"] for r in results["rows"] if r["merge"] == "avg"} == {0.5}


def test_lambda_grid_seeds_and_ablations(tmp_path, tiny_model, capsys):
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm,osrm-frozen,osrm-post",
                     "--merges", "ta,dare-ties", "--lams", "0.5,1.0", "--seeds", "1,2",
                     "--ties-scope", "global")
    assert osrm_min.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    rows = results["rows"]
    # per seed and init: 2 individual scores, and 2 merges x 2 lambdas x 2 tasks
    assert len(rows) == 2 * 4 * (2 + 2 * 2 * 2)
    assert {r["lambda"] for r in rows if r["merge"] != "none"} == {0.5, 1.0}
    # osrm-post trains nothing: no adapter file of its own
    files = sorted(p.name for p in (tmp_path / "out" / "adapters").iterdir())
    assert len(files) == 3 * 2 * 2 and not any(f.startswith("osrm-post") for f in files)
    # osrm-frozen's A is still OSRM's (orthonormal rows); trained osrm's has moved
    for init, frozen in (("osrm-frozen", True), ("osrm", False)):
        A = torch.load(tmp_path / "out" / "adapters" / f"{init}-sst2-seed1.pt")["lora"]["layers.0.query.A"]
        assert torch.allclose(A @ A.T, torch.eye(len(A)), atol=1e-5) == frozen
    matrices = {(e["seed"], e["init"]): e["matrix"] for e in results["interference"]}
    assert len(matrices) == 2 * 4
    # osrm-post's adapters are plain LoRA's projected onto OSRM's row space: on each task's
    # inputs they write no more than plain LoRA's (the projection only removes directions)
    for seed in (1, 2):
        post, plain = matrices[seed, "osrm-post"], matrices[seed, "lora"]
        assert all(0 < post[t][j] for t in range(2) for j in range(2))
        assert post != plain
    out = capsys.readouterr().out
    assert "±" in out  # two seeds: mean and standard deviation
    assert ("figures skipped: matplotlib is not installed" in out) == (
        importlib.util.find_spec("matplotlib") is None)


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "osrm_min.py"), *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


def assert_one_line_error(result, *phrases):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0]


def test_unknown_task_lists_the_valid_ones(tmp_path):
    assert_one_line_error(run_cli("--tasks", "sst2,foo", "--data-dir", str(tmp_path)),
                          "foo", "cola", "rte")


def test_missing_data_folder_offline_says_where_to_get_it(tmp_path):
    # No --data-dir and no GLUE_DIR: GLUE is downloaded, here from a mirror that is not there.
    env = {k: v for k, v in __import__("os").environ.items() if k != "GLUE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "cache"), GLUE_BASE_URL="http://127.0.0.1:9/glue")
    assert_one_line_error(run_cli("--tasks", "sst2,mrpc", env=env), "--data-dir", "GLUE_DIR")


def test_hub_model_offline_says_what_to_do(tmp_path):
    write_tiny_glue(tmp_path / "glue")
    env = dict(__import__("os").environ, HF_HOME=str(tmp_path / "hf"), HF_ENDPOINT="http://127.0.0.1:9")
    result = run_cli(*tiny_args(tmp_path, "FacebookAI/roberta-large"), env=env)
    assert_one_line_error(result, "--model", "HF_ENDPOINT")


def test_malformed_rows_are_skipped_and_reported(tmp_path, tiny_model, capsys):
    glue = write_tiny_glue(tmp_path / "glue")
    with open(glue / "SST-2" / "train.tsv", "a") as f:
        f.write("no label column here\nthe movie\tmaybe\n")
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--inits", "lora")) == 0
    assert "sst2 train: skipped 2 malformed rows" in capsys.readouterr().out


def test_figures_are_drawn_when_matplotlib_is_installed(tmp_path, tiny_model):
    pytest.importorskip("matplotlib")
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--lams", "0.5,1.0")) == 0
    for name in ("lambda.png", "interference.png", "spectrum.png", "energy.png"):
        assert (tmp_path / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_lambda_table_and_figure_only_where_a_merge_ran_at_several_lambdas(tmp_path, tiny_model):
    figures = importlib.util.find_spec("matplotlib") is not None  # drawn only with matplotlib
    write_tiny_glue(tmp_path / "glue")
    out = tmp_path / "out"
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--inits", "lora", "--lams", "0.5,1.0")) == 0
    assert "against lambda" in (out / "summary.txt").read_text()
    assert (out / "lambda.png").exists() == figures
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--inits", "lora")) == 0  # one lambda each
    assert "against lambda" not in (out / "summary.txt").read_text()
    assert not (out / "lambda.png").exists()  # the earlier run's figure is not left behind
    assert (out / "interference.png").exists() == figures


def test_the_diagnostics_hold_the_spectrum_and_a_random_reference(tmp_path, tiny_model):
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--merges", "ta")) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    for e in results["spectrum"]:
        assert len(e["eigenvalues"]) == 32 and e["eigenvalues"] == sorted(e["eigenvalues"])
    energy = {(e["stat"], e["task"]): e for e in results["subspace_energy"]}
    for t in ("sst2", "mrpc"):  # Ky Fan: no orthonormal A reads less of the others than OSRM's
        assert energy["second_moment", t]["others"] <= energy["random", t]["others"]


def test_a_rerun_reuses_earlier_scores_and_evaluates_only_what_is_new(tmp_path, tiny_model,
                                                                       monkeypatch):
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--merges", "ta", "--lams", "0.5")
    assert osrm_min.main(args) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    calls = []
    evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(a[2].name) or evaluate(*a, **k))
    assert osrm_min.main(args) == 0  # everything was scored before: nothing is evaluated
    assert calls == []
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == first
    # one more lambda: only its merged scores are new (2 inits x 2 tasks)
    args[args.index("--lams") + 1] = "0.5,1.0"
    assert osrm_min.main(args) == 0
    assert len(calls) == 2 * 2
    # a changed setting of the experiment (even one that ta ignores, like TIES's k: the check
    # is conservative) starts the evaluations afresh
    assert osrm_min.main(args + ["--ties-keep", "0.5"]) == 0
    assert len(calls) == 4 + 2 * (1 + 2) * 2


def test_a_run_copied_with_its_model_and_data_elsewhere_is_reused_there(tmp_path, tiny_model,
                                                                        monkeypatch):
    """Saved adapters and scores are keyed by the content of the model and data, not their
    paths: a run folder handed out with the same files in other places (LAB.md's plan for
    slow machines) trains and evaluates nothing again; changed content still retrains."""
    import shutil
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, tiny_model)) == 0
    first = json.loads((tmp_path / "out" / "results.json").read_text())["rows"]
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(tiny_model, elsewhere / "model")
    shutil.copytree(tmp_path / "glue", elsewhere / "glue")
    shutil.copytree(tmp_path / "out", elsewhere / "out")
    calls = []
    evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(1) or evaluate(*a, **k))
    assert osrm_min.main(tiny_args(elsewhere, elsewhere / "model")) == 0
    assert calls == []
    assert json.loads((elsewhere / "out" / "results.json").read_text())["rows"] == first
    with open(elsewhere / "glue" / "SST-2" / "train.tsv", "a") as f:  # other content: retrained
        f.write("a new sentence\t1\n")
    assert osrm_min.main(tiny_args(elsewhere, elsewhere / "model")) == 0
    assert calls != []


def test_the_data_aware_merges_write_rows_without_a_lambda_and_are_reused(tmp_path, tiny_model,
                                                                          monkeypatch, capsys):
    write_tiny_glue(tmp_path / "glue")
    # 8 tiny rows have fewer tokens than the layers' 32 inputs: alpha below 1 keeps RegMean solvable
    args = tiny_args(tmp_path, tiny_model, "--merges", "regmean,fisher,emr", "--lams", "0.5",
                     "--regmean-samples", "8", "--fisher-samples", "4", "--regmean-alpha", "0.9")
    assert osrm_min.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    merged = [r for r in results["rows"] if r["merge"] != "none"]
    assert {(r["init"], r["merge"], r["lambda"]) for r in merged} == {
        (i, m, None) for i in ("lora", "osrm") for m in ("regmean", "fisher", "emr")}
    assert [e["init"] for e in results["merge_statistics_s"]] == ["lora", "osrm"]
    table = capsys.readouterr().out
    assert any(line.split()[:3] == ["osrm", "regmean", "-"] for line in table.splitlines())
    calls = []
    evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(a[2].name) or evaluate(*a, **k))
    assert osrm_min.main(args) == 0
    assert calls == []
    assert json.loads((tmp_path / "out" / "results.json").read_text())["rows"] == results["rows"]


def test_select_on_heldout_picks_lambda_on_held_out_rows_and_pairs_every_init_with_lora(
        tmp_path, tiny_model, monkeypatch, capsys):
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm-own,osrm-mean-random",
                     "--merges", "ta,emr", "--lams", "0.5,1.0", "--seeds", "1,2,3",
                     "--select-on", "heldout", "--heldout-samples", "6", "--osrm-skip-ln-direction")
    assert osrm_min.main(args) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    # the own-task subspace was chosen away from every layer's LayerNorm direction
    assert {e["stat"] for e in results["subspace_energy"]} == {"own", "mean-random", "random"}
    assert all(e["ln_share"] < 1e-6 for e in results["subspace_energy"] if e["stat"] == "own")
    held = results["heldout_rows"]
    # only the merges with a lambda to pick are scored on the held-out rows, at every lambda
    assert {(r["init"], r["merge"], r["lambda"], r["split"]) for r in held} == {
        (i, "ta", lam, "heldout") for i in ("lora", "osrm-own", "osrm-mean-random")
        for lam in (0.5, 1.0)}
    curves = tables.lambda_curves(results, "heldout")
    for (init, merge), lam in tables.best_lambdas(results).items():
        if merge == "ta":
            assert lam == max(curves[init, merge], key=lambda x: sum(curves[init, merge][x]))
    assert "lambda picked on dev (the paper's way)" in out
    # paired differences against lora: one per other init and merge, with a 95% interval
    paired = {(e["init"], e["merge"]): e for e in results["paired"]}
    assert set(paired) == {(i, m) for i in ("osrm-own", "osrm-mean-random")
                           for m in ("none", "ta", "emr")}
    table = tables.headline(results)
    avg = {(i, m): a for i, m, _, _, a, _ in table}
    e = paired["osrm-own", "ta"]
    assert e["differences"] == pytest.approx([x - y for x, y in zip(avg["osrm-own", "ta"], avg["lora", "ta"])])
    assert e["low"] <= e["mean"] <= e["high"]
    # the lambda spread (TA only: emr has no lambda) and a verdict per claim, init and merge
    assert {(e["init"], e["merge"]) for e in results["paired_lambda_spread"]} == {
        (i, "ta") for i in ("osrm-own", "osrm-mean-random")}
    assert len(results["claims"]) == 6 + 2  # per init: alone, ta, emr; ta flatter
    verdicts = {c["claim"][0]: set() for c in results["claims"]}
    for c in results["claims"]:
        verdicts[c["claim"][0]].add(c["verdict"].split(" (")[0])
    assert verdicts["1"] <= {"held", "a gain under a point", "not held", "inconclusive"}
    assert verdicts["2"] <= {"held", "no worse than a point", "not held", "inconclusive",
                             "better by over a point"}
    assert verdicts["3"] == {"not testable here"}  # two lambdas: none is inside the grid
    assert "the paper's three claims against plain LoRA" in out
    # the primary endpoint, for every init and merge
    assert {(e["init"], e["merge"]) for e in results["cost_reduction"]} == {
        (i, m) for i in ("osrm-own", "osrm-mean-random") for m in ("ta", "emr")}
    assert "PRIMARY ENDPOINT" in out
    # a rerun reuses every score, on dev and held out
    calls = []
    evaluate = train.evaluate
    monkeypatch.setattr(train, "evaluate", lambda *a, **k: calls.append(a[2].name) or evaluate(*a, **k))
    assert osrm_min.main(args) == 0
    assert calls == []
    # the report reads whatever the run writes, and prints what the run printed
    written = (tmp_path / "out" / "summary.txt").read_text()
    capsys.readouterr()
    assert report.main([str(tmp_path / "out" / "results.json")]) == 0
    assert capsys.readouterr().out.startswith(written.split("\nwall time")[0])


def test_a_task_missing_a_split_is_carved_only_when_asked(tmp_path, tiny_model, capsys):
    """QNLI with its dev file only: an error without --carve-splits; with it, a run whose QNLI
    column is marked as carved, and which saves where each measure was taken."""
    write_tiny_glue(tmp_path / "glue")
    rows = ["index\tquestion\tsentence\tlabel"] + [
        f"{i}\tis it good {i}?\t{'it is good' if i % 2 else 'it is bad'}\t"
        f"{'entailment' if i % 2 else 'not_entailment'}" for i in range(40)]
    (tmp_path / "glue" / "QNLI").mkdir()
    (tmp_path / "glue" / "QNLI" / "dev.tsv").write_text("\n".join(rows) + "\n")
    args = tiny_args(tmp_path, tiny_model, "--tasks", "sst2,qnli", "--inits", "lora,lora-orthonormal,osrm",
                     "--merges", "ta")
    assert osrm_min.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "QNLI/train.tsv" in err and "--carve-splits N carves it" in err
    assert osrm_min.main(args + ["--carve-splits", "12"]) == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["carved"] == {"qnli": "train"}
    assert "qnli~" in out and "~ qnli: scored on rows carved from its dev file" in out
    assert {r["task"] for r in results["rows"]} == {"sst2", "qnli"}
    assert results["config"]["carve_splits"] == 12
    # every trained adapter's movement; interference and energy on held-out and on fit rows
    assert {(e["init"], e["task"]) for e in results["movement"]} == {
        (i, t) for i in ("lora", "lora-orthonormal", "osrm") for t in ("sst2", "qnli")}
    assert len(results["interference"]) == len(results["interference_fit"]) == 3
    assert {e["rows"] for e in results["subspace_energy"]} == {"fit", "heldout"}


def test_runs_split_by_init_combine_into_the_report_of_one_run(tmp_path, tiny_model, capsys):
    """A study split over two processes (different --inits and --out) gives, combined by
    report.py, the rows and the paired endpoints of the same study run as one."""
    write_tiny_glue(tmp_path / "glue")
    common = ["--merges", "ta", "--lams", "0.5,1.0", "--seeds", "1,2,3"]
    runs = {}
    for name, inits in (("one", "lora,osrm"), ("a", "lora"), ("b", "osrm")):
        args = tiny_args(tmp_path, tiny_model, "--inits", inits, *common)
        args[args.index("--out") + 1] = str(tmp_path / name)
        assert osrm_min.main(args) == 0
        runs[name] = tmp_path / name / "results.json"
    assert report.main([str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "both")]) == 0
    one = json.loads(runs["one"].read_text())
    both = json.loads((tmp_path / "both" / "results.json").read_text())
    key = lambda r: json.dumps(r, sort_keys=True)
    for field in ("rows", "interference", "movement", "subspace_energy", "spectrum"):
        assert sorted(map(key, both[field])) == sorted(map(key, one[field])), field
    assert both["cost_reduction"] == one["cost_reduction"] and both["claims"] == one["claims"]
    assert "combined from runs: " in (tmp_path / "both" / "summary.txt").read_text()
    # runs that differ in more than their inits are refused, in one line
    args = tiny_args(tmp_path, tiny_model, "--inits", "osrm", "--merges", "ta", "--seeds", "4")
    args[args.index("--out") + 1] = str(tmp_path / "c")
    assert osrm_min.main(args) == 0
    capsys.readouterr()
    assert report.main([str(runs["a"]), str(tmp_path / "c" / "results.json"), "--out",
                        str(tmp_path / "bad")]) == 2
    assert "differ in lams;" in capsys.readouterr().err


def two_runs_split_by_init(tmp_path, tiny_model):
    """results.json of two tiny runs that differ only in --inits and --out."""
    write_tiny_glue(tmp_path / "glue")
    runs = []
    for name, inits in (("a", "lora"), ("b", "osrm")):
        args = tiny_args(tmp_path, tiny_model, "--inits", inits, "--merges", "ta")
        args[args.index("--out") + 1] = str(tmp_path / name)
        assert osrm_min.main(args) == 0
        runs.append(tmp_path / name / "results.json")
    return runs


def files_under(*folders):
    return {p: p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def test_the_report_never_writes_over_a_run_it_reads(tmp_path, tiny_model, capsys):
    a, b = two_runs_split_by_init(tmp_path, tiny_model)
    before = files_under(a.parent, b.parent)
    capsys.readouterr()
    for args in ([a, b, "--out", a.parent], [a, b, "--out", b.parent], [a, "--out", a.parent],
                 [a, b, "--out", tmp_path / "a" / "." / ""]):
        assert report.main(list(map(str, args))) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "which this report reads" in err, err
    (tmp_path / "link").symlink_to(tmp_path / "b")
    assert report.main([str(a), str(b), "--out", str(tmp_path / "link")]) == 2
    assert files_under(a.parent, b.parent) == before
    assert report.main([str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    assert files_under(a.parent, b.parent) == before


def test_a_score_that_is_not_a_number_is_refused_alone_and_combined(tmp_path, tiny_model, capsys):
    a, b = two_runs_split_by_init(tmp_path, tiny_model)
    results = json.loads(b.read_text())
    results["rows"][0]["score"] = "VALUE"
    for value in ("NaN", "Infinity", "null"):
        b.write_text(json.dumps(results).replace('"VALUE"', value))
        capsys.readouterr()
        assert report.main([str(a), str(b), "--out", str(tmp_path / "both")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{b} does not hold the results" in err, err
        assert not (tmp_path / "both" / "results.json").exists()
        assert report.main([str(b)]) == 2
        assert "nan" not in capsys.readouterr().out


def test_updates_that_underflow_to_zero_end_the_run_in_one_line_not_in_nan(tmp_path, tiny_model, capsys):
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--lr", "1e-50")) == 2
    err = capsys.readouterr().err
    last = err.strip().replace("\r", "\n").splitlines()[-1]
    assert last.startswith("error: lora/sst2: the adapter's update is zero on its own task's inputs"), last
    assert not (tmp_path / "out" / "results.json").exists()


def test_results_record_their_versions_and_a_combined_report_says_when_they_differ(tmp_path, tiny_model,
                                                                                  capsys):
    a, b = two_runs_split_by_init(tmp_path, tiny_model)
    results = json.loads(b.read_text())
    assert results["versions"]["torch"] == torch.__version__
    assert results["versions"]["osrm_min"] == "unknown" or len(results["versions"]["osrm_min"]) >= 40
    assert report.main([str(a), str(b), "--out", str(tmp_path / "same")]) == 0
    assert "different versions" not in capsys.readouterr().out
    results["versions"]["torch"] = "2.0.0"
    b.write_text(json.dumps(results))
    assert report.main([str(a), str(b), "--out", str(tmp_path / "both")]) == 0
    out = capsys.readouterr().out
    assert "the combined runs were made by different versions" in out and "torch 2.0.0" in out


def test_runs_split_by_seeds_and_inits_combine_into_the_report_of_one_run(tmp_path, tiny_model, capsys):
    """Seeds spread over GPUs or a job array, (seed, init) runs alike: combined, the report of
    one run with every seed; a seed missing for an init, or one given twice, is refused."""
    write_tiny_glue(tmp_path / "glue")
    common = ["--merges", "ta", "--lams", "0.5,1.0"]
    runs = {}
    for name, inits, seeds in (("one", "lora,osrm", "1,2,3"), ("s12", "lora,osrm", "1,2"),
                               ("s3-lora", "lora", "3"), ("s3-osrm", "osrm", "3")):
        args = tiny_args(tmp_path, tiny_model, "--inits", inits, "--seeds", seeds, *common)
        args[args.index("--out") + 1] = str(tmp_path / name)
        assert osrm_min.main(args) == 0
        runs[name] = str(tmp_path / name / "results.json")
    assert report.main([runs["s12"], runs["s3-lora"], runs["s3-osrm"], "--out", str(tmp_path / "all")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())
    combined = json.loads((tmp_path / "all" / "results.json").read_text())
    key = lambda r: json.dumps(r, sort_keys=True)
    for field in ("rows", "interference", "movement", "subspace_energy", "spectrum", "training"):
        assert sorted(map(key, combined[field])) == sorted(map(key, one[field])), field
    for field in ("paired", "cost_reduction", "claims", "paired_lambda_spread"):
        assert combined[field] == one[field], field
    assert combined["config"]["seeds"] == [1, 2, 3]
    table = lambda text: text.split("\n\nmerged average score")[0]
    assert table((tmp_path / "all" / "summary.txt").read_text()) == table((tmp_path / "one" / "summary.txt").read_text())
    capsys.readouterr()
    assert report.main([runs["s12"], runs["s3-lora"], "--out", str(tmp_path / "bad")]) == 2
    assert "lack seed 3 of init osrm" in capsys.readouterr().err
    assert report.main([runs["s12"], runs["one"], "--out", str(tmp_path / "bad")]) == 2
    assert "repeats seed and init" in capsys.readouterr().err


def test_own_updates_alone_are_scored_at_every_lambda_and_split_the_cost(tmp_path, tiny_model, capsys):
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--merges", "ta,ties", "--lams", "0.5,1", "--own-at-lambda")
    assert osrm_min.main(args) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    own = {(r["init"], r["merge"], r["lambda"], r["task"]): r["score"] for r in results["rows"]
           if r["merge"].endswith(":own")}
    assert set(own) == {(i, f"{m}:own", lam, t) for i in ("lora", "osrm") for m in ("ta", "ties")
                        for lam in (0.5, 1.0) for t in ("sst2", "mrpc")}
    alone = {(r["init"], r["task"]): r["score"] for r in results["rows"] if r["merge"] == "none"}
    for (init, task), score in alone.items():  # TA of one update at lambda 1 is the update itself
        assert own[init, "ta:own", 1.0, task] == pytest.approx(score, abs=1e-9)
    assert "the merging cost in two parts" in capsys.readouterr().out
    assert osrm_min.main(args) == 0  # a rerun evaluates nothing again
    assert "reusing" in capsys.readouterr().out


def test_a_training_error_names_the_flags_of_the_change_it_suggests_and_no_others():
    from study import cli
    extreme = str(train.diverged("lora/stsb", "loss", 3, 10, 1e-3, {"labels": torch.tensor([2e4])}))
    assert "labels are extreme" in extreme and cli.with_flags(extreme) == extreme  # not a setting
    high = str(train.diverged("lora/sst2", "gradient norm", 3, 10, 1e30, {"labels": torch.tensor([1])}))
    assert cli.with_flags(high) == high + " (--lr)"
    alone = osrm_min.Scoring(42, "lora", "none", None, {})
    merged = osrm_min.Scoring(42, "lora", "ta", 1e30, {})
    for scoring, flags in ((alone, "(--lr)"), (merged, "(--lams, --lam-ta, --lam-ties)")):
        message = f"{osrm_min.described(scoring, 'sst2')}: the model's outputs are not finite"
        assert cli.with_flags(message) == f"{message} {flags}"

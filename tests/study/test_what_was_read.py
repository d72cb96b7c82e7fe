"""Saved results are keyed on what the computation read, at the moment it read it: every file
of the model folder by its place in it, each GLUE file checked as it is read (not only when the
run starts), the model each worker process loads checked against the one the run loaded, and
whether a split was carved. Each recovery test compares the rerun with a fresh run."""

import json
import shutil

import osrm_min
import data
from conftest import tiny_args, write_tiny_checkpoint, write_tiny_glue
from speed import parallel


def scores(out):
    """(seed, init, merge, lambda, task, split, score) of every row a run wrote."""
    results = json.loads((out / "results.json").read_text())
    return sorted((r["seed"], r["init"], r["merge"], r["lambda"] or 0, r["task"], r["split"], r["score"])
                  for r in results["rows"] + results["heldout_rows"])


def fresh_run(tmp_path, model, *extra):
    """The same command into a new output folder: what the rerun must give."""
    args = tiny_args(tmp_path, model, *extra)
    args[args.index("--out") + 1] = str(tmp_path / "fresh")
    assert osrm_min.main(args) == 0
    return scores(tmp_path / "fresh")


def one_error_line(err):
    """The run ended in one line (after the progress bars of what it trained before)."""
    last = err.strip().replace("\r", "\n").splitlines()[-1]
    return last.startswith("error: ") and err.count("error: ") == 1 and "Traceback" not in err


def test_an_edit_to_the_encoders_config_beside_a_pooling_config_of_the_same_name_retrains(
        tmp_path, capsys):
    # a sentence-transformers folder has config.json and 1_Pooling/config.json: two entries
    model = tmp_path / "model"
    write_tiny_checkpoint(model, mean_pooling=True)
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, model, "--inits", "lora")
    assert osrm_min.main(args) == 0
    config = json.loads((model / "config.json").read_text())
    config["hidden_dropout_prob"] = 0.3
    (model / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert osrm_min.main(args) == 0
    out = capsys.readouterr().out
    assert "loaded the adapter trained earlier" not in out
    assert out.count("its input files changed (model)") == 2
    assert scores(tmp_path / "out") == fresh_run(tmp_path, model, "--inits", "lora")


def test_a_glue_file_replaced_between_seeds_ends_the_run_and_the_rerun_is_a_fresh_run(
        tmp_path, tiny_model, monkeypatch, capsys):
    write_tiny_glue(tmp_path / "glue")
    train = tmp_path / "glue" / "SST-2" / "train.tsv"
    real, calls = data.prepare_tasks, []

    def then_replace_the_file(*args, **kwargs):  # seed 1 has read its rows; seed 2 has not
        prepared = real(*args, **kwargs)
        if not calls:
            train.write_text(train.read_text().replace("\t1\n", "\t0\n", 2))
        calls.append(1)
        return prepared

    monkeypatch.setattr(data, "prepare_tasks", then_replace_the_file)
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora", "--seeds", "1,2")
    assert osrm_min.main(args) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and f"{train} changed after this run fingerprinted it" in err, err
    monkeypatch.undo()
    assert osrm_min.main(args) == 0
    assert scores(tmp_path / "out") == fresh_run(tmp_path, tiny_model, "--inits", "lora", "--seeds", "1,2")


def test_a_model_replaced_after_the_run_loaded_it_is_refused_by_its_workers(tmp_path, monkeypatch, capsys):
    model = tmp_path / "model"
    write_tiny_checkpoint(model)
    write_tiny_glue(tmp_path / "glue")
    real = parallel.Workers._start_pool

    def replace_the_model_then_start(self):  # the same shapes, other weights
        if self.pool is None:
            write_tiny_checkpoint(model, seed=1)
        real(self)

    monkeypatch.setattr(parallel.Workers, "_start_pool", replace_the_model_then_start)
    args = tiny_args(tmp_path, model, "--inits", "lora,osrm", "--workers", "2")
    assert osrm_min.main(args) == 2
    err = capsys.readouterr().err
    assert one_error_line(err) and "changed after this run loaded it" in err, err
    monkeypatch.undo()
    assert osrm_min.main(args) == 0  # the rerun reads the new weights from the start


def test_adapters_of_a_carved_split_are_not_reused_once_the_real_split_appears_or_goes(
        tmp_path, tiny_model, capsys):
    write_tiny_glue(tmp_path / "glue")
    dev = tmp_path / "glue" / "MRPC" / "dev.tsv"
    shutil.move(dev, tmp_path / "mrpc-dev.tsv")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm", "--carve-splits", "4")
    assert osrm_min.main(args) == 0  # MRPC scored on 4 rows carved from its training file
    shutil.copy(tmp_path / "mrpc-dev.tsv", dev)
    capsys.readouterr()
    assert osrm_min.main(args) == 0  # now nothing is carved: MRPC trains on all its rows
    out = capsys.readouterr().out
    assert "lora/mrpc: settings changed" in out
    assert "lora/sst2: loaded the adapter trained earlier" in out  # SST-2's own rows did not change
    assert "osrm/sst2: settings changed" in out  # its subspace reads MRPC's rows
    assert scores(tmp_path / "out") == fresh_run(tmp_path, tiny_model, "--inits", "lora,osrm",
                                                 "--carve-splits", "4")
    dev.unlink()
    capsys.readouterr()
    assert osrm_min.main(args) == 0  # carved again
    assert "lora/mrpc: settings changed" in capsys.readouterr().out


def test_a_carve_of_another_size_retrains_only_what_read_a_carved_split(tmp_path, tiny_model, capsys):
    write_tiny_glue(tmp_path / "glue")
    (tmp_path / "glue" / "MRPC" / "dev.tsv").unlink()
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--inits", "lora", "--carve-splits", "4")) == 0
    capsys.readouterr()
    assert osrm_min.main(tiny_args(tmp_path, tiny_model, "--inits", "lora", "--carve-splits", "3")) == 0
    out = capsys.readouterr().out
    assert "lora/sst2: loaded the adapter trained earlier" in out and "lora/mrpc: settings changed" in out

"""The settings: presets, per-task rows, the banner, what a saved adapter is keyed by; and the
regression head's start."""

import pytest
import torch

import data
import merge
import osrm_min
from study import config

INITS = {name: init.help for name, init in osrm_min.INITS.items()}


FOUND = config.Located("/models/bert", "/data/glue", "cpu")  # what locate_inputs would find


def parse(*argv):
    return config.parse_command_line(list(argv), INITS, merge.METHODS)


@pytest.fixture(autouse=True)
def local_glue(monkeypatch, tmp_path):
    monkeypatch.setenv("GLUE_DIR", str(tmp_path))  # parsing checks the folder exists, nothing more


def test_the_lab_preset_sets_its_fields_and_a_given_flag_still_wins():
    cfg = parse("--lab")
    assert cfg.tasks == ("sst2", "stsb")
    assert (cfg.train_samples, cfg.dev_samples) == (config.LAB_PRESET["train_samples"],
                                                    config.LAB_PRESET["dev_samples"])
    assert cfg.epochs == config.Config.epochs  # what the preset does not name keeps its default
    cfg = parse("--lab", "--tasks", "sst2,mrpc", "--dev-samples", "0")
    assert cfg.tasks == ("sst2", "mrpc") and cfg.dev_samples == 0
    assert "(the lab preset, --lab)" in config.banner(cfg, FOUND, "cls").splitlines()[0]


def test_rows_per_task_override_the_common_count():
    cfg = parse("--tasks", "sst2,mrpc,sts-b", "--train-samples", "2000",
                "--train-samples-per-task", "MRPC=0,stsb=300")
    assert config.train_rows(cfg) == {"sst2": 2000, "mrpc": 0, "stsb": 300}


def test_the_banner_shows_the_settings_other_than_the_defaults_each_name_apart_from_its_value():
    cfg = parse("--tasks", "sst2,mrpc", "--rank", "4", "--osrm-skip-ln-direction")
    lines = config.banner(cfg, FOUND, "mean").splitlines()
    assert lines[1] == "model /models/bert (mean pooling), GLUE /data/glue, device cpu"  # as found
    names = [line.split()[0] for line in lines[3:]]
    # each line starts with a setting's own name ('osrm_skip_ln_directionFalse' once ran together)
    assert names == ["out", "rank", "osrm_skip_ln_direction"]  # tasks and seeds are the defaults
    lab = [line.split()[0] for line in config.banner(parse("--lab"), FOUND, "cls").splitlines()[3:]]
    assert set(config.LAB_PRESET) | {"lab"} <= set(lab)


def test_a_regression_head_starts_at_the_mean_target_and_a_classifier_as_before(tiny_model):
    from pretrained import checkpoint
    encoder, pooling = checkpoint.load_checkpoint(str(tiny_model))
    cfg = config.Config(pooling=pooling)
    rows = [([2], [0], 1.0), ([2], [0], 4.0), ([2], [0], 2.5)]
    head = osrm_min.new_head(encoder, data.TASKS["stsb"], 42, cfg, train_rows=rows)
    assert head.classifier.bias.item() == pytest.approx(2.5)
    plain = osrm_min.new_head(encoder, data.TASKS["stsb"], 42, config.Config(pooling=pooling, head_bias_mean=False), rows)
    assert torch.equal(plain.classifier.weight, head.classifier.weight)  # only the bias moves
    sst2 = [([2], [0], 1), ([2], [0], 1)]
    a = osrm_min.new_head(encoder, data.TASKS["sst2"], 42, cfg, sst2)
    b = osrm_min.new_head(encoder, data.TASKS["sst2"], 42, cfg)
    assert torch.equal(a.classifier.bias, b.classifier.bias)


def test_an_osrm_adapter_is_keyed_by_the_rows_its_statistics_read(tmp_path):
    from study import resume
    inputs = {k: "x" for k in ("model", "tokenizer", "train:sst2", "train:mrpc")}

    def settings(init, *args):  # what SST-2's saved adapter is keyed by
        cfg = parse("--out", str(tmp_path), "--tasks", "sst2,mrpc", "--train-samples", "2000", *args)
        return resume.Store(cfg, "cpu", inputs).adapter_settings(cfg, 42, "sst2", init, init == "osrm")

    base = settings("osrm")
    # MRPC's count above --osrm-samples (100): the statistics read the same first 100 rows
    assert settings("osrm", "--train-samples-per-task", "mrpc=0") == base
    # below it they read fewer rows, a different subspace: the adapter is not reused
    assert settings("osrm", "--train-samples-per-task", "mrpc=50") != base
    # plain LoRA reads no statistics: only its own task's count matters
    assert settings("lora", "--train-samples-per-task", "mrpc=50") == settings("lora")
    assert settings("lora", "--train-samples-per-task", "sst2=50") != settings("lora")

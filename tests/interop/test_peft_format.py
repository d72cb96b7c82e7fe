"""PEFT adapters in and out (interop/peft_format.py), against fixtures made once with
transformers 5.25 and peft 0.21.2 by tests/interop/fixtures/make_peft_fixture.py: osrm-min's
adapters load in PEFT to the same logits, PEFT's adapters read by osrm-min give PEFT's logits
and dense updates, an exported OSRM initialisation keeps its A when PEFT loads it to train,
and what osrm-min cannot represent is refused in one line."""

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import lora
import osrm_min
from conftest import tiny_args, write_tiny_checkpoint, write_tiny_glue
from interop import peft_format
from interop.peft_format import AdapterError, read_adapter, write_adapter
from pretrained.checkpoint import load_checkpoint, read_safetensors, write_safetensors

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from make_peft_fixture import bases, example_adapter  # noqa: E402

PEFT = json.loads((FIXTURES / "peft.json").read_text())


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return bases(tmp_path_factory.mktemp("bases"))


def logits(encoder, head, x):
    """osrm-min's encoder (as it is: with an adapter or a merged update) and head on inputs x."""
    batch = {k: torch.tensor(v) for k, v in x.items()}
    batch["attention_mask"] = batch["attention_mask"].bool()  # as data.make_batches gives it
    encoder.eval(), head.eval()
    with torch.no_grad():
        return head(encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]),
                    batch["attention_mask"])


def a_head(encoder, state, pooling):
    head = lora.ClassificationHead(encoder.config.hidden_size, state["classifier.weight"].shape[0], pooling, 0.0)
    head.load_state_dict(state)
    return head


@pytest.mark.parametrize("model_type, pooling, seed, n", [("bert", "cls", 11, 2), ("roberta", "roberta", 12, 3)])
def test_an_osrm_min_adapter_is_the_fixtures_and_loads_in_peft_to_the_same_logits(
        tmp_path, base, model_type, pooling, seed, n):
    encoder, _ = load_checkpoint(base[model_type])
    state, head, settings = example_adapter(encoder, pooling, seed, n)
    write_adapter(tmp_path / "a", state, head, settings)
    committed = FIXTURES / f"out_{model_type}"
    assert (json.loads((tmp_path / "a" / "adapter_config.json").read_text())
            == json.loads((committed / "adapter_config.json").read_text()))
    ours, theirs = (read_safetensors(f / "adapter_model.safetensors") for f in (tmp_path / "a", committed))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    with lora.carrying(encoder, state, ("query", "value"), 4, 8.0):
        got = logits(encoder, a_head(encoder, head, pooling), PEFT[f"inputs_{model_type}"])
    assert torch.allclose(got, torch.tensor(PEFT[f"out_{model_type}"]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type, name", [("bert", "in_bert"), ("roberta", "in_roberta_rslora")])
def test_a_peft_adapter_read_by_osrm_min_gives_peft_logits_and_dense_updates(base, model_type, name):
    encoder, _ = load_checkpoint(base[model_type])
    state, head, pooling, layers = read_adapter(FIXTURES / name, encoder, model_type)
    assert pooling == ("cls" if model_type == "bert" else "roberta") and len(layers) == 4
    deltas = {k.removeprefix("base_model.model.").removeprefix(f"{model_type}."): v
              for k, v in read_safetensors(FIXTURES / f"{name}_delta.safetensors").items()}
    from pretrained.checkpoint import hf_to_ours
    updates = {n: state[f"{n}.B"] @ state[f"{n}.A"] for n in layers}
    assert {hf_to_ours(k + ".weight").removesuffix(".weight") for k in deltas} == set(updates)
    for k, v in deltas.items():
        assert torch.allclose(updates[hf_to_ours(k + ".weight").removesuffix(".weight")], v, atol=1e-6, rtol=0)
    with lora.merged_into_weights(encoder, updates):
        got = logits(encoder, a_head(encoder, head, pooling), PEFT[f"inputs_{model_type}"])
    assert torch.allclose(got, torch.tensor(PEFT[name]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_an_exported_osrm_init_keeps_its_A_when_peft_loads_it_to_train(tmp_path, base, model_type):
    written = read_safetensors(FIXTURES / f"init_{model_type}" / "adapter_model.safetensors")
    loaded = read_safetensors(FIXTURES / f"init_{model_type}_loaded.safetensors")
    As = {k: v for k, v in written.items() if "lora_A" in k}
    assert {k.replace(".default", "") for k in loaded} == set(As)
    assert all(torch.equal(loaded[k], As[k.replace(".default", "")]) for k in loaded)
    assert all(not v.any() for k, v in written.items() if "lora_B" in k)  # B = 0
    trainable = PEFT[f"init_{model_type}_trainable"]
    assert sum("lora_A" in n for n in trainable) == 4 and any("classifier" in n for n in trainable)
    # and osrm-min exports the same initialisation today (each row up to its sign: eigh's choice)
    write_tiny_glue(tmp_path / "glue")
    args = ["init", "--tasks", "sst2,mrpc", "--model", str(base[model_type]), "--data-dir",
            str(tmp_path / "glue"), "--rank", "2", "--osrm-samples", "4", "--max-length", "32",
            "--out", str(tmp_path / "init")]
    assert peft_format.main(args) == 0
    again = read_safetensors(tmp_path / "init" / "sst2" / "adapter_model.safetensors")
    for k, A in As.items():
        cos = (again[k] * A).sum(1) / (again[k].norm(dim=1) * A.norm(dim=1))
        assert torch.allclose(cos.abs(), torch.ones_like(cos), atol=1e-4), k
    config = json.loads((tmp_path / "init" / "sst2" / "adapter_config.json").read_text())
    assert config["inference_mode"] is False
    assert config["modules_to_save"] == (["classifier", "pooler"] if model_type == "bert" else ["classifier"])


def test_export_then_analyse_gives_the_runs_own_scores_and_interference(tmp_path, capsys):
    # the default sentence encoder's mean pooling has no transformers class: AutoModel + head
    model = tmp_path / "model"
    write_tiny_checkpoint(model, mean_pooling=True)
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, model, "--inits", "lora,osrm", "--merges", "ta")) == 0
    run = json.loads((tmp_path / "out" / "results.json").read_text())
    assert peft_format.main(["export", str(tmp_path / "out"), "--init", "osrm", "--out", str(tmp_path / "peft")]) == 0
    assert "an adapter for AutoModel; its head (mean pooling" in capsys.readouterr().out
    assert (tmp_path / "peft" / "osrm-sst2" / "head.safetensors").exists()
    assert peft_format.main(["analyse", f"sst2={tmp_path / 'peft' / 'osrm-sst2'}",
                             f"mrpc={tmp_path / 'peft' / 'osrm-mrpc'}", "--model", str(model),
                             "--data-dir", str(tmp_path / "glue"), "--merges", "ta", "--lams", "0.7",
                             "--out", str(tmp_path / "analysis")]) == 0
    got = json.loads((tmp_path / "analysis" / "analysis.json").read_text())
    rows = {(r["merge"], r["task"]): r["score"] for r in run["rows"] if r["init"] == "osrm"}
    assert got["alone"] == pytest.approx({t: rows["none", t] for t in ("sst2", "mrpc")}, abs=1e-9)
    assert got["merged"][0]["scores"] == pytest.approx({t: rows["ta", t] for t in ("sst2", "mrpc")}, abs=1e-9)
    reported = next(e["matrix"] for e in run["interference"] if e["init"] == "osrm")
    assert got["interference"] == [pytest.approx(r, rel=1e-5) for r in reported]


def bad(folder, change):
    """A copy of the fixture in_bert with one thing changed."""
    shutil.copytree(FIXTURES / "in_bert", folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    tensors = read_safetensors(folder / "adapter_model.safetensors")
    change(config, tensors, folder)
    (folder / "adapter_config.json").write_text(json.dumps(config))
    write_safetensors(tensors, folder / "adapter_model.safetensors")
    return folder


def rename(tensors, old, new):
    for k in [k for k in tensors if old in k]:
        tensors[k.replace(old, new)] = tensors.pop(k)


BAD = {
    "not LoRA": (lambda c, t, f: c.update(peft_type="IA3"), "is a IA3 adapter"),
    "DoRA": (lambda c, t, f: c.update(use_dora=True), "DoRA"),
    "ranks per layer": (lambda c, t, f: c.update(rank_pattern={"query": 8}), "ranks that differ"),
    "another model's": (lambda c, t, f: rename(t, ".bert.", ".roberta."), "made for a roberta model"),
    "another width": (lambda c, t, f: t.update({k: torch.zeros(4, 16) for k in t if "lora_A" in k}),
                      "an adapter for another base model"),
    "a module not adapted": (lambda c, t, f: rename(t, "layer.0.attention.self.query", "layer.0.crossattention.query"),
                             "adapts a module osrm-min does not"),
    "lora_A alone": (lambda c, t, f: t.pop(next(k for k in t if "lora_B" in k)), "without lora_B"),
    "no config": (lambda c, t, f: None, "has no adapter_config.json"),
}


@pytest.mark.parametrize("case", BAD, ids=list(BAD))
def test_what_osrm_min_cannot_represent_is_refused_in_one_line(tmp_path, base, capsys, case):
    change, message = BAD[case]
    folder = bad(tmp_path / "bad", change)
    if case == "no config":
        (folder / "adapter_config.json").unlink()
    write_tiny_glue(tmp_path / "glue")
    code = peft_format.main(["analyse", f"sst2={folder}", f"mrpc={FIXTURES / 'in_bert'}", "--model",
                             str(base["bert"]), "--data-dir", str(tmp_path / "glue"), "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    with pytest.raises(AdapterError):
        read_adapter(folder, load_checkpoint(base["bert"])[0], "bert")

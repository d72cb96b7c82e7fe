"""RoBERTa: our encoder and head against Hugging Face's RobertaForSequenceClassification on a
tiny checkpoint, and the whole experiment run from a RoBERTa-format folder.

The checkpoint (tests/pretrained/fixtures/roberta_tiny/, 2 layers, hidden 16, random weights, the small
real BPE vocabulary of tests/pretrained/fixtures/bpe/) and the reference outputs (roberta_tiny.npz) were
made once by tests/pretrained/fixtures/make_roberta_fixture.py in a separate environment.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import osrm_min
from conftest import TEST_DEVICE
from conftest import tiny_args, write_tiny_glue
from lora import ClassificationHead
from pretrained import tokenization
from pretrained.checkpoint import load_checkpoint, read_safetensors
from speed import fastpath

FIXTURES = Path(__file__).parent / "fixtures"
TINY = FIXTURES / "roberta_tiny"


@pytest.fixture
def tiny_roberta(tmp_path):
    """A complete RoBERTa folder: the tiny checkpoint with its vocab.json and merges.txt."""
    folder = tmp_path / "tiny-roberta"
    shutil.copytree(TINY, folder)
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(FIXTURES / "bpe" / name, folder / name)
    return folder


@pytest.mark.parametrize("unpad", [True, False])
def test_hidden_states_and_logits_match_transformers(unpad):
    ref = np.load(FIXTURES / "roberta_tiny.npz")
    encoder, pooling = load_checkpoint(TINY)
    assert pooling == "roberta"  # config.json's model_type chooses RoBERTa's own head
    assert encoder.config.layer_norm_eps == 1e-5 and encoder.config.pad_token_id == 1
    encoder.eval()
    model = fastpath.speed_up(encoder) if unpad else encoder  # the packed path and the plain one
    ids, mask = torch.from_numpy(ref["input_ids"]), torch.from_numpy(ref["attention_mask"])
    assert mask.float().mean() < 0.75  # so that unpad=True really takes the packed path
    with torch.no_grad():
        hidden = model(ids, torch.zeros_like(ids), mask)
    err = (hidden - torch.from_numpy(ref["last_hidden_state"])).abs()[mask].max().item()
    assert err < 1e-4, err

    # RobertaClassificationHead: dense + tanh on <s>, then out_proj; ours with the same weights
    raw = read_safetensors(TINY / "model.safetensors")
    head = ClassificationHead(16, 3, "roberta", dropout=0.1).eval()
    with torch.no_grad():
        head.pooler.weight.copy_(raw["classifier.dense.weight"])
        head.pooler.bias.copy_(raw["classifier.dense.bias"])
        head.classifier.weight.copy_(raw["classifier.out_proj.weight"])
        head.classifier.bias.copy_(raw["classifier.out_proj.bias"])
        logits = head(hidden, mask)
    assert (logits - torch.from_numpy(ref["logits"])).abs().max().item() < 1e-4


def test_special_token_ids_agree_with_the_reference(tiny_roberta):
    """<s>, </s> and <pad> where the reference tokenizer put them in the parity batch (the
    tokenizer's own parity test is tests/test_bpe_tokenizer.py)."""
    ref = np.load(FIXTURES / "roberta_tiny.npz")
    tok = tokenization.load_tokenizer(tiny_roberta)
    assert isinstance(tok, tokenization.ByteLevelBPETokenizer)
    for ids, mask in zip(ref["input_ids"], ref["attention_mask"]):
        real = ids[mask].tolist()
        assert real[0] == tok.cls_id and real[-1] == tok.sep_id
        assert (ids[~mask] == tok.pad_id).all()


def test_positions_count_real_tokens_after_the_padding_index():
    encoder, _ = load_checkpoint(TINY)
    emb = encoder.embeddings
    ids = torch.tensor([[0, 50, 60, 2, 1, 1]])  # <s> x y </s> <pad> <pad>
    real = (ids != 1).long()
    expected = torch.tensor([[2, 3, 4, 5, 1, 1]])  # fairseq/HF: pad_id + 1, 2, ...; pad_id at padding
    assert torch.equal(real.cumsum(1) * real + 1, expected)
    x = emb.eval()(ids, torch.zeros_like(ids))
    manual = emb.norm(emb.word_embeddings(ids) + emb.position_embeddings(expected)
                      + emb.token_type_embeddings(torch.zeros_like(ids)))
    assert torch.allclose(x, manual)
    assert encoder.config.max_length == 64  # 66 position rows, two spent on padding and offset


def test_roberta_folder_runs_the_whole_experiment(tmp_path, tiny_roberta):
    write_tiny_glue(tmp_path / "glue")
    assert osrm_min.main(tiny_args(tmp_path, tiny_roberta)) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["located"]["pooling"] == "roberta"
    rows = results["rows"]
    assert len(rows) == 2 * 3 * 2  # inits x (individual, ta, ties) x tasks
    assert all(0 <= r["score"] <= 100 for r in rows)
    assert osrm_min.main(tiny_args(tmp_path, tiny_roberta, "--max-length", "65")) == 2  # past 64 positions


def test_a_training_step_under_bf16_autocast_keeps_fp32_gradients():
    """--device cuda trains under bf16 autocast; CPU autocast stands in for it here (unless
    OSRM_TEST_DEVICE says cuda), to check that the written-out attention, dropout and heads
    accept bf16 activations and that the adapters' gradients stay float32."""
    from lora import add_lora
    ref = np.load(FIXTURES / "roberta_tiny.npz")
    encoder, _ = load_checkpoint(TINY)
    add_lora(encoder, ("query", "value"), rank=2, alpha=4)
    head = ClassificationHead(16, 3, "roberta", dropout=0.1)
    encoder.to(TEST_DEVICE), head.to(TEST_DEVICE)
    ids = torch.from_numpy(ref["input_ids"]).to(TEST_DEVICE)
    mask = torch.from_numpy(ref["attention_mask"]).to(TEST_DEVICE)
    for model in (fastpath.speed_up(encoder), encoder):
        with torch.autocast(torch.device(TEST_DEVICE).type, dtype=torch.bfloat16):
            logits = head(model(ids, torch.zeros_like(ids), mask), mask)
            loss = torch.nn.functional.cross_entropy(logits, torch.arange(8, device=TEST_DEVICE) % 3)
        assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
        loss.backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)

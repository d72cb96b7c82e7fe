"""The LoRA layer, the encoder's checkpoint loading, and the merged-weights context."""


import pytest
import torch

import lora
from conftest import hf_names, write_tiny_checkpoint


def test_lora_linear_computes_w0x_plus_s_BAx():
    torch.manual_seed(0)
    layer = lora.LoRALinear(6, 5)
    A, B = torch.randn(2, 6), torch.randn(5, 2)
    layer.set_lora(A, rank=2, alpha=4)
    layer.B.data.copy_(B)
    x = torch.randn(3, 6)
    expected = x @ layer.weight.T + layer.bias + 2.0 * (x @ A.T) @ B.T  # s = alpha / r = 2
    assert torch.allclose(layer(x), expected, atol=1e-6)
    assert torch.allclose(layer.delta_w(), 2.0 * B @ A)


def test_fresh_adapter_leaves_the_model_unchanged(tiny_model):
    encoder, _ = lora.load_checkpoint(tiny_model)
    encoder.eval()
    ids = torch.tensor([[2, 7, 8, 3, 0]])
    args = (ids, torch.zeros_like(ids), ids != 0)
    before = encoder(*args)
    lora.add_lora(encoder, ("query", "value"), rank=4, alpha=8, seed=1)
    assert torch.equal(encoder(*args), before)  # B = 0
    names = sorted(lora.lora_layers(encoder))
    assert names == ["layers.0.query", "layers.0.value", "layers.1.query", "layers.1.value"]
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{k}" for n in names for k in "AB"}


def test_merged_into_weights_equals_lora_forward_and_restores_exactly(tiny_model):
    encoder, _ = lora.load_checkpoint(tiny_model)
    encoder.eval()
    lora.add_lora(encoder, ("query", "value"), rank=4, alpha=8, seed=1)
    for m in lora.lora_layers(encoder).values():
        m.B.data.normal_()
    ids = torch.tensor([[2, 7, 8, 9, 3], [2, 10, 3, 0, 0]])
    args = (ids, torch.zeros_like(ids), ids != 0)
    with_adapter = encoder(*args)
    deltas = lora.delta_weights(encoder)
    w0 = {n: m.weight.clone() for n, m in lora.lora_layers(encoder).items()}
    lora.remove_lora(encoder)
    with lora.merged_into_weights(encoder, deltas):
        assert torch.allclose(encoder(*args), with_adapter, atol=1e-5)
    layers = dict(encoder.named_modules())
    assert all(torch.equal(layers[n].weight, w) for n, w in w0.items())


def test_checkpoint_round_trip_with_bert_prefix(tmp_path):
    original = write_tiny_checkpoint(tmp_path / "m")
    loaded, pooling = lora.load_checkpoint(tmp_path / "m")
    assert pooling == "cls"
    for k, v in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k


def test_pytorch_model_bin_without_prefix(tmp_path):
    original = write_tiny_checkpoint(tmp_path / "m", mean_pooling=True)
    (tmp_path / "m" / "model.safetensors").unlink()
    state = {k.removeprefix("bert."): v for k, v in hf_names(original.state_dict()).items()}
    torch.save(state, tmp_path / "m" / "pytorch_model.bin")
    loaded, pooling = lora.load_checkpoint(tmp_path / "m")
    assert pooling == "mean"
    assert torch.equal(loaded.layers[1].value.weight, original.layers[1].value.weight)


def test_safetensors_round_trip_keeps_dtypes(tmp_path):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5), "c": torch.randn(2).half()}
    lora.write_safetensors(tensors, tmp_path / "t.safetensors")
    back = lora.read_safetensors(tmp_path / "t.safetensors")
    assert all(torch.equal(back[k], v) and back[k].dtype == v.dtype for k, v in tensors.items())


def test_missing_and_unexpected_tensors_are_named(tmp_path):
    original = write_tiny_checkpoint(tmp_path / "m")
    state = hf_names(original.state_dict())
    del state["bert.encoder.layer.1.attention.self.key.weight"]
    state["bert.encoder.layer.1.extra.weight"] = torch.zeros(1)
    lora.write_safetensors(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(lora.CheckpointError, match=r"missing tensors: layers\.1\.key\.weight.*"
                                                   r"unexpected: encoder\.layer\.1\.extra\.weight"):
        lora.load_checkpoint(tmp_path / "m")


@pytest.mark.parametrize("remove,message", [("config.json", "no config.json"),
                                            ("model.safetensors", "neither model.safetensors")])
def test_folder_lacking_files(tmp_path, remove, message):
    write_tiny_checkpoint(tmp_path / "m")
    (tmp_path / "m" / remove).unlink()
    with pytest.raises(lora.CheckpointError, match=message):
        lora.load_checkpoint(tmp_path / "m")


def test_corrupt_weights_are_a_checkpoint_error(tmp_path):
    write_tiny_checkpoint(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated download
    with pytest.raises(lora.CheckpointError, match="cannot read .*model.safetensors"):
        lora.load_checkpoint(tmp_path / "m")


def test_mean_pooling_ignores_padding():
    head = lora.ClassificationHead(4, 2, "mean", dropout=0.0)
    hidden = torch.tensor([[[1.0, 2, 3, 4], [3, 4, 5, 6], [100, 100, 100, 100]]])
    mask = torch.tensor([[True, True, False]])
    pooled = torch.tensor([[2.0, 3, 4, 5]])
    assert torch.allclose(head(hidden, mask), head.classifier(pooled))


def test_dropout_keeps_1_minus_p_and_rescales():
    torch.manual_seed(0)
    y = lora.dropout(torch.ones(200_000), 0.25, training=True)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.005
    assert torch.allclose(y[kept], torch.full_like(y[kept], 1 / 0.75))
    x = torch.randn(5)
    assert lora.dropout(x, 0.25, training=False) is x


def test_attention_equals_pytorchs_fused_kernel():
    """Our written-out attention with a -inf padding bias is F.scaled_dot_product_attention
    with a boolean mask, forward and backward."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]
    bias = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    ours = lora.attention(q, k, v, bias)
    grads = torch.autograd.grad(ours.sum(), (q, k, v))
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    fused_grads = torch.autograd.grad(fused.sum(), (q, k, v))
    assert torch.allclose(ours, fused, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, fused_grads))


def test_skipping_padding_changes_nothing(minilm_dir):
    """The fast path (linear layers on real tokens only) against the plain one (every padded
    position): the same hidden states on real tokens and the same LoRA gradients."""
    encoder, _ = lora.load_checkpoint(minilm_dir)
    lora.add_lora(encoder, ("query", "value"), rank=8, alpha=16, seed=0)
    for m in lora.lora_layers(encoder).values():
        torch.nn.init.normal_(m.B, std=0.02, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([11, 3, 7, 11, 5])
    mask = torch.arange(11)[None, :] < lengths[:, None]  # (5, 11), padding on the right
    ids = torch.randint(1000, 20000, (5, 11), generator=g) * mask
    types = (torch.arange(11)[None, :] >= 4).long() * mask
    results = {}
    for unpad in (True, False):
        encoder.unpad = unpad
        encoder.eval()  # no dropout, so both paths compute the same function
        hidden = encoder(ids, types, mask)
        loss = (hidden[mask] ** 2).mean()
        grads = torch.autograd.grad(loss, [p for p in encoder.parameters() if p.requires_grad])
        results[unpad] = hidden[mask].detach(), grads
    (h_fast, g_fast), (h_plain, g_plain) = results[True], results[False]
    assert (h_fast - h_plain).abs().max() < 1e-5
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_fast, g_plain))
    assert mask.sum() <= (1 - lora.PACK_ABOVE_PADDING) * mask.numel()  # so the fast path packs

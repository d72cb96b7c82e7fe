"""The LoRA layer, adding and removing adapters, merging them into the weights, attention and the head."""

import torch

import lora
from pretrained import checkpoint


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
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    encoder.eval()
    ids = torch.tensor([[2, 7, 8, 3, 0]])
    args = (ids, torch.zeros_like(ids), ids != 0)
    before = encoder(*args)
    lora.add_lora(encoder, ("query", "value"), rank=4, alpha=8,
                  A_init=lora.random_As(encoder, ("query", "value"), 4, 1))
    assert torch.equal(encoder(*args), before)  # B = 0
    names = sorted(lora.lora_layers(encoder))
    assert names == ["layers.0.query", "layers.0.value", "layers.1.query", "layers.1.value"]
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.{k}" for n in names for k in "AB"}


def test_merged_into_weights_equals_lora_forward_and_restores_exactly(tiny_model):
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    encoder.eval()
    lora.add_lora(encoder, ("query", "value"), rank=4, alpha=8,
                  A_init=lora.random_As(encoder, ("query", "value"), 4, 1))
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


def test_mean_pooling_ignores_padding():
    head = lora.ClassificationHead(4, 2, "mean", dropout=0.0)
    hidden = torch.tensor([[[1.0, 2, 3, 4], [3, 4, 5, 6], [100, 100, 100, 100]]])
    mask = torch.tensor([[True, True, False]])
    pooled = torch.tensor([[2.0, 3, 4, 5]])
    assert torch.allclose(head(hidden, mask), head.classifier(pooled))


def test_attention_equals_pytorchs_fused_kernel():
    """Our written-out attention with a -inf padding bias is F.scaled_dot_product_attention
    with a boolean mask, forward and backward."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.tensor([[True] * 5, [True, True, True, False, False]])  # (B, T)
    ours = lora.attention(q, k, v, lora.padding_bias(mask, q.dtype), torch.nn.Dropout(0.1).eval())
    grads = torch.autograd.grad(ours.sum(), (q, k, v))
    fused = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    fused_grads = torch.autograd.grad(fused.sum(), (q, k, v))
    assert torch.allclose(ours, fused, atol=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(grads, fused_grads))


def test_the_orthonormal_control_has_osrms_shape_and_scale_in_random_directions():
    g = torch.Generator().manual_seed(3)
    A = lora.random_A(8, 384, g, "orthonormal")
    assert A.shape == (8, 384) and A.dtype == torch.float32
    assert torch.allclose(A @ A.T, torch.eye(8), atol=1e-6)  # rows of norm 1, like OSRM's A
    assert torch.equal(A, lora.random_A(8, 384, torch.Generator().manual_seed(3), "orthonormal"))
    # random directions: a fixed unit vector has about r/d = 8/384 of its energy in A's rows
    shares = [lora.random_A(8, 384, g, "orthonormal")[:, 0].pow(2).sum().item() for _ in range(200)]
    assert abs(sum(shares) / len(shares) - 8 / 384) < 0.005
    # row norms of the other draws: Kaiming about sqrt(d/3)/sqrt(d) = 0.58, gaussian sqrt(d)/r
    kaiming = lora.random_A(8, 384, g, "kaiming").norm(dim=1).mean().item()
    gaussian = lora.random_A(8, 384, g, "gaussian").norm(dim=1).mean().item()
    assert abs(kaiming - 3 ** -0.5) < 0.03 and abs(gaussian - 384 ** 0.5 / 8) < 0.15

"""The speed tricks of speed/fastpath.py, each held to the plain computation it replaces."""

import torch

import lora
from conftest import TEST_DEVICE
from pretrained import checkpoint
from speed import fastpath


def test_keep_mask_keeps_1_minus_p_and_dropout_rescales():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    keep = fastpath.keep_mask(x, 0.25)
    assert keep.dtype == torch.bool and keep.shape == x.shape
    assert abs(keep.float().mean().item() - 0.75) < 0.003
    # p is rounded to a multiple of 1/65536: 0.1 keeps 1 - 6554/65536 of the values
    rate = fastpath.keep_mask(x, 0.1).float().mean().item()
    assert abs(rate - (1 - 6554 / 65536)) < 0.003
    y = fastpath.FastDropout(0.25)(x)
    assert torch.equal(y != 0, y == 1 / 0.75)  # every value is dropped or scaled by 1 / (1 - p)
    z = torch.randn(5)
    assert fastpath.FastDropout(0.25).eval()(z) is z and fastpath.FastDropout(0.0)(z) is z


def test_fast_dropout_replaces_every_dropout_but_keeps_rates_and_state(tiny_model):
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    lora.add_lora(encoder, ("query", "value"), rank=2, alpha=4, dropout=0.05)
    rates = {n: m.p for n, m in encoder.named_modules() if isinstance(m, torch.nn.Dropout)}
    state = encoder.state_dict()
    fast = fastpath.speed_up(encoder)
    swapped = {n: m for n, m in encoder.named_modules() if isinstance(m, torch.nn.Dropout)}
    assert all(type(m) is fastpath.FastDropout for m in swapped.values())
    assert {n: m.p for n, m in swapped.items()} == rates and rates["layers.0.query.lora_dropout"] == 0.05
    assert fast.state_dict().keys() == state.keys()  # the same parameters, under the same names
    assert all(fast.state_dict()[k] is not None and torch.equal(fast.state_dict()[k], v) for k, v in state.items())
    assert dict(fast.named_parameters())["layers.0.query.A"] is dict(encoder.named_parameters())["layers.0.query.A"]


def test_keep_mask_draws_differ_between_calls_and_follow_the_seed():
    x = torch.ones(1000)
    torch.manual_seed(3)
    a, b = fastpath.keep_mask(x, 0.5), fastpath.keep_mask(x, 0.5)
    torch.manual_seed(3)
    assert not torch.equal(a, b) and torch.equal(fastpath.keep_mask(x, 0.5), a)


def test_packing_pays_off_from_a_quarter_of_padding():
    mask = lambda n_real, T: torch.arange(T)[None, :] < torch.tensor([[n_real]]).T
    assert fastpath.pays_off(mask(3, 4))       # 25% padding
    assert not fastpath.pays_off(mask(4, 5))   # 20%


def test_layout_groups_similar_lengths_and_restores_the_order():
    mask = torch.arange(6)[None, :] < torch.tensor([6, 1, 3, 6, 2])[:, None]  # (5, 6)
    layout = fastpath.Layout(mask, lora.padding_bias, torch.float32, group_size=2)
    assert layout.real.tolist() == mask.reshape(-1).nonzero().squeeze(1).tolist()
    # groups by length: (1, 2), (3, 6), (6): each padded only to its own longest
    assert [tuple(bias.shape) for _, _, bias in layout.groups] == [(2, 1, 1, 2), (2, 1, 1, 6), (1, 1, 1, 6)]
    rows = torch.cat([rows for rows, _, _ in layout.groups])
    assert torch.equal(rows[layout.order], torch.arange(int(mask.sum())))


def test_packed_encoder_equals_the_plain_one_on_a_tiny_model(tiny_model):
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    encoder.eval().to(TEST_DEVICE)
    lengths = torch.tensor([9, 2, 5, 9, 3, 4, 9, 2, 6])
    mask = torch.arange(9)[None, :] < lengths[:, None]
    ids = torch.randint(5, 30, (9, 9), generator=torch.Generator().manual_seed(0)) * mask
    assert fastpath.pays_off(mask)
    ids, mask = ids.to(TEST_DEVICE), mask.to(TEST_DEVICE)
    with torch.no_grad():
        packed = fastpath.speed_up(encoder)(ids, torch.zeros_like(ids), mask)
        plain = encoder(ids, torch.zeros_like(ids), mask)
    assert (packed - plain)[mask].abs().max() < 1e-5
    assert (packed[~mask] == 0).all()  # the packed path leaves zeros at the padding


def test_packed_encoder_equals_the_plain_one_on_the_real_model(minilm_dir):
    """The fast path (linear layers on real tokens only) against the plain one (every padded
    position): the same hidden states on real tokens and the same LoRA gradients."""
    encoder, _ = checkpoint.load_checkpoint(minilm_dir)
    lora.add_lora(encoder, ("query", "value"), rank=8, alpha=16)
    for m in lora.lora_layers(encoder).values():
        torch.nn.init.normal_(m.B, std=0.02, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([11, 3, 7, 11, 5])
    mask = torch.arange(11)[None, :] < lengths[:, None]  # (5, 11), padding on the right
    ids = torch.randint(1000, 20000, (5, 11), generator=g) * mask
    types = (torch.arange(11)[None, :] >= 4).long() * mask
    assert fastpath.pays_off(mask)  # 37 real tokens of 55: the encoder packs this batch
    encoder.to(TEST_DEVICE)
    ids, types, mask = ids.to(TEST_DEVICE), types.to(TEST_DEVICE), mask.to(TEST_DEVICE)
    results = {}
    for fast, model in ((True, fastpath.speed_up(encoder)), (False, encoder)):
        model.eval()  # no dropout, so both paths compute the same function
        hidden = model(ids, types, mask)
        loss = (hidden[mask] ** 2).mean()
        grads = torch.autograd.grad(loss, [p for p in encoder.parameters() if p.requires_grad])
        results[fast] = hidden[mask].detach(), grads
    (h_fast, g_fast), (h_plain, g_plain) = results[True], results[False]
    assert (h_fast - h_plain).abs().max() < 1e-5
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_fast, g_plain))

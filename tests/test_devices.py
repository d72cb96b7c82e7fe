"""A run with --device cuda keeps its tensors on one device at each operation, checked on a
machine without a GPU: tests/fake_cuda.py runs everything on the CPU while it tracks what a
real run would have put on "cuda", and refuses an operation that mixes the two, as CUDA does.

Where each quantity lives (osrm_min.collect_statistics, lora.lora_state): the model, its
batches and its heads on the device; the layer statistics, subspaces, adapters as plain
tensors, task vectors, merges and Fisher diagonals on the CPU; a function that makes a tensor
takes the device of its inputs. Each test below failed on the code before this rule (commit
24ed3c6), where the statistics came back on the device and met CPU tensors."""

import pytest
import torch

import fisher
import lora
import merge
import osrm_min
from conftest import tiny_args, write_tiny_glue
from extensions import measures
from extensions.subspaces import (direction_share, layernorm_directions, own_task_subspace,
                                  random_null_basis, variant_init, without_direction)
from fake_cuda import DeviceMix, FakeCuda, on_cuda
from pretrained import checkpoint
from study.config import Config

TARGETS = ("query", "value")


def test_fake_cuda_refuses_a_mix_and_allows_what_cuda_allows():
    with FakeCuda():
        x = torch.randn(3, 4).to("cuda")
        w = torch.nn.Linear(4, 2).to("cuda")
        assert on_cuda(w(x)) and w.weight.device.type == "cuda" and not on_cuda(x.cpu())
        assert on_cuda(torch.zeros(2, device=x.device))  # made where its input lives
        with pytest.raises(DeviceMix):
            x @ torch.randn(4, 2)
        with pytest.raises(DeviceMix):
            torch.nn.Linear(4, 2)(x)
        x * torch.tensor(2.0)  # a 0-dim CPU tensor with CUDA ones, as CUDA allows
        x[torch.tensor([0, 2])]  # CPU indices
        torch.zeros(3, 4).copy_(x)  # copies across devices


@pytest.fixture
def on_device(tiny_model):
    """The tiny encoder and two tasks' batches on the pretend device, under FakeCuda."""
    with FakeCuda():
        encoder, _ = checkpoint.load_checkpoint(tiny_model)
        encoder.to("cuda")
        g = torch.Generator().manual_seed(0)
        batches = {t: [{"input_ids": torch.randint(5, encoder.config.vocab_size, (3, 7), generator=g).to("cuda"),
                        "token_type_ids": torch.zeros(3, 7, dtype=torch.long).to("cuda"),
                        "attention_mask": (torch.arange(7) < torch.tensor([[7], [5], [4]])).to("cuda")}]
                   for t in ("a", "b", "c")}
        names = list(lora.target_layers(encoder, TARGETS))
        stats = {t: osrm_min.collect_statistics(encoder, b, names) for t, b in batches.items()}
        yield encoder, batches, stats


def test_statistics_come_back_on_the_cpu(on_device):
    _, _, stats = on_device
    assert not any(on_cuda(s["S"]) or on_cuda(s["mu"]) for by in stats.values() for s in by.values())


def test_layernorm_directions_meet_osrm_subspaces_of_device_statistics(on_device):
    encoder, _, stats = on_device
    u = layernorm_directions(encoder, stats["a"])
    A = variant_init(stats, "a", "second_moment", u, 0, Config(rank=2))  # chosen away from u
    assert all(direction_share(A[n], u[n]) < 1e-6 for n in u)


def test_random_control_subspaces_meet_device_statistics(on_device):
    encoder, _, stats = on_device
    subspaces = {"second_moment": {t: osrm_min.osrm_init(stats, t, 2, "second_moment")
                                   for t in stats}}
    energy, _ = measures.describe_subspaces(stats, stats, subspaces,
                                            layernorm_directions(encoder, stats["a"]), 2, 0)
    assert {r["stat"] for r in energy} == {"second_moment", "random"}


def test_movement_of_an_adapter_trained_on_the_device(on_device):
    encoder, batches, stats = on_device
    A_start = lora.random_As(encoder, TARGETS, 2, seed=0)  # drawn on the CPU
    lora.add_lora(encoder, TARGETS, 2, 4, A_init=A_start)
    for m in lora.lora_layers(encoder).values():  # a step's worth of change
        m.A.data += 0.1
        m.B.data += 0.1
    state = lora.lora_state(encoder)
    lora.remove_lora(encoder)
    assert not any(on_cuda(v) for v in state.values())
    A_end = {k.removesuffix(".A"): v for k, v in state.items() if k.endswith(".A")}
    moved = measures.movement(A_start, A_end, stats, "a")
    assert 0 < moved["overlap"] < 1
    vectors = {t: {n: 2 * state[f"{n}.B"] @ state[f"{n}.A"] for n in stats[t]} for t in stats}
    assert osrm_min.interference(vectors, stats)[0][0] == pytest.approx(1.0)


@pytest.fixture
def device_S(on_device):
    """Two tasks' S of one layer and two tasks' mean inputs, moved to the pretend device."""
    _, _, stats = on_device
    with FakeCuda():
        yield ([stats[t]["layers.0.query"]["S"].to("cuda") for t in ("a", "b")],
               [stats[t]["layers.0.query"]["mu"].to("cuda") for t in ("b", "c")])


def test_without_direction_makes_its_identity_where_S_lives(device_S):
    (S, _), _ = device_S
    u = torch.nn.functional.normalize(torch.ones(S.shape[0], dtype=torch.float64), dim=0)
    assert on_cuda(without_direction(S, u))


def test_own_task_subspace_makes_its_ridge_where_S_lives(device_S):
    (S, S_b), _ = device_S
    assert on_cuda(own_task_subspace(S, S_b, 2))


def test_random_null_basis_moves_its_draw_to_the_null_space(device_S):
    _, mus = device_S
    A = random_null_basis(mus, 2, seed=0)  # osrm-mean-random
    assert on_cuda(A) and (A.double() @ torch.stack(mus).T).abs().max() < 1e-6  # A mu_j = 0


def test_fisher_merge_without_weights_on_device_tensors():
    with FakeCuda():
        deltas = [torch.randn(3, 4).to("cuda") for _ in range(2)]
        fishers = [torch.rand(3, 4).to("cuda") for _ in range(2)]
        merged = merge.fisher_merge(deltas, fishers)  # c = 1/T, made on the Fishers' device
        assert on_cuda(merged)


def test_fisher_diagonal_comes_back_beside_the_adapters(on_device):
    encoder, batches, _ = on_device
    with FakeCuda():
        lora.add_lora(encoder, TARGETS, 2, 4, A_init=lora.random_As(encoder, TARGETS, 2, 0))
        head = lora.ClassificationHead(encoder.config.hidden_size, 2, "cls",
                                       encoder.config.hidden_dropout_prob).to("cuda")
        one = [{k: v[:1] for k, v in batches["a"][0].items()}]
        F = fisher.fisher_diagonal(encoder, head, one, lora.lora_layers(encoder), "cuda")
        lora.remove_lora(encoder)
    assert F and not any(on_cuda(f) for f in F.values())


def test_a_tiny_run_on_the_device_with_every_init_and_merge(tmp_path, tiny_model):
    """The whole experiment with --device cuda (every init, every merge, the LayerNorm option),
    then again from what it saved: nothing mixes devices."""
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--device", "cuda", "--inits", ",".join(osrm_min.INITS),
                     "--merges", ",".join(merge.METHODS), "--osrm-skip-ln-direction",
                     "--regmean-alpha", "0.9", "--measure-samples", "8", "--fisher-samples", "2",
                     "--regmean-samples", "4", "--epochs", "1", "--train-samples", "8")
    with FakeCuda():
        assert osrm_min.main(args) == 0
        assert osrm_min.main(args) == 0  # the adapters loaded from disk meet the device too

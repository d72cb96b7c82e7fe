"""osrm-min's own additions (extensions.py, --inits osrm-own / osrm-mean-random / lora-gaussian,
--osrm-skip-ln-direction), each checked against its definition."""

import pytest
import torch
from test_osrm import random_second_moment

import data
import lora
from conftest import REAL_GLUE
from extensions import subspaces
from osrm_min import osrm_init, osrm_subspace
from pretrained import checkpoint
from pretrained import tokenization
from study.config import Config


def test_own_task_subspace_solves_the_generalised_eigenproblem():
    d, r, eps = 12, 3, 0.1
    S_own, S_others = random_second_moment(d, 40, 1), random_second_moment(d, 40, 2)
    M = S_others + eps * torch.trace(S_others) / d * torch.eye(d, dtype=torch.float64)
    A = subspaces.own_task_subspace(S_own, S_others, r, eps).double()
    assert torch.allclose(A @ A.T, torch.eye(r, dtype=torch.float64), atol=1e-6)
    # the top r generalised eigenvectors, found independently from M^-1 S_own
    mu, V = torch.linalg.eig(torch.linalg.solve(M, S_own))
    order = mu.real.argsort(descending=True)[:r]
    V, mu = V.real[:, order], mu.real[order]
    assert torch.allclose(S_own @ V, M @ V * mu, rtol=1e-8, atol=1e-10)  # S v = mu M v
    Q, _ = torch.linalg.qr(V)
    assert torch.allclose(A.T @ A, Q @ Q.T, atol=1e-5)  # the same row space


def test_own_task_subspace_maximises_own_over_others_on_a_worked_case():
    # diagonal statistics: the ratio own / (others + ridge) per coordinate decides; here
    # tr(S_others)/d = 1, so with eps = 0.1 the ridge is 0.1
    S_own = torch.diag(torch.tensor([8.0, 1.0, 6.0, 4.0], dtype=torch.float64))
    S_others = torch.diag(torch.tensor([1.0, 0.5, 2.4, 0.1], dtype=torch.float64))
    # ratios: 8/1.1 = 7.27, 1/0.6 = 1.67, 6/2.5 = 2.4, 4/0.2 = 20: the top two are coordinates 3, 0
    A = subspaces.own_task_subspace(S_own, S_others, 2, eps=0.1).double()
    projector = torch.diag(torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64))
    assert torch.allclose(A.T @ A, projector, atol=1e-6)
    # OSRM on the same statistics picks the others' two smallest: coordinates 3 and 1
    A_osrm = osrm_subspace([{"S": S_others}], 2).double()
    assert torch.allclose(A_osrm.T @ A_osrm, torch.diag(torch.tensor([0.0, 1.0, 0.0, 1.0],
                                                                     dtype=torch.float64)), atol=1e-6)


def test_random_null_basis_is_orthonormal_annihilates_the_means_and_depends_on_the_seed():
    g = torch.Generator().manual_seed(0)
    mus = [torch.randn(20, generator=g) for _ in range(3)]
    A = subspaces.random_null_basis(mus, 4, seed=1).double()
    assert torch.allclose(A @ A.T, torch.eye(4, dtype=torch.float64), atol=1e-6)
    assert (A @ torch.stack(mus).double().T).abs().max() < 1e-5
    B = subspaces.random_null_basis(mus, 4, seed=2).double()
    assert (A.T @ A - B.T @ B).abs().max() > 0.1  # another seed, another subspace
    # unlike the authors' basis (LAPACK's), it does not sit on the last coordinates
    A_code = osrm_subspace([{"mu": m} for m in mus], 4, statistic="mean").double()
    assert (A_code[:, -4:] ** 2).sum() / 4 > 0.5
    assert (A[:, -4:] ** 2).sum() / 4 < 0.5


def test_without_direction_keeps_the_subspace_away_from_u():
    d = 10
    S = random_second_moment(d, 30, 3)
    u = torch.linalg.eigh(S).eigenvectors[:, 0]  # the direction OSRM would take first
    A_plain = osrm_subspace([{"S": S}], 3).double()
    A_skip = osrm_subspace([{"S": subspaces.without_direction(S, u)}], 3).double()
    assert subspaces.direction_share(A_plain, u) > 0.99
    assert subspaces.direction_share(A_skip, u) < 1e-10
    # the rest of the choice is OSRM's on u's complement: the smallest of P S P there
    P = torch.eye(d, dtype=torch.float64) - torch.outer(u, u)
    values = torch.linalg.eigvalsh(P @ S @ P)  # one zero (along u), then the complement's
    assert torch.trace(A_skip @ S @ A_skip.T).item() == pytest.approx(values[1:4].sum().item(), rel=1e-6)


def test_lora_gaussian_draws_A_with_standard_deviation_one_over_r(tiny_model):
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    lora.add_lora(encoder, ("query",), rank=4, alpha=8, A_init=lora.random_As(encoder, ("query",), 4, 3, "gaussian"))
    A = torch.cat([m.A.detach().flatten() for m in lora.lora_layers(encoder).values()])
    assert A.std().item() == pytest.approx(1 / 4, rel=0.1)
    first = A.clone()
    lora.add_lora(encoder, ("query",), rank=4, alpha=8, A_init=lora.random_As(encoder, ("query",), 4, 3, "gaussian"))
    assert torch.equal(torch.cat([m.A.detach().flatten() for m in lora.lora_layers(encoder).values()]), first)
    lora.add_lora(encoder, ("query",), rank=4, alpha=8, A_init=lora.random_As(encoder, ("query",), 4, 3))  # Kaiming-uniform
    kaiming = torch.cat([m.A.detach().flatten() for m in lora.lora_layers(encoder).values()])
    assert kaiming.abs().max() <= 1 / encoder.config.hidden_size ** 0.5


def test_each_statistic_gives_its_subspace_the_paper_s_and_this_project_s():
    stats = {t: {"layer": {"S": random_second_moment(6, 20, i), "mu": torch.randn(6, generator=torch.Generator().manual_seed(i))}}
             for i, t in enumerate("abc")}
    others = [stats["b"]["layer"], stats["c"]["layer"]]
    assert torch.equal(osrm_init(stats, "a", 2, "second_moment")["layer"], osrm_subspace(others, 2))
    cfg = Config(rank=2, own_eps=0.3)
    assert torch.equal(subspaces.variant_init(stats, "a", "second_moment", None, 0, cfg)["layer"],
                       osrm_subspace(others, 2))
    own = subspaces.variant_init(stats, "a", "own", None, 0, cfg)["layer"]
    S_others = (others[0]["S"] + others[1]["S"]) / 2
    assert torch.allclose(own, subspaces.own_task_subspace(stats["a"]["layer"]["S"], S_others, 2, 0.3))
    random = subspaces.variant_init(stats, "a", "mean-random", None, 5, cfg)["layer"].double()
    assert (random @ torch.stack([o["mu"] for o in others]).double().T).abs().max() < 1e-5


@pytest.mark.skipif(not (REAL_GLUE / "SST-2" / "dev.tsv").exists(), reason=f"no GLUE data at {REAL_GLUE}")
def test_layernorm_direction_is_constant_over_real_inputs(minilm_dir):
    """Every query/value/ffn_in input of the default model is a LayerNorm output, so along u its
    value is the same for every token of every sentence: its spread is below 1e-5 of the
    inputs' size (root mean square norm), float32's rounding, where a random direction's is
    about 1/sqrt(d) of it."""
    encoder, _ = checkpoint.load_checkpoint(minilm_dir)
    tokenizer = tokenization.WordPieceTokenizer.from_dir(minilm_dir)
    dev, _ = data.load_split(data.TASKS["mrpc"], "dev", REAL_GLUE, limit=16)
    batch = data.make_batches(data.encode_examples(tokenizer, dev, 64), 16, pad_id=tokenizer.pad_id)
    inputs = {}
    hooks = [m.register_forward_hook(lambda m, x, y, n=n: inputs.__setitem__(n, x[0].detach()))
             for n, m in lora.target_layers(encoder, ("query", "value", "ffn_in")).items()]
    with torch.no_grad():
        encoder.eval()
        encoder(batch[0]["input_ids"], batch[0]["token_type_ids"], batch[0]["attention_mask"])
    for h in hooks:
        h.remove()
    u = subspaces.layernorm_directions(encoder, list(inputs))
    assert set(u) == set(inputs)  # every one of these layers reads a LayerNorm output
    real = batch[0]["attention_mask"].reshape(-1).bool()
    for name, x in inputs.items():
        H = x.reshape(-1, x.shape[-1])[real].double()  # (real tokens, d)
        size = H.pow(2).sum(1).mean().sqrt()
        assert (H @ u[name]).std() / size < 1e-5, name
        v = torch.randn(x.shape[-1], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        assert (H @ (v / v.norm())).std() / size > 1e-2  # a random direction is far from constant


def test_train_subset_holds_out_rows_that_no_training_row_repeats():
    rows = list(range(100))
    plain, none = data.train_subset("sst2", rows, 30, seed=4)
    assert none == []
    train, heldout = data.train_subset("sst2", rows, 30, seed=4, n_heldout=20)
    assert len(train) == 30 and len(heldout) == 20 and not set(train) & set(heldout)
    assert train == plain  # with room for both, the training rows are those of a plain run
    train_all, heldout_all = data.train_subset("sst2", rows, 0, seed=4, n_heldout=20)
    assert sorted(train_all + heldout_all) == rows and heldout_all == heldout

"""The OSRM statistics and subspace, checked against their definitions."""

import torch

import lora
from osrm_min import collect_statistics, osrm_init, osrm_subspace


def random_second_moment(d, n, seed):
    H = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return H.T @ H / n


def test_cov_subspace_minimises_the_energy_of_the_other_tasks():
    S = [random_second_moment(10, 30, s) for s in (1, 2)]
    A = osrm_subspace([{"S": s} for s in S], rank=3).double()
    assert torch.allclose(A @ A.T, torch.eye(3, dtype=torch.float64), atol=1e-6)  # orthonormal rows
    S_minus = S[0] + S[1]
    smallest = torch.linalg.eigvalsh(S_minus)[:3].sum()
    assert torch.allclose(torch.trace(A @ S_minus @ A.T), smallest, rtol=1e-5)
    # Ky Fan: no other orthonormal A does better
    for seed in range(5):
        Q, _ = torch.linalg.qr(torch.randn(10, 3, generator=torch.Generator().manual_seed(seed),
                                           dtype=torch.float64))
        assert torch.trace(Q.T @ S_minus @ Q) >= smallest


def test_mean_subspace_annihilates_the_other_tasks_means():
    g = torch.Generator().manual_seed(0)
    mus = [{"mu": torch.randn(8, generator=g, dtype=torch.float64)} for _ in range(3)]
    A = osrm_subspace(mus, rank=4, stat="mean").double()
    assert torch.allclose(A @ A.T, torch.eye(4, dtype=torch.float64), atol=1e-6)
    for m in mus:
        assert (A @ m["mu"]).abs().max() < 1e-6


def test_osrm_init_uses_only_the_other_tasks():
    stats = {t: {"layers.0.query": {"S": random_second_moment(6, 20, i)}}
             for i, t in enumerate(["sst2", "mrpc", "rte"])}
    A = osrm_init(stats, "sst2", rank=2, stat="cov")["layers.0.query"]
    expected = osrm_subspace([stats["mrpc"]["layers.0.query"], stats["rte"]["layers.0.query"]], 2)
    assert torch.equal(A, expected)


def test_statistics_exclude_padding(tiny_model):
    """A padded batch gives the same S and mu as the sequences fed one at a time, unpadded."""
    encoder, _ = lora.load_checkpoint(tiny_model)
    seqs = [[2, 7, 8, 9, 10, 3], [2, 11, 3], [2, 12, 13, 3]]
    padded = torch.tensor([s + [0] * (6 - len(s)) for s in seqs])
    batch = {"input_ids": padded, "token_type_ids": torch.zeros_like(padded),
             "attention_mask": padded != 0}
    singles = [{"input_ids": torch.tensor([s]), "token_type_ids": torch.zeros(1, len(s), dtype=torch.long),
                "attention_mask": torch.ones(1, len(s), dtype=torch.bool)} for s in seqs]
    names = ["layers.0.query", "layers.1.value"]
    together = collect_statistics(encoder, [batch], names)
    apart = collect_statistics(encoder, singles, names)
    for name in names:
        assert together[name]["n"] == apart[name]["n"] == 13
        assert torch.allclose(together[name]["S"], apart[name]["S"], atol=1e-6)
        assert torch.allclose(together[name]["mu"], apart[name]["mu"], atol=1e-6)


def test_statistics_equal_the_direct_computation(tiny_model):
    encoder, _ = lora.load_checkpoint(tiny_model)
    ids = torch.tensor([[2, 7, 8, 3], [2, 9, 3, 0]])
    mask = ids != 0
    seen = []
    handle = encoder.layers[1].query.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        encoder.eval()
        encoder(ids, torch.zeros_like(ids), mask)
    handle.remove()
    H = seen[0][mask].double()  # (7 real tokens, 32)
    stats = collect_statistics(encoder, [{"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                                          "attention_mask": mask}], ["layers.1.query"])
    assert torch.allclose(stats["layers.1.query"]["S"], H.T @ H / 7)
    assert torch.allclose(stats["layers.1.query"]["mu"], H.mean(0))

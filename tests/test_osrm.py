"""The OSRM statistics and subspace, checked against their definitions."""

from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from pretrained import checkpoint
import lora
from extensions.measures import subspace_energy
from osrm_min import collect_statistics, interference, osrm_init, osrm_post, osrm_subspace


def random_second_moment(d, n, seed):
    H = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return H.T @ H / n


def test_second_moment_subspace_on_a_worked_case():
    # S_{-t} = diag(5, 1, 4, 0.5, 3): the two directions of least energy are coordinates 1 and 3
    S = torch.diag(torch.tensor([5.0, 1.0, 4.0, 0.5, 3.0], dtype=torch.float64))
    A = osrm_subspace([{"S": S / 2}, {"S": S / 2}], rank=2).double()  # the sum of the others' S
    projector = torch.zeros(5, 5, dtype=torch.float64)
    projector[1, 1] = projector[3, 3] = 1.0
    assert torch.allclose(A.T @ A, projector, atol=1e-7)  # A's row space, whatever its basis
    assert torch.allclose(torch.trace(A @ S @ A.T), torch.tensor(1.5, dtype=torch.float64))


def test_second_moment_subspace_is_the_ky_fan_minimiser():
    """osrm_subspace's own A reaches the optimum of min tr(A S A^T) over A A^T = I: the sum of
    the r smallest eigenvalues; no other orthonormal A does better, and no small rotation of A
    does either."""
    S = [random_second_moment(10, 30, s) for s in (1, 2)]
    A = osrm_subspace([{"S": s} for s in S], rank=3).double()
    S_minus = S[0] + S[1]
    objective = lambda M: torch.trace(M @ S_minus @ M.T).item()
    assert torch.allclose(A @ A.T, torch.eye(3, dtype=torch.float64), atol=1e-6)  # orthonormal rows
    assert abs(objective(A) - torch.linalg.eigvalsh(S_minus)[:3].sum().item()) < 1e-5
    g = torch.Generator().manual_seed(0)
    for _ in range(20):  # random orthonormal r-frames
        Q, _ = torch.linalg.qr(torch.randn(10, 3, generator=g, dtype=torch.float64))
        assert objective(Q.T) > objective(A)
    for _ in range(20):  # small rotations of A itself: exp of a skew-symmetric generator
        K = 0.05 * torch.randn(10, 10, generator=g, dtype=torch.float64)
        R = torch.linalg.matrix_exp(K - K.T)
        assert objective(A @ R) > objective(A) - 1e-9


def test_mean_subspace_annihilates_the_other_tasks_means():
    g = torch.Generator().manual_seed(0)
    mus = [{"mu": torch.randn(8, generator=g, dtype=torch.float64)} for _ in range(3)]
    A = osrm_subspace(mus, rank=4, statistic="mean").double()
    assert torch.allclose(A @ A.T, torch.eye(4, dtype=torch.float64), atol=1e-6)
    for m in mus:
        assert (A @ m["mu"]).abs().max() < 1e-6


def test_osrm_init_uses_only_the_other_tasks():
    stats = {t: {"layers.0.query": {"S": random_second_moment(6, 20, i)}}
             for i, t in enumerate(["sst2", "mrpc", "rte"])}
    A = osrm_init(stats, "sst2", rank=2, statistic="second_moment")["layers.0.query"]
    expected = osrm_subspace([stats["mrpc"]["layers.0.query"], stats["rte"]["layers.0.query"]], 2)
    assert torch.equal(A, expected)


def test_statistics_exclude_padding(tiny_model):
    """A padded batch gives the same S and mu as the sequences fed one at a time, unpadded."""
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
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


def test_statistics_equal_the_direct_computation_on_a_padded_batch(tiny_model):
    """S and mu from the hooks equal H^T H / n and the mean of H, with H the real tokens' rows
    of the layer input in a plain forward pass, on a batch that is half padding."""
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    ids = torch.tensor([[2, 7, 8, 9, 10, 11, 12, 3], [2, 9, 3, 0, 0, 0, 0, 0], [2, 13, 14, 3, 0, 0, 0, 0]])
    mask = ids != 0
    seen = []
    handle = encoder.layers[1].query.register_forward_hook(lambda m, i, o: seen.append(i[0]))
    with torch.no_grad():
        encoder.eval()
        encoder(ids, torch.zeros_like(ids), mask)
    handle.remove()
    H = seen[0][mask].double()  # (15 real tokens, 32)
    stats = collect_statistics(encoder, [{"input_ids": ids, "token_type_ids": torch.zeros_like(ids),
                                          "attention_mask": mask}], ["layers.1.query"])
    assert stats["layers.1.query"]["n"] == 15
    assert torch.allclose(stats["layers.1.query"]["S"], H.T @ H / 15)
    assert torch.allclose(stats["layers.1.query"]["mu"], H.mean(0))


def test_merge_statistics_give_regmean_each_tasks_mean_gram(tiny_model):
    """Task b's rows are task a's ten times over: the same mean Gram X^T X / n (MergeLM's and
    RegMean's per-task average, the default), and with --regmean-grams sum ten times X^T X."""
    from study import config
    from osrm_min import Adapter, merge_statistics
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    lora.add_lora(encoder, ("query", "value"), rank=2, alpha=4,
                  A_init=lora.random_As(encoder, ("query", "value"), 2, 1))
    adapters = dict.fromkeys("ab", Adapter(lora.lora_state(encoder), head=None))
    lora.remove_lora(encoder)
    rows = [([2, 7, 8, 3], [0, 0, 0, 0], 0), ([2, 9, 3], [0, 0, 0], 1)]
    prepared = {"a": SimpleNamespace(train=rows, pad_id=0), "b": SimpleNamespace(train=rows * 10, pad_id=0)}
    cfg = config.Config(merges=("regmean",), targets=("query", "value"), rank=2, alpha=4.0,
                        batch_size=4)
    grams = merge_statistics(encoder, adapters, prepared, cfg)["regmean"]
    assert all(torch.allclose(grams[1][n], G, rtol=1e-12, atol=0) for n, G in grams[0].items())
    grams = merge_statistics(encoder, adapters, prepared, replace(cfg, regmean_grams="sum"))["regmean"]
    assert all(torch.allclose(grams[1][n], 10 * G, rtol=1e-12, atol=0) for n, G in grams[0].items())


def orthonormal_rows(r, d, seed):
    Q, _ = torch.linalg.qr(torch.randn(d, r, generator=torch.Generator().manual_seed(seed)))
    return Q.T  # (r, d), A A^T = I


def test_post_hoc_projection_is_the_dense_projection_onto_the_osrm_row_space():
    g = torch.Generator().manual_seed(0)
    A_osrm = orthonormal_rows(3, 10, seed=1)
    A, B = torch.randn(3, 10, generator=g), torch.randn(6, 3, generator=g)
    delta_w = 2.0 * B @ A  # s = 2
    projected = delta_w @ A_osrm.T @ A_osrm  # dW A_o^T A_o, the authors' post_OSRM
    # nothing left outside A_osrm's row space, and projecting again changes nothing
    assert (projected @ (torch.eye(10) - A_osrm.T @ A_osrm)).abs().max() < 1e-5
    assert torch.allclose(projected @ A_osrm.T @ A_osrm, projected, atol=1e-5)
    # the factored form used on real adapters: s B' A' with (A', B') = osrm_post(A, B, A_osrm)
    A_new, B_new = osrm_post(A, B, A_osrm)
    assert torch.equal(A_new, A_osrm)
    assert torch.allclose(2.0 * B_new @ A_new, projected, atol=1e-5)


def test_interference_is_zero_when_the_update_reads_nothing_of_the_data():
    # task j's inputs live in the first 4 coordinates; adapter t only reads the last 4
    g = torch.Generator().manual_seed(0)
    H_j = torch.cat([torch.randn(50, 4, generator=g), torch.zeros(50, 4)], 1).double()
    H_t = torch.randn(50, 8, generator=g).double()
    stats = {"t": {"l": {"S": H_t.T @ H_t / 50}}, "j": {"l": {"S": H_j.T @ H_j / 50}}}
    dW_t = torch.cat([torch.zeros(5, 4), torch.randn(5, 4, generator=g)], 1)
    dW_j = torch.randn(5, 8, generator=g)
    matrix = interference({"t": {"l": dW_t}, "j": {"l": dW_j}}, stats)
    assert matrix[0][1] == 0.0  # adapter t on task j's inputs
    # adapter j on task t's inputs, against t's own adapter there: the ratio of the two norms
    expected = torch.linalg.norm(dW_j.double() @ H_t.T) / torch.linalg.norm(dW_t.double() @ H_t.T)
    assert abs(matrix[1][0] - expected.item()) < 1e-10


def test_interference_equals_the_direct_computation_on_activations():
    g = torch.Generator().manual_seed(0)
    H = {task: {layer: torch.randn(n, 6, generator=g).double() for layer in ("l0", "l1")}
         for task, n in (("a", 20), ("b", 30))}
    dW = {task: {layer: torch.randn(4, 6, generator=g) for layer in ("l0", "l1")} for task in H}
    stats = {task: {layer: {"S": h.T @ h / len(h)} for layer, h in layers.items()}
             for task, layers in H.items()}
    norm = lambda t, j, layer: torch.linalg.norm(dW[t][layer].double() @ H[j][layer].T)
    direct = [[sum((norm(t, j, layer) / norm(j, j, layer)).item() for layer in ("l0", "l1")) / 2
               for j in ("a", "b")] for t in ("a", "b")]
    assert torch.allclose(torch.tensor(interference(dW, stats)), torch.tensor(direct), rtol=1e-10)


def test_subspace_energy_is_the_share_of_the_trace_that_A_reads():
    stats = {"a": {"l": {"S": torch.diag(torch.tensor([4.0, 1.0, 0.5], dtype=torch.float64))}},
             "b": {"l": {"S": torch.diag(torch.tensor([1.0, 4.0, 2.0], dtype=torch.float64))}}}
    A = {"l": torch.tensor([[1.0, 0.0, 0.0]])}  # reads the first coordinate only
    own, others = subspace_energy(A, stats, "a")
    assert abs(own - 4 / 5.5) < 1e-12 and abs(others - 1 / 7) < 1e-12


def test_task_vector_is_the_dense_update_of_the_adapter_in_the_encoder(tiny_model):
    from osrm_min import Adapter
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    lora.add_lora(encoder, ("query", "value"), rank=4, alpha=8,
                  A_init=lora.random_As(encoder, ("query", "value"), 4, 1))
    for m in lora.lora_layers(encoder).values():
        m.B.data.normal_(generator=torch.Generator().manual_seed(2))
    adapter = Adapter(lora.lora_state(encoder), head=None)
    in_encoder = lora.delta_weights(encoder)
    ours = adapter.task_vector(scale=8 / 4)
    assert list(ours) == list(in_encoder)  # same layers, same order (merging depends on it)
    assert all(torch.equal(ours[n], in_encoder[n]) for n in ours)


@pytest.mark.parametrize("num_labels", [2, 1])  # classification, and STS-B's regression
def test_fisher_diagonal_equals_finite_differences_on_the_tiny_model(tiny_model, num_labels):
    """F = sum_y p(y|x) (d log p(y|x) / dW)^2 (or (df/dW)^2), each derivative taken by central
    differences on the dense weight, in float64."""
    import fisher
    encoder, _ = checkpoint.load_checkpoint(tiny_model)
    lora.add_lora(encoder, ("query", "value"), rank=2, alpha=4,
                  A_init=lora.random_As(encoder, ("query", "value"), 2, 1))
    for m in lora.lora_layers(encoder).values():
        m.B.data.normal_(std=0.1, generator=torch.Generator().manual_seed(2))
    torch.manual_seed(3)
    head = lora.ClassificationHead(32, num_labels, "cls", 0.0, encoder.pooler)
    encoder.double(), head.double()
    ids = torch.tensor([[2, 7, 8, 9, 3]])
    batch = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": ids != 0}
    layers = lora.lora_layers(encoder)
    F = fisher.fisher_diagonal(encoder, head, [batch], layers)

    def outputs():
        with torch.no_grad():
            return head(encoder(ids, batch["token_type_ids"], batch["attention_mask"]),
                        batch["attention_mask"])[0]
    W = layers["layers.1.value"].weight
    for i, j in [(0, 0), (3, 17), (31, 5)]:
        old, h = W[i, j].item(), 1e-5
        W.data[i, j] = old + h
        up = outputs()
        W.data[i, j] = old - h
        down = outputs()
        W.data[i, j] = old
        if num_labels == 1:
            expected = ((up - down) / (2 * h)).pow(2).sum()
        else:
            p = outputs().softmax(-1)
            grad = (up.log_softmax(-1) - down.log_softmax(-1)) / (2 * h)
            expected = (p * grad ** 2).sum()
        assert F["layers.1.value"][i, j].item() == pytest.approx(expected.item(), rel=1e-5, abs=1e-12)


def test_movement_reads_the_row_space_before_and_after_training():
    from extensions.measures import movement
    stats = {"t": {"l": {"S": torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))}},
             "j": {"l": {"S": torch.eye(4, dtype=torch.float64)}}}
    start = {"l": torch.tensor([[1.0, 0.0, 0.0, 0.0]])}
    end = {"l": 5 * torch.tensor([[1.0, 1.0, 0.0, 0.0]]) / 2 ** 0.5}  # turned by 45 degrees, longer
    m = movement(start, end, stats, "t")
    # own energy: 4/10 along e1; along (e1 + e2)/sqrt(2), (4 + 3)/2 / 10 (the length does not count)
    assert m["own_start"] == pytest.approx(0.4) and m["own_end"] == pytest.approx(0.35)
    assert m["others_start"] == pytest.approx(0.25) and m["others_end"] == pytest.approx(0.25)
    assert m["overlap"] == pytest.approx(0.5)  # cos^2 of 45 degrees
    assert movement(start, start, stats, "t")["overlap"] == pytest.approx(1.0)

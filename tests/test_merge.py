"""Merging methods on hand-worked examples."""

import pytest
import torch

import merge

d1 = torch.tensor([4.0, -1.0, 2.0, 0.1])
d2 = torch.tensor([-1.0, -3.0, 3.0, 0.2])
d3 = torch.tensor([2.0, 5.0, -1.0, 0.3])


def test_task_arithmetic_is_lam_times_sum():
    # 0.5 * ([4, -1, 2, .1] + [-1, -3, 3, .2]) = 0.5 * [3, -4, 5, .3]
    assert torch.allclose(merge.task_arithmetic([d1, d2], 0.5), torch.tensor([1.5, -2.0, 2.5, 0.15]))


def test_average_is_task_arithmetic_with_one_over_T():
    assert torch.allclose(merge.average([d1, d2, d3]), (d1 + d2 + d3) / 3)


def test_trim_keeps_the_top_fraction_by_magnitude():
    assert torch.equal(merge.trim(d1, 0.5), torch.tensor([4.0, 0.0, 2.0, 0.0]))
    assert torch.equal(merge.trim(d3, 0.25), torch.tensor([0.0, 5.0, 0.0, 0.0]))
    assert torch.equal(merge.trim(d3, 0.0), torch.zeros(4))


def test_ties_worked_example():
    # trim to 2 of 4 entries: [4, 0, 2, 0], [0, -3, 3, 0], [2, 5, 0, 0]
    # elected signs: sign([6, 2, 5, 0]) = [+, +, +, 0]
    # disjoint mean: (4 + 2) / 2 = 3;  5 / 1 (the -3 disagrees);  (2 + 3) / 2 = 2.5;  nothing kept: 0
    merged = merge.ties([d1, d2, d3], lam=0.5, keep=0.5)
    assert torch.allclose(merged, 0.5 * torch.tensor([3.0, 5.0, 2.5, 0.0]))


def test_ties_divides_by_agreeing_count_not_T():
    a, b = torch.tensor([[2.0]]), torch.tensor([[-1.0]])
    assert torch.equal(merge.ties([a, a, b], lam=1.0, keep=1.0), torch.tensor([[2.0]]))


@pytest.mark.parametrize("method", ["ta", "avg", "ties"])
def test_merge_task_vectors_goes_layer_by_layer(method):
    tv1 = {"layers.0.query": d1.view(2, 2), "layers.0.value": d2.view(2, 2)}
    tv2 = {"layers.0.query": d3.view(2, 2), "layers.0.value": d1.view(2, 2)}
    merged = merge.merge_task_vectors([tv1, tv2], method, lam=0.7, keep=0.5)
    one = {"ta": lambda ds: merge.task_arithmetic(ds, 0.7), "avg": merge.average,
           "ties": lambda ds: merge.ties(ds, 0.7, 0.5)}[method]
    assert set(merged) == set(tv1)
    for name in tv1:
        assert torch.equal(merged[name], one([tv1[name], tv2[name]]))


def test_global_trim_keeps_the_top_fraction_of_the_whole_model():
    # 6 entries, keep = 0.5: the 3 largest of the whole vector are 4, 3 and 2, all in "a";
    # trimming per tensor would instead keep 4, 3 in "a" and 0.5 in "b"
    tv = {"a": torch.tensor([[4.0, -3.0], [2.0, 1.0]]), "b": torch.tensor([0.5, -0.4])}
    kept = merge.trim_global(tv, 0.5)
    assert torch.equal(kept["a"], torch.tensor([[4.0, -3.0], [2.0, 0.0]]))
    assert torch.equal(kept["b"], torch.zeros(2))
    assert torch.equal(merge.trim(tv["b"], 0.5), torch.tensor([0.5, 0.0]))


def test_global_ties_merges_the_globally_trimmed_vectors():
    tv1 = {"a": torch.tensor([4.0, -3.0, 2.0, 1.0]), "b": torch.tensor([0.5, -0.4])}
    tv2 = {"a": torch.tensor([-1.0, -1.0, 0.1, 0.1]), "b": torch.tensor([6.0, 0.3])}
    merged = merge.merge_task_vectors([tv1, tv2], "ties", lam=1.0, keep=0.5, scope="global")
    # kept: tv1 a [4, -3, 2, 0], b [0, 0]; tv2 a [-1, -1, 0, 0], b [6, 0]
    # signs a: [+, -, +, 0]: entry 0 averages 4 alone, entry 1 (-3 + -1) / 2, entry 2 is 2
    assert torch.equal(merged["a"], torch.tensor([4.0, -2.0, 2.0, 0.0]))
    assert torch.equal(merged["b"], torch.tensor([6.0, 0.0]))


def test_dare_drops_a_fraction_p_and_rescales_the_rest():
    delta = torch.linspace(1.0, 2.0, 100_000)
    out = merge.dare(delta, 0.3, torch.Generator().manual_seed(0))
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.7) < 0.01
    assert torch.allclose(out[kept], delta[kept] / 0.7)
    assert abs(out.mean().item() - delta.mean().item()) < 0.01  # unbiased in expectation
    assert torch.equal(merge.dare(delta, 0.0, torch.Generator().manual_seed(0)), delta)


def test_dare_is_seeded():
    tvs = [{"a": torch.randn(50, 50)}, {"a": torch.randn(50, 50)}]
    one = merge.merge_task_vectors(tvs, "dare-ta", lam=1.0, p=0.5, seed=3)
    again = merge.merge_task_vectors(tvs, "dare-ta", lam=1.0, p=0.5, seed=3)
    other = merge.merge_task_vectors(tvs, "dare-ta", lam=1.0, p=0.5, seed=4)
    assert torch.equal(one["a"], again["a"]) and not torch.equal(one["a"], other["a"])


@pytest.mark.parametrize("base", ["ta", "ties"])
def test_dare_with_p_zero_is_the_plain_method(base):
    tvs = [{"a": d1.view(2, 2)}, {"a": d3.view(2, 2)}]
    plain = merge.merge_task_vectors(tvs, base, lam=0.7, keep=0.5)
    assert torch.equal(merge.merge_task_vectors(tvs, f"dare-{base}", lam=0.7, keep=0.5, p=0.0)["a"],
                       plain["a"])


# The merges that read data: RegMean, Fisher merging; and EMR

def random_inputs(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_regmean_is_the_least_squares_merge_of_the_stacked_inputs():
    # min_W sum_t ||X_t W^T - X_t W_t^T||^2 over the stacked inputs, solved by lstsq
    W0 = random_inputs(4, 6, 0)
    X = [random_inputs(20, 6, 1), random_inputs(30, 6, 2)]
    dW = [random_inputs(4, 6, 3), random_inputs(4, 6, 4)]
    stacked_X = torch.cat(X)
    stacked_Y = torch.cat([x @ (W0 + d).T for x, d in zip(X, dW)])
    W_star = torch.linalg.lstsq(stacked_X, stacked_Y).solution.T
    merged = merge.regmean(dW, [x.T @ x for x in X], alpha=1.0)
    assert torch.allclose(W0 + merged, W_star, rtol=1e-6, atol=1e-9)


def test_regmean_with_equal_gram_matrices_is_the_average():
    G = random_inputs(10, 6, 0).T @ random_inputs(10, 6, 0)
    dW = [random_inputs(4, 6, s) for s in (1, 2, 3)]
    assert torch.allclose(merge.regmean(dW, [G, G, G], alpha=0.9), sum(dW) / 3, atol=1e-10)


def test_regmean_alpha_scales_the_off_diagonal_entries():
    X = [random_inputs(20, 5, 1), random_inputs(20, 5, 2)]
    G = [x.T @ x for x in X]
    dW = [random_inputs(3, 5, 3), random_inputs(3, 5, 4)]
    for alpha in (0.5, 0.9):
        scaled = [alpha * g + (1 - alpha) * torch.diag(torch.diag(g)) for g in G]
        direct = (dW[0] @ scaled[0] + dW[1] @ scaled[1]) @ torch.linalg.inv(scaled[0] + scaled[1])
        assert torch.allclose(merge.regmean(dW, G, alpha), direct, atol=1e-9)
    # alpha = 0 keeps only the diagonals: each input coordinate j averages the tasks' column j,
    # weighted by how much energy task t's inputs have there, G_t[j, j]
    d0, d1 = torch.diag(G[0]), torch.diag(G[1])
    assert torch.allclose(merge.regmean(dW, G, alpha=0.0), (dW[0] * d0 + dW[1] * d1) / (d0 + d1),
                          atol=1e-10)


def test_regmean_refuses_a_singular_sum():
    x = random_inputs(2, 6, 0)  # two inputs in six dimensions: X^T X has rank 2
    with pytest.raises(ValueError, match="singular"):
        merge.regmean([random_inputs(3, 6, 1)], [x.T @ x], alpha=1.0)


def test_fisher_merge_with_equal_fishers_is_the_average_and_with_disjoint_ones_picks():
    dW = [random_inputs(3, 4, 1), random_inputs(3, 4, 2)]
    F = random_inputs(3, 4, 3).abs()
    assert torch.allclose(merge.fisher_merge(dW, [F, F]), (dW[0] + dW[1]) / 2, atol=1e-10)
    first = (torch.arange(12).view(3, 4) % 2 == 0).double()  # one-hot per entry: task 0 or 1
    merged = merge.fisher_merge(dW, [first, 1 - first])
    assert torch.allclose(merged, torch.where(first.bool(), dW[0], dW[1]), atol=1e-10)


def test_emr_on_a_worked_example():
    d1 = torch.tensor([[1.0, -2.0, 3.0], [0.5, 1.0, -1.0]])
    d2 = torch.tensor([[2.0, 1.0, -1.0], [-1.5, 2.0, 2.0]])
    # signs of the sum [[3, -1, 2], [-1, 3, 1]]; per entry the largest agreeing magnitude
    elected, masks, rescalers = merge.emr([{"l": d1}, {"l": d2}])
    assert torch.equal(elected["l"], torch.tensor([[2.0, -2.0, 3.0], [-1.5, 2.0, 2.0]]))
    assert masks[0]["l"].tolist() == [[True, True, True], [False, True, False]]
    assert masks[1]["l"].tolist() == [[True, False, False], [True, True, True]]
    # sum |d1| = 8.5 over sum |mask_1 * elected| = 2 + 2 + 3 + 2 = 9; 9.5 over 7.5 for task 2
    assert rescalers == pytest.approx([8.5 / 9, 9.5 / 7.5])
    updates = merge.emr_updates([{"l": d1}, {"l": d2}])
    assert torch.allclose(updates[0]["l"], 8.5 / 9 * torch.tensor([[2.0, -2.0, 3.0], [0.0, 2.0, 0.0]]))

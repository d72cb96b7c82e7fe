"""Merging methods on hand-worked examples."""

import pytest
import torch

import merge
from osrm_min import regmean_grams

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


def test_trim_keeps_exactly_int_keep_n_entries_even_when_magnitudes_tie():
    # PEFT's magnitude_based_pruning: topk of int(0.5 * 4) = 2 entries, whichever of the tied 2s
    kept = merge.trim(torch.tensor([2.0, -2.0, 2.0, 1.0]), 0.5)
    assert (kept != 0).sum() == 2 and set(kept[kept != 0].abs().tolist()) == {2.0}


def test_ties_worked_example():
    # PEFT's ties with weights 0.5 (huggingface/peft, src/peft/utils/merge_utils.py), by hand:
    # trim to 2 of 4 entries: [4, 0, 2, 0], [0, -3, 3, 0], [2, 5, 0, 0]
    # elected signs: sign([6, 2, 5, 0]) = [+, +, +, 0]
    # disjoint mean: (4 + 2) / 2 = 3;  5 / 1 (the -3 disagrees);  (2 + 3) / 2 = 2.5;  nothing kept: 0
    merged = merge.ties([d1, d2, d3], lam=0.5, keep=0.5)
    assert torch.allclose(merged, 0.5 * torch.tensor([3.0, 5.0, 2.5, 0.0]))


def test_ties_divides_by_agreeing_count_not_T():
    a, b = torch.tensor([[2.0]]), torch.tensor([[-1.0]])
    assert torch.equal(merge.ties([a, a, b], lam=1.0, keep=1.0), torch.tensor([[2.0]]))


@pytest.mark.parametrize("deltas, keep, expected", [
    # dW_2 = -dW_1: every sum is 0, PEFT's `sum >= 0` elects +, each entry keeps its positive value
    ([d1, -d1], 1.0, [4.0, 1.0, 2.0, 0.1]),
    # trimmed to [4, 0, 2, 0] and [-4, 0, -2, 0]: + again; the entries nobody keeps stay 0
    ([d1, -d1], 0.5, [4.0, 0.0, 2.0, 0.0]),
    # 2 - 1 - 1 = 0: + is elected and only the 2 agrees
    ([torch.tensor([2.0]), torch.tensor([-1.0]), torch.tensor([-1.0])], 1.0, [2.0]),
])
def test_ties_elects_plus_where_the_trimmed_values_sum_to_zero(deltas, keep, expected):
    assert torch.equal(merge.ties(deltas, lam=1.0, keep=keep), torch.tensor(expected))


@pytest.mark.parametrize("method", ["ta", "avg", "ties"])
def test_merge_task_vectors_goes_layer_by_layer(method):
    tv1 = {"layers.0.query": d1.view(2, 2), "layers.0.value": d2.view(2, 2)}
    tv2 = {"layers.0.query": d3.view(2, 2), "layers.0.value": d1.view(2, 2)}
    merged = merge.merge_task_vectors([tv1, tv2], method, lam=0.7, settings=merge.MergeSettings(keep=0.5))
    one = {"ta": lambda ds: merge.task_arithmetic(ds, 0.7), "avg": merge.average,
           "ties": lambda ds: merge.ties(ds, 0.7, 0.5)}[method]
    assert set(merged) == set(tv1)
    for name in tv1:
        assert torch.equal(merged[name], one([tv1[name], tv2[name]]))


def test_global_trim_keeps_the_top_fraction_of_the_whole_model():
    # 6 entries, keep = 0.5: MergeLM's threshold is the int(6 * 0.5) = 3rd smallest magnitude,
    # 1, and the 4 entries at or above it are all in "a"; per tensor, "a" would keep 2 and "b" 1
    tv = [{"a": torch.tensor([[4.0, -3.0], [2.0, 1.0]]), "b": torch.tensor([0.5, -0.4])}]
    kept = merge.merge_task_vectors(tv, "ties", lam=1.0, settings=merge.MergeSettings(keep=0.5, scope="global"))  # one task
    assert torch.equal(kept["a"], torch.tensor([[4.0, -3.0], [2.0, 1.0]]))
    assert torch.equal(kept["b"], torch.zeros(2))
    assert torch.equal(merge.trim(tv[0]["b"], 0.5), torch.tensor([0.5, 0.0]))


@pytest.mark.parametrize("values, keep, kept", [
    # 10 distinct magnitudes, keep 0.2: threshold the int(10 * 0.8) = 8th smallest, 3 kept
    ([3.0, -2.5, 2.0, 1.5, 1.0, 0.5, 0.4, -0.3, 0.2, 0.1], 0.2, [3.0, -2.5, 2.0]),
    # the 8th smallest is a 2 tied with two others: all four at or above it are kept
    ([3.0, -2.0, 2.0, 2.0, 1.0, 0.5, 0.1, -0.1, 0.0, 0.0], 0.2, [3.0, -2.0, 2.0, 2.0]),
    # 3 entries, keep 0.2: the int(3 * 0.8) = 2nd smallest, so 2 kept (the TIES code keeps 1)
    ([1.0, -3.0, 2.0], 0.2, [-3.0, 2.0]),
    ([1.0, -3.0, 2.0], 1.0, [1.0, -3.0, 2.0]),
])
def test_global_trim_keeps_every_entry_at_or_above_mergelms_threshold(values, keep, kept):
    tv = [{"a": torch.tensor(values)}]
    merged = merge.merge_task_vectors(tv, "ties", lam=1.0, settings=merge.MergeSettings(keep=keep, scope="global"))["a"]
    assert merged[merged != 0].tolist() == kept


def test_global_ties_merges_the_globally_trimmed_vectors():
    # MergeLM's ties_merging by hand: 6 entries, keep = 0.5, so 4 kept per task
    tv1 = {"a": torch.tensor([4.0, -3.0, 2.0, 1.0]), "b": torch.tensor([0.5, -0.4])}
    tv2 = {"a": torch.tensor([-1.0, -1.0, 0.1, 0.1]), "b": torch.tensor([6.0, 0.3])}
    merged = merge.merge_task_vectors([tv1, tv2], "ties", lam=1.0, settings=merge.MergeSettings(keep=0.5, scope="global"))
    # kept: tv1 a [4, -3, 2, 1], b [0, 0]; tv2 a [-1, -1, 0, 0], b [6, 0.3]
    # signs a: [+, -, +, +], b: [+, +]: entry a0 averages 4 alone, a1 (-3 + -1) / 2
    assert torch.equal(merged["a"], torch.tensor([4.0, -2.0, 2.0, 1.0]))
    assert torch.equal(merged["b"], torch.tensor([6.0, 0.3]))


@pytest.mark.parametrize("first, second, expected", [
    # sums [0, -3, -4]: the elected signs are [0, -, -], the majority -, so entry 0 elects -
    # and keeps -1 (PEFT's per-tensor rule would elect + and keep 1)
    ([1.0, -2.0, -3.0], [-1.0, -1.0, -1.0], [-1.0, -1.5, -2.0]),
    # all cancelling: every sign 0, the majority 0 too, and MergeLM keeps nothing
    ([1.0, -2.0, 3.0], [-1.0, 2.0, -3.0], [0.0, 0.0, 0.0]),
])
def test_global_ties_elects_the_majority_sign_where_the_sum_is_zero(first, second, expected):
    tvs = [{"a": torch.tensor(first)}, {"a": torch.tensor(second)}]
    merged = merge.merge_task_vectors(tvs, "ties", lam=1.0, settings=merge.MergeSettings(keep=1.0, scope="global"))
    assert torch.equal(merged["a"], torch.tensor(expected))


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
    one = merge.merge_task_vectors(tvs, "dare-ta", lam=1.0, seed=3, settings=merge.MergeSettings(p=0.5))
    again = merge.merge_task_vectors(tvs, "dare-ta", lam=1.0, seed=3, settings=merge.MergeSettings(p=0.5))
    other = merge.merge_task_vectors(tvs, "dare-ta", lam=1.0, seed=4, settings=merge.MergeSettings(p=0.5))
    assert torch.equal(one["a"], again["a"]) and not torch.equal(one["a"], other["a"])


@pytest.mark.parametrize("base", ["ta", "ties"])
def test_dare_with_p_zero_is_the_plain_method(base):
    tvs = [{"a": d1.view(2, 2)}, {"a": d3.view(2, 2)}]
    plain = merge.merge_task_vectors(tvs, base, lam=0.7, settings=merge.MergeSettings(keep=0.5))
    assert torch.equal(merge.merge_task_vectors(tvs, f"dare-{base}", lam=0.7, settings=merge.MergeSettings(keep=0.5, p=0.0))["a"],
                       plain["a"])


# The merges that read data: RegMean, Fisher merging; and EMR

def random_inputs(n, d, seed):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_regmean_is_the_least_squares_merge_of_the_stacked_inputs():
    # min_W sum_t ||X_t W^T - X_t W_t^T||^2 over the stacked inputs, solved by lstsq: the
    # summed Grams X_t^T X_t weigh every row alike (the mean Grams weigh every task alike)
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


def test_regmean_weighs_tasks_by_their_mean_gram_not_their_token_count():
    # one input coordinate: task 1 has rows x = 1, 3 (G_1 = (1 + 9) / 2 = 5), task 2 one row
    # x = 2 (G_2 = 4); MergeLM's per-task means give (1 * 5 + 10 * 4) / (5 + 4) = 5, the sums
    # (G = 10 and 4) would give (10 + 40) / 14
    stats = [{"l": {"S": torch.tensor([[5.0]], dtype=torch.float64), "n": 2}},
             {"l": {"S": torch.tensor([[4.0]], dtype=torch.float64), "n": 1}}]
    dW = [torch.tensor([[1.0]], dtype=torch.float64), torch.tensor([[10.0]], dtype=torch.float64)]
    mean = [regmean_grams(s) for s in stats]
    assert merge.regmean(dW, [g["l"] for g in mean]).item() == pytest.approx(5.0, rel=1e-15)
    summed = [regmean_grams(s, "sum") for s in stats]
    assert merge.regmean(dW, [g["l"] for g in summed]).item() == pytest.approx(50 / 14, rel=1e-15)


def test_regmean_with_the_same_inputs_ten_times_is_still_the_average():
    # task 2's 300 rows are task 1's 30 rows ten times: the same mean Gram, so the average
    # (with the sums X^T X, task 2 would weigh ten times as much)
    X = random_inputs(30, 6, 0)
    stats = [{"l": {"S": x.T @ x / len(x), "n": len(x)}} for x in (X, X.repeat(10, 1))]
    dW = [random_inputs(4, 6, 1), random_inputs(4, 6, 2)]
    grams = [regmean_grams(s)["l"] for s in stats]
    assert torch.allclose(merge.regmean(dW, grams), (dW[0] + dW[1]) / 2, rtol=0, atol=1e-12)
    grams = [regmean_grams(s, "sum")["l"] for s in stats]
    assert torch.allclose(merge.regmean(dW, grams), (dW[0] + 10 * dW[1]) / 11, rtol=0, atol=1e-12)


EPS = 1e-6  # MergeLM's minimal_fisher_weight, added to every Fisher


def test_fisher_merge_with_equal_fishers_is_the_average_and_with_disjoint_ones_picks():
    dW = [random_inputs(3, 4, 1), random_inputs(3, 4, 2)]
    F = random_inputs(3, 4, 3).abs()
    assert torch.allclose(merge.fisher_merge(dW, [F, F]), (dW[0] + dW[1]) / 2, rtol=0, atol=1e-15)
    first = (torch.arange(12).view(3, 4) % 2 == 0).double()  # one-hot per entry: task 0 or 1
    merged = merge.fisher_merge(dW, [first, 1 - first])
    # ((1 + eps) dW_pick + eps dW_other) / (1 + 2 eps)
    pick, other = torch.where(first.bool(), dW[0], dW[1]), torch.where(first.bool(), dW[1], dW[0])
    expected = ((1 + EPS) * pick + EPS * other) / (1 + 2 * EPS)
    assert torch.allclose(merged, expected, rtol=0, atol=1e-15)


def fisher_per_layer(dW, F):
    return merge.fisher_merge(dW, F)  # each task weighs 1/T


def fisher_normalised(dW, F):
    return merge.merge_task_vectors([{"l": d} for d in dW], "fisher", statistics=[{"l": f} for f in F])["l"]


@pytest.mark.parametrize("merge_fn", [fisher_per_layer, fisher_normalised])
@pytest.mark.parametrize("scale", [0.0, 0.5e-12])
def test_fisher_merge_where_every_fisher_is_zero_or_tiny_is_the_mean(scale, merge_fn):
    # MergeLM: (F_t + eps) ~ eps for every task, so the weights are equal: the plain mean
    # (adding 1e-12 to the denominator only, Fishers of 0.5e-12 gave half of it, zeros gave 0)
    dW = [random_inputs(3, 4, 1), random_inputs(3, 4, 2)]
    F = [torch.full((3, 4), scale, dtype=torch.float64) for _ in dW]
    assert torch.allclose(merge_fn(dW, F), (dW[0] + dW[1]) / 2, rtol=0, atol=1e-15)


def test_fisher_merge_of_tiny_unequal_fishers_is_mergelms():
    # F = 1e-12 and 3e-12: ((1e-12 + eps) dW_1 + (3e-12 + eps) dW_2) / (4e-12 + 2 eps), about
    # the mean
    dW = [random_inputs(2, 2, 1), random_inputs(2, 2, 2)]
    F = [torch.full((2, 2), f, dtype=torch.float64) for f in (1e-12, 3e-12)]
    expected = ((1e-12 + EPS) * dW[0] + (3e-12 + EPS) * dW[1]) / (4e-12 + 2 * EPS)
    assert torch.allclose(merge.fisher_merge(dW, F), expected, rtol=0, atol=1e-15)


def test_fisher_normalisation_stops_a_uniformly_larger_fisher_from_dominating():
    # F_2 = 2 F_1 everywhere: unnormalised, task 2 weighs twice, (dW_1 + 2 dW_2) / 3; MergeLM's
    # normalize_fisher_weight divides each by its norm (5 and 10), c = [2/3, 1/3], and then
    # c_1 F_1 = c_2 F_2: the mean (up to eps)
    dW = [{"l": torch.tensor([[1.0, 4.0]], dtype=torch.float64)},
          {"l": torch.tensor([[7.0, -2.0]], dtype=torch.float64)}]
    F = [{"l": torch.tensor([[3.0, 4.0]], dtype=torch.float64)},
         {"l": torch.tensor([[6.0, 8.0]], dtype=torch.float64)}]
    merged = merge.merge_task_vectors(dW, "fisher", statistics=F)["l"]
    assert torch.allclose(merged, torch.tensor([[4.0, 1.0]], dtype=torch.float64), atol=1e-6)
    c = torch.tensor([1 / (5 + EPS), 1 / (10 + EPS)], dtype=torch.float64)
    c = c / c.sum()
    assert torch.allclose(merge.fisher_norm_weights(F), c, rtol=0, atol=1e-15)
    weights = [c[t] * (F[t]["l"] + EPS) for t in range(2)]
    expected = (weights[0] * dW[0]["l"] + weights[1] * dW[1]["l"]) / (weights[0] + weights[1])
    assert torch.allclose(merged, expected, rtol=0, atol=1e-14)
    plain = merge.merge_task_vectors(dW, "fisher", statistics=F, settings=merge.MergeSettings(fisher_normalize=False))["l"]
    assert torch.allclose(plain, torch.tensor([[5.0, 0.0]], dtype=torch.float64), atol=1e-6)


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


def test_emr_where_the_tasks_cancel_elects_the_negative_value():
    # dW_2 = -dW_1: every sum is 0, which the EMR code's `(sum > 0) * 2 - 1` counts as negative;
    # each entry elects its negative value, kept by the task that has it
    d1 = torch.tensor([[1.0, -2.0], [3.0, 0.5]])
    elected, masks, rescalers = merge.emr([{"l": d1}, {"l": -d1}])
    assert torch.equal(elected["l"], torch.tensor([[-1.0, -2.0], [-3.0, -0.5]]))
    assert masks[0]["l"].tolist() == [[False, True], [False, False]]
    assert masks[1]["l"].tolist() == [[True, False], [True, True]]
    # mean |dW_t| = 6.5 / 4 for both; mean |mask_t * elected| = 2 / 4 and 4.5 / 4
    assert rescalers == pytest.approx([6.5 / 2, 6.5 / 4.5], rel=1e-6)  # float32


def test_emr_rescaler_sums_per_tensor_means_as_the_emr_code():
    # layers of 2 and 4 entries; task 1 keeps all of "a" and one entry of "b":
    # (mean|a| + mean|b|) / (mean|mask a * elected a| + mean|mask b * elected b|)
    tv1 = {"a": torch.tensor([2.0, 2.0]), "b": torch.tensor([[1.0, -1.0], [1.0, 1.0]])}
    tv2 = {"a": torch.tensor([1.0, 1.0]), "b": torch.tensor([[-3.0, -3.0], [-3.0, -3.0]])}
    elected, masks, rescalers = merge.emr([tv1, tv2])
    assert elected["b"].tolist() == [[-3.0, -3.0], [-3.0, -3.0]]
    assert masks[0]["b"].tolist() == [[False, True], [False, False]]
    # task 1: (2 + 1) / (2 + 3 / 4) = 12 / 11 (the ratio of sums would be 8 / 7)
    assert rescalers[0] == pytest.approx(12 / 11, rel=1e-6)  # float32


def test_emr_keeps_float64_and_gives_a_zero_task_vector_a_zero_update():
    d1 = torch.tensor([[1.0, -3.0, 0.1]], dtype=torch.float64)
    zero = torch.zeros(1, 3, dtype=torch.float64)
    elected, masks, rescalers = merge.emr([{"l": d1}, {"l": d1 / 3}, {"l": zero}])
    # task 2's mean |dW| = 4.1 / 9 over the elected's 4.1 / 3: 1/3 in float64, and its update
    # d1 / 3 to float64's precision (a rescaler rounded to float32 is off by 3e-8)
    assert rescalers[1] == pytest.approx(1 / 3, rel=1e-15)
    assert rescalers[2] == 0.0  # no mask, no update (the EMR code's 0 / 0 = NaN)
    updates = merge.emr_updates([{"l": d1}, {"l": d1 / 3}, {"l": zero}])
    assert updates[1]["l"].dtype == torch.float64
    assert torch.allclose(updates[1]["l"], d1 / 3, rtol=1e-15, atol=0)
    assert torch.equal(updates[2]["l"], zero)


@pytest.mark.parametrize("method", ["ta", "avg", "ties", "dare-ties", "regmean", "fisher"])
def test_merges_keep_float64(method):
    tvs = [{"l": random_inputs(3, 4, s)} for s in (1, 2)]
    stats = {"regmean": [{"l": x.T @ x} for x in (random_inputs(9, 4, 3), random_inputs(9, 4, 4))],
             "fisher": [{"l": random_inputs(3, 4, s).abs()} for s in (5, 6)]}.get(method)
    merged = merge.merge_task_vectors(tvs, method, lam=0.5, statistics=stats)
    assert merged["l"].dtype == torch.float64

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

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
    merged = merge.ties([d1, d2, d3], lam=0.5, k=0.5)
    assert torch.allclose(merged, 0.5 * torch.tensor([3.0, 5.0, 2.5, 0.0]))


def test_ties_divides_by_agreeing_count_not_T():
    a, b = torch.tensor([[2.0]]), torch.tensor([[-1.0]])
    assert torch.equal(merge.ties([a, a, b], lam=1.0, k=1.0), torch.tensor([[2.0]]))


@pytest.mark.parametrize("method", ["ta", "avg", "ties"])
def test_merge_task_vectors_goes_layer_by_layer(method):
    tv1 = {"layers.0.query": d1.view(2, 2), "layers.0.value": d2.view(2, 2)}
    tv2 = {"layers.0.query": d3.view(2, 2), "layers.0.value": d1.view(2, 2)}
    merged = merge.merge_task_vectors([tv1, tv2], method, lam=0.7, k=0.5)
    one = {"ta": lambda ds: merge.task_arithmetic(ds, 0.7), "avg": merge.average,
           "ties": lambda ds: merge.ties(ds, 0.7, 0.5)}[method]
    assert set(merged) == set(tv1)
    for name in tv1:
        assert torch.equal(merged[name], one([tv1[name], tv2[name]]))

"""Carved splits (--carve-splits, osrm-min's own; extensions/carving.py), on small files
written here."""

import pytest
import torch

import data
from data import TASKS, DataError
from extensions import carving
from test_data import write


def write_qnli(folder, n, split="dev"):
    """A QNLI folder with only one split: n rows whose question is 'row i'."""
    rows = ["index\tquestion\tsentence\tlabel"]
    rows += [f"{i}\trow {i}\ta sentence\t{'entailment' if i % 2 else 'not_entailment'}" for i in range(n)]
    return write(folder / "QNLI" / f"{split}.tsv", "\n".join(rows) + "\n")


class RowTokenizer:
    """A stand-in tokenizer that encodes the text 'row i' as the single id i, so that the
    tests can see which rows ended up where."""
    pad_id = 0

    def encode(self, a, b, max_length):
        return [int(a.split()[1]) + 1], [0]  # +1: id 0 is padding


def row_ids(batches):
    return {int(i) - 1 for b in batches for i, keep in zip(b["input_ids"].flatten(), b["attention_mask"].flatten()) if keep}


def test_a_carved_split_is_seeded_disjoint_and_in_file_order():
    rows = list(range(100))
    carved, rest = carving.carve_split(rows, 30)
    assert (carved, rest) == carving.carve_split(rows, 30)  # seeded: the same for every run
    assert len(carved) == 30 and sorted(carved + rest) == rows and not set(carved) & set(rest)
    assert carved == sorted(carved) and rest == sorted(rest)  # file order kept
    with pytest.raises(DataError, match="carve between 1 and 99"):
        carving.carve_split(rows, 100)


def test_a_missing_split_is_an_error_unless_carving_is_asked_for(tmp_path):
    write_qnli(tmp_path, 10)
    with pytest.raises(DataError, match=r"missing .*QNLI/train.tsv.*--carve-splits N carves it"):
        carving.split_sources(TASKS["qnli"], tmp_path)
    paths, carved = carving.split_sources(TASKS["qnli"], tmp_path, carve=4)
    assert carved == "train" and paths["train"] == paths["dev"] == tmp_path / "QNLI" / "dev.tsv"
    (tmp_path / "QNLI" / "dev.tsv").rename(tmp_path / "QNLI" / "other.tsv")
    with pytest.raises(DataError, match=r"missing .*QNLI/train.tsv: the GLUE folder lacks qnli's train split$"):
        carving.split_sources(TASKS["qnli"], tmp_path, carve=4)  # nothing to carve from


@pytest.mark.parametrize("have", ["dev", "train"])
def test_carved_rows_are_scored_and_never_trained_on_or_held_out(tmp_path, have):
    write_qnli(tmp_path, 60, have)
    sampling = data.Sampling({"qnli": 20}, 32, 5, 8, heldout=10, carve=15, measure=6)
    prepared = data.prepare_tasks(["qnli"], tmp_path, RowTokenizer(), sampling, 7)["qnli"]
    assert prepared.carved == ("train" if have == "dev" else "dev")
    scored = row_ids(prepared.dev_batches)
    trained = {ids[0] - 1 for ids, _, _ in prepared.train}
    heldout = row_ids(prepared.heldout_batches)
    assert len(scored) == 15 and len(trained) == 20 and len(heldout) == 10
    assert not scored & trained and not scored & heldout and not trained & heldout
    assert scored == set(carving.carve_split(list(range(60)), 15)[0])  # the same rows for any seed
    measured = {ids[0] - 1 for ids, _, _ in prepared.measure}
    assert len(measured) == 6 and measured <= scored  # measured on rows nothing fit or trained on


def test_a_carve_keeps_each_question_in_one_of_scored_held_out_and_training_rows(tmp_path):
    """QNLI's dev file has several sentences per question: carved by row, a scored row's
    question would also be trained on. Carved by question, none is in two of the three."""
    rows = ["index\tquestion\tsentence\tlabel"]
    rows += [f"{i}\trow {i // 3}\tsentence {i}\t{'entailment' if i % 2 else 'not_entailment'}"
             for i in range(90)]  # 30 questions, 3 sentences each
    write(tmp_path / "QNLI" / "dev.tsv", "\n".join(rows) + "\n")
    for seed in (7, 8):
        sampling = data.Sampling({"qnli": 0}, 32, 5, 8, heldout=10, carve=15)
        prepared = data.prepare_tasks(["qnli"], tmp_path, RowTokenizer(), sampling, seed)["qnli"]
        scored = row_ids(prepared.dev_batches)  # question ids
        heldout = row_ids(prepared.heldout_batches)
        trained = {ids[0] - 1 for ids, _, _ in prepared.train}
        assert not scored & trained and not scored & heldout and not trained & heldout
        assert len(scored) == 5 and len(heldout) == 4  # whole questions: 15 rows, then 12 >= 10
        assert scored | heldout | trained == set(range(30))
    # a task that is not carved draws its rows as before, one by one
    assert data.train_subset("sst2", list(range(50)), 10, 3) == ([
        i for i in torch.randperm(50, generator=torch.Generator().manual_seed(3)).tolist()][:10], [])

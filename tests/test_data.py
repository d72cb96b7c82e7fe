"""GLUE tasks, the TSV reader and batching, on small files written here."""

from pathlib import Path

import pytest
import torch

from conftest import REAL_GLUE
from data import TASKS, DataError, Example, load_split, make_batches, parse_tasks
from study.config import find_data_dir


def write(path: Path, text: str, bom=False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


# tasks

def test_tasks_cover_glue():
    assert list(TASKS) == ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte"]
    assert TASKS["stsb"].num_labels == 1  # regression
    assert TASKS["mnli"].num_labels == 3
    assert TASKS["mnli"].dev_file == "dev_matched.tsv"
    assert TASKS["rte"].labels == ("entailment", "not_entailment")


def test_parse_tasks():
    assert parse_tasks("sst2,mrpc") == ["sst2", "mrpc"]
    assert parse_tasks(" SST-2 , sts-b,sst2") == ["sst2", "stsb"]  # folder spellings; duplicates dropped


def test_parse_tasks_lists_valid_names():
    with pytest.raises(DataError, match="unknown task 'foo'; valid tasks: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte"):
        parse_tasks("sst2,foo")


def test_find_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("GLUE_DIR", raising=False)
    with pytest.raises(DataError, match="GLUE_DIR"):
        find_data_dir(None)
    (tmp_path / "env").mkdir()
    monkeypatch.setenv("GLUE_DIR", str(tmp_path / "env"))
    assert find_data_dir(None) == tmp_path / "env"
    assert find_data_dir(str(tmp_path)) == tmp_path  # the argument wins over $GLUE_DIR
    with pytest.raises(DataError, match="does not exist"):
        find_data_dir(str(tmp_path / "nowhere"))


# reading GLUE files

def test_mrpc_with_bom(tmp_path):
    write(tmp_path / "MRPC/dev.tsv", "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
                                     "1\t1\t2\tHe said so.\tHe did say so.\n"
                                     "0\t3\t4\tA cat.\tA dog.\n", bom=True)
    examples, skipped = load_split(TASKS["mrpc"], "dev", tmp_path)
    assert examples == [Example("He said so.", "He did say so.", 1), Example("A cat.", "A dog.", 0)]
    assert skipped == 0


def test_cola_has_no_header_and_no_final_newline(tmp_path):
    write(tmp_path / "CoLA/dev.tsv", "gj04\t1\t\tThe sailors rode the breeze clear of the rocks.\n"
                                     "gj04\t0\t*\tThe more does Bill smoke.")
    examples, skipped = load_split(TASKS["cola"], "dev", tmp_path)
    assert [e.label for e in examples] == [1, 0]
    assert examples[1] == Example("The more does Bill smoke.", None, 0)


def test_quotes_are_text(tmp_path):
    # GLUE is read with QUOTE_NONE: a field that starts with " is not a quoted field
    write(tmp_path / "SST-2/dev.tsv", 'sentence\tlabel\n" a film that "works\t1\nit \'s "\t0\n')
    examples, _ = load_split(TASKS["sst2"], "dev", tmp_path)
    assert [e.text_a for e in examples] == ['" a film that "works', 'it \'s "']


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    write(tmp_path / "RTE/train.tsv", "index\tsentence1\tsentence2\tlabel\n"
                                      "0\tA.\tB.\tentailment\n"
                                      "1\tA.\tB.\tcontradiction\n"   # unknown label
                                      "2\tA.\tlabel\n"               # a field missing
                                      "3\tA.\tB.\tnot_entailment\r\n")  # CRLF is fine
    examples, skipped = load_split(TASKS["rte"], "train", tmp_path)
    assert [e.label for e in examples] == [0, 1]
    assert skipped == 2


def test_only_newline_ends_a_row(tmp_path):
    write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\nodd \r carriage return\t1\n")
    examples, _ = load_split(TASKS["sst2"], "dev", tmp_path)
    assert examples == [Example("odd \r carriage return", None, 1)]


def test_stsb_scores_are_floats(tmp_path):
    header = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    write(tmp_path / "STS-B/dev.tsv", header + "0\tg\tf\ty\t0\ts\ts\tA man.\tA person.\t4.2\n"
                                               "1\tg\tf\ty\t1\ts\ts\tA.\tB.\tnot-a-score\n")
    examples, skipped = load_split(TASKS["stsb"], "dev", tmp_path)
    assert examples == [Example("A man.", "A person.", 4.2)] and skipped == 1


def test_limit_keeps_first_usable_rows(tmp_path):
    write(tmp_path / "SST-2/train.tsv", "sentence\tlabel\nbad row\nA.\t1\nB.\t0\nC.\t1\n")
    examples, skipped = load_split(TASKS["sst2"], "train", tmp_path, limit=2)
    assert [e.text_a for e in examples] == ["A.", "B."] and skipped == 1


def test_missing_or_unusable_files(tmp_path):
    with pytest.raises(DataError, match="QNLI.train.tsv: the GLUE folder lacks qnli.s train split"):
        load_split(TASKS["qnli"], "train", tmp_path)
    write(tmp_path / "SST-2/dev.tsv", "sentence\tlabel\nonly one field\n")
    with pytest.raises(DataError, match="no usable rows"):
        load_split(TASKS["sst2"], "dev", tmp_path)


@pytest.mark.parametrize("name, split, rows", [
    ("sst2", "dev", 872), ("mrpc", "dev", 408), ("cola", "dev", 1043), ("rte", "train", 2490), ("stsb", "dev", 1500),
])
def test_real_glue_row_counts(name, split, rows):
    if not (REAL_GLUE / TASKS[name].folder).is_dir():
        pytest.skip(f"no GLUE copy at {REAL_GLUE}")
    examples, skipped = load_split(TASKS[name], split, REAL_GLUE)
    assert (len(examples), skipped) == (rows, 0)


def test_file_that_is_not_utf8(tmp_path):
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "dev.tsv").write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")  # Latin-1
    with pytest.raises(DataError, match="not UTF-8"):
        load_split(TASKS["sst2"], "dev", tmp_path)


# batching

def encoded_examples(lengths, regression=False):
    """Fake encoded examples whose input_ids are 1..n, so lengths are easy to read back."""
    return [(list(range(1, n + 1)), [0] * n, float(i) if regression else i % 2) for i, n in enumerate(lengths)]


def test_dynamic_padding():
    (batch,) = make_batches(encoded_examples([3, 5]), batch_size=2, pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0, 0], [1, 2, 3, 4, 5]]  # padded to the longest
    assert batch["attention_mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert batch["token_type_ids"].shape == (2, 5)
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1]


def test_regression_labels_are_float():
    (batch,) = make_batches(encoded_examples([2, 2], regression=True), batch_size=2)
    assert batch["labels"].dtype == torch.float32


def test_batches_keep_order_without_shuffle():
    batches = make_batches(encoded_examples([1, 2, 3, 4, 5]), batch_size=2)
    assert [b["input_ids"].shape for b in batches] == [(2, 2), (2, 4), (1, 5)]


def test_shuffle_is_seeded():
    data = encoded_examples(range(1, 41))
    first = [b["input_ids"].shape[1] for b in make_batches(data, 4, shuffle=True, seed=3)]
    again = [b["input_ids"].shape[1] for b in make_batches(data, 4, shuffle=True, seed=3)]
    other = [b["input_ids"].shape[1] for b in make_batches(data, 4, shuffle=True, seed=4)]
    assert first == again and first != other


def test_group_by_length_uses_every_example_once_with_less_padding():
    lengths = [(7 * i) % 61 + 1 for i in range(500)]  # lengths 1..61 in a scrambled order
    data = encoded_examples(lengths)
    grouped = make_batches(data, 8, shuffle=True, seed=0, group_by_length=True)
    plain = make_batches(data, 8, shuffle=True, seed=0)
    # every example appears once: compare the multiset of real lengths
    seen = sorted(n for b in grouped for n in b["attention_mask"].sum(1).tolist())
    assert seen == sorted(lengths)
    padding = lambda batches: sum((~b["attention_mask"]).sum().item() for b in batches)
    assert padding(grouped) < padding(plain) / 4
    again = make_batches(data, 8, shuffle=True, seed=0, group_by_length=True)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(grouped, again))


# what a constant prediction scores, and a fixed subset of dev

def test_constant_baseline_is_the_best_single_class():
    from data import constant_baseline
    assert constant_baseline(TASKS["sst2"], [1, 1, 0]) == pytest.approx(200 / 3)
    # MRPC: always 1 gives accuracy 1/2 and F1 2*2/(2*2+2) = 2/3, mean 58.33; always 0 gives 25
    assert constant_baseline(TASKS["mrpc"], [1, 1, 0, 0]) == pytest.approx(100 * (0.5 + 2 / 3) / 2)
    assert constant_baseline(TASKS["cola"], [1, 1, 0]) == 0.0  # Matthews of a constant
    assert constant_baseline(TASKS["stsb"], [0.5, 4.0, 2.5]) == 0.0  # correlation undefined: 0


def test_dev_subset_is_fixed_in_file_order_and_optional():
    from data import dev_subset
    rows = list(range(100))
    subset = dev_subset(rows, 30)
    assert len(subset) == 30 and subset == sorted(subset) and len(set(subset)) == 30
    assert dev_subset(rows, 30) == subset  # the same rows every time, whatever the run's seed
    assert dev_subset(rows, 0) == rows and dev_subset(rows, 100) == rows and dev_subset(rows, 500) == rows

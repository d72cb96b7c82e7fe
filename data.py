"""GLUE for osrm-min: the eight tasks, a TSV reader, each task's rows (load, sample, encode),
batching and the metrics: the data side of the paper's protocol. The 8 GLUE tasks (Wang et al.
2019, "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding"),
scored on the dev split (MNLI: matched), STS-B as regression, max length 128, and the metrics
x100: CoLA Matthews correlation; SST-2, MNLI, QNLI, RTE accuracy; MRPC and QQP the mean of
accuracy and F1; STS-B the mean of Pearson and Spearman correlation. The tokenizers that turn
the text into ids are in pretrained/tokenization.py.

    from data import TASKS, load_split, encode_examples, make_batches
    examples, n_skipped = load_split(TASKS["mrpc"], "dev", "path/to/glue")
"""

import hashlib
import pathlib
import re
from dataclasses import dataclass

import numpy as np
import torch

from extensions import carving  # this project's carved splits (it imports this module too)


class DataError(Exception):
    """A user's data problem; the CLI prints str(e) as a one-line error and exits non-zero."""


@dataclass(frozen=True)
class Task:
    name: str            # short name used on the command line, e.g. "sst2"
    folder: str          # folder inside the GLUE directory, e.g. "SST-2"
    train_file: str      # e.g. "train.tsv"
    dev_file: str        # e.g. "dev.tsv" (MNLI: "dev_matched.tsv")
    text_columns: tuple  # header names (or indices, for header-less CoLA) of sentence a [and b]
    label_column: object # header name or index of the label
    labels: tuple        # label strings in class-index order; () for STS-B regression
    metric: str          # "matthews" | "accuracy" | "acc_f1" | "pearson_spearman"
    header: bool = True  # False only for CoLA
    score_range: tuple = ()  # a regression target's documented range (STS-B: 0 to 5)

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels else 1  # regression has one output


# Columns and label orders as in GLUE's files and the usual GLUE processors.
TASKS = {t.name: t for t in [
    Task("cola", "CoLA", "train.tsv", "dev.tsv", (3,), 1, ("0", "1"), "matthews", header=False),
    Task("sst2", "SST-2", "train.tsv", "dev.tsv", ("sentence",), "label", ("0", "1"), "accuracy"),
    Task("mrpc", "MRPC", "train.tsv", "dev.tsv", ("#1 String", "#2 String"), "Quality", ("0", "1"), "acc_f1"),
    Task("stsb", "STS-B", "train.tsv", "dev.tsv", ("sentence1", "sentence2"), "score", (), "pearson_spearman",
         score_range=(0.0, 5.0)),
    Task("qqp", "QQP", "train.tsv", "dev.tsv", ("question1", "question2"), "is_duplicate", ("0", "1"), "acc_f1"),
    Task("mnli", "MNLI", "train.tsv", "dev_matched.tsv", ("sentence1", "sentence2"), "gold_label",
         ("contradiction", "entailment", "neutral"), "accuracy"),
    Task("qnli", "QNLI", "train.tsv", "dev.tsv", ("question", "sentence"), "label",
         ("entailment", "not_entailment"), "accuracy"),
    Task("rte", "RTE", "train.tsv", "dev.tsv", ("sentence1", "sentence2"), "label",
         ("entailment", "not_entailment"), "accuracy"),
]}


def task_key(text: str) -> str:
    """'SST-2 ' -> 'sst2': a task as named on the command line, in TASKS' spelling."""
    return text.strip().lower().replace("-", "")  # also the folder spellings SST-2, STS-B


def parse_tasks(spec: str) -> list:
    """'sst2,MRPC, sts-b' -> ['sst2', 'mrpc', 'stsb'] (order kept, duplicates dropped)."""
    names = []
    for part in spec.split(","):
        name = task_key(part)
        if not name or name in names:
            continue
        if name not in TASKS:
            raise DataError(f"unknown task '{part.strip()}'; valid tasks: {', '.join(TASKS)}")
        names.append(name)
    if not names:
        raise DataError(f"no task given; valid tasks: {', '.join(TASKS)}")
    return names


@dataclass
class Example:
    text_a: str
    text_b: object  # str, or None for single-sentence tasks
    label: object   # int class index, or float score for STS-B


def _column(header: list, col, path) -> int:
    """Index of a column given by name (files with a header) or by index (CoLA)."""
    if isinstance(col, int):
        return col
    if col not in header:
        raise DataError(f"{path}: no column '{col}' in the header; is this a GLUE file?")
    return header.index(col)


def _parse_label(task: Task, raw: str):
    """Class index or float score; None when the label is unknown, unparsable, or a score
    outside the task's documented range (STS-B's 7.5 or -3 is a damaged row, not a target)."""
    if not task.labels:
        # a plain decimal: float() also reads '1_0' (as 10), 'nan', 'inf' and other digits
        if not DECIMAL.fullmatch(raw):
            return None
        low, high = task.score_range
        return float(raw) if low <= float(raw) <= high else None
    return task.labels.index(raw) if raw in task.labels else None


DECIMAL = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def split_path(task: Task, split: str, data_dir) -> pathlib.Path:
    """The file of a task's train or dev split in the GLUE folder; a DataError if it is missing."""
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', not {split!r}")
    path = pathlib.Path(data_dir) / task.folder / (task.train_file if split == "train" else task.dev_file)
    if not path.is_file():
        raise DataError(f"missing {path}: the GLUE folder lacks {task.name}'s {split} split")
    return path


def load_split(task: Task, split: str, data_dir, limit=None, digest=None) -> tuple:
    """(examples, n_skipped) of a task's train or dev split. Rows with the wrong number of
    fields, an unknown label or an unparsable score are skipped and counted. `limit`: the first
    `limit` usable rows. `digest`: the SHA-256 the run fingerprinted the file by; bytes that
    differ (a file replaced since) are a DataError, never rows read under another's digest."""
    path = split_path(task, split, data_dir)
    raw = path.read_bytes()  # read once: what is parsed is what is checked
    if digest is not None and hashlib.sha256(raw).hexdigest() != digest:
        raise DataError(f"{path} changed after this run fingerprinted it; rerun the command "
                        f"(what was computed from the old file is not reused)")
    examples, n_skipped = [], 0
    # utf-8-sig drops the BOM that MRPC starts with; lines end at "\n" only, so that a stray
    # "\r" or other line-break character inside a sentence stays in its field. Fields are split
    # on tabs with no quote handling: quotes are text, as GLUE is read with csv.QUOTE_NONE.
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); is it a GLUE file?")
    lines = text.split("\n")
    if lines[-1] == "":  # the file's last line ends with a line break
        lines.pop()
    rows = (line.removesuffix("\r").split("\t") for line in lines)
    if task.header:
        header = next(rows, None)
        if header is None:
            raise DataError(f"{path} is empty")
        n_fields = len(header)
    else:
        header, n_fields = None, 4  # CoLA: source, label, original label, sentence
    text_cols = [_column(header, c, path) for c in task.text_columns]
    label_col = _column(header, task.label_column, path)
    for fields in rows:
        if limit is not None and len(examples) >= limit:
            break
        label = _parse_label(task, fields[label_col]) if len(fields) == n_fields else None
        if label is None:
            n_skipped += 1
            continue
        texts = [fields[c] for c in text_cols]
        examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    if not examples and limit != 0:
        raise DataError(f"{path}: no usable rows ({n_skipped} malformed)")
    return examples, n_skipped


# The paper's caps on the training rows of the two largest tasks
FULL_CAPS = {"qqp": 105_000, "mnli": 105_000}


def train_subset(name, rows, n, seed, n_heldout=0):
    """(training rows, held-out rows): a seeded random subset of n training rows, n = 0 for all
    of them (QQP and MNLI capped at 105k, as in the paper), and the last n_heldout rows of the
    same seeded order, which no training row is among (none when n_heldout = 0)."""
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed)).tolist()
    return subset_in_order(name, rows, order, n, n_heldout)


def subset_in_order(name, rows, order, n, n_heldout):
    """(the first n rows of `order`, its last n_heldout rows), as `train_subset` says."""
    usable = order[:len(order) - n_heldout]
    sample = [rows[i] for i in usable[:n or FULL_CAPS.get(name, len(rows))]]
    return sample, [rows[i] for i in order[len(order) - n_heldout:]] if n_heldout else []


def dev_subset(rows, n):
    """osrm-min's own (--dev-samples, for quick runs such as the lab's): n dev rows drawn with a
    fixed seed, the same for every --seeds, kept in file order; n = 0 (or n >= all): every row."""
    if not n or n >= len(rows):
        return rows
    order = torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))[:n]
    return [rows[i] for i in sorted(order.tolist())]


@dataclass(frozen=True)
class Sampling:
    """Which rows of each task are read and how they are cut (a run's: study/config.py's)."""
    train_rows: dict           # {task: training rows}, a seeded subset (0: all; train_subset)
    max_length: int = 128      # longest input in tokens; longer ones are truncated
    k: int = 100               # the first k training rows: the examples OSRM's statistics read
    eval_batch_size: int = 128
    heldout: int = 0           # training rows that nothing trains on (--select-on heldout)
    dev: int = 0               # scored dev rows, a fixed subset (0: all; dev_subset)
    carve: int = 0             # rows carved from the split a task has for one it lacks (0: off)
    measure: int = 0           # scored dev rows on which interference and energy are measured


@dataclass
class TaskData:
    """One task's rows for one seed, read, sampled and tokenised (`prepare_task`); each row
    (input_ids, token_type_ids, label)."""
    task: Task
    train: list               # the training rows, a seeded subset (train_subset)
    stats: list               # their first k: the examples OSRM's statistics read
    dev_batches: list         # the scored dev rows, in padded batches
    pad_id: int
    baseline: float           # what a constant prediction scores on them (constant_baseline)
    heldout_batches: list = None  # training rows that nothing trains on (sampling.heldout > 0)
    measure: list = None      # scored dev rows, to measure on (sampling.measure > 0)
    carved: str = None        # the split carved from the other's file (extensions/carving.py)


def load_task(task, data_dir, carve=0, digests=None):
    """Step 1, load: (training rows, dev rows, carved) of a task, each file's bytes checked
    against what the run fingerprinted it by (digests: {"train:sst2": SHA-256, ...}; load_split).
    carved: None, or which split this project's carving (carve > 0, extensions/carving.py)
    took from the other's file because the GLUE folder lacks it."""

    def read(split):
        rows, skipped = load_split(task, split, data_dir, digest=(digests or {}).get(f"{split}:{task.name}"))
        if skipped:
            print(f"note: {task.name} {split}: skipped {skipped} malformed rows")
        return rows

    carved = carving.split_sources(task, data_dir, carve)[1] if carve else None
    if carved:
        return *carving.carved_rows(carved, carve, read), carved
    return read("train"), read("dev"), None


def sample_rows(task, train, dev, sampling, seed, carved=None):
    """Step 2, sample: (training rows, held-out rows, scored dev rows) for one seed
    (train_subset; by whole questions where a split was carved; dev_subset)."""
    if sampling.heldout and sampling.heldout >= len(train):
        raise DataError(f"{task.name} has {len(train)} training rows; holding out "
                        f"{sampling.heldout} of them leaves none to train on: hold out fewer")
    subset = carving.train_subset_by_question if carved else train_subset
    sample, heldout = subset(task.name, train, sampling.train_rows[task.name], seed, sampling.heldout)
    return sample, heldout, dev_subset(dev, sampling.dev)


def prepare_task(task, data_dir, tokenizer, sampling, seed, digests=None):
    """One task's TaskData for one seed: load, sample, then step 3, encode (tokenise once and
    cut the rows that are scored into batches sorted by length, which cuts most of the padding
    and changes no metric)."""
    train, dev, carved = load_task(task, data_dir, sampling.carve, digests)
    sample, heldout, scored = sample_rows(task, train, dev, sampling, seed, carved)
    print(f"{task.name}: {len(sample)} of {len(train)} training rows, "
          + (f"{len(scored)} dev rows" if len(scored) == len(dev) else f"{len(scored)} of {len(dev)} dev rows")
          + (f", {len(heldout)} held-out rows" if heldout else "")
          + (carving.described(carved, len(dev), len(train)) if carved else ""))
    encode = lambda rows: encode_examples(tokenizer, rows, sampling.max_length)
    batches = lambda encoded: make_batches(encoded, sampling.eval_batch_size, group_by_length=True,
                                           pad_id=tokenizer.pad_id)
    encoded, encoded_dev = encode(sample), encode(scored)
    return TaskData(task, encoded, encoded[:sampling.k], batches(encoded_dev), tokenizer.pad_id,
                    constant_baseline(task, [ex.label for ex in scored]),
                    batches(encode(heldout)) if heldout else None,
                    dev_subset(encoded_dev, sampling.measure) if sampling.measure else None, carved)


def prepare_tasks(names, data_dir, tokenizer, sampling, seed, digests=None):
    """{task: TaskData} of every task, each read, sampled and tokenised once (`prepare_task`)."""
    return {name: prepare_task(TASKS[name], data_dir, tokenizer, sampling, seed, digests)
            for name in names}


def encode_examples(tokenizer, examples: list, max_length: int) -> list:
    """Tokenize once (a tokenizer of pretrained/tokenization.py): [(input_ids, token_type_ids, label), ...]."""
    return [(*tokenizer.encode(ex.text_a, ex.text_b, max_length), ex.label) for ex in examples]


def _collate(items: list, pad_id: int) -> dict:
    """Pad a batch to its longest sequence (dynamic padding)."""
    T = max(len(ids) for ids, _, _ in items)  # longest sequence in the batch
    pad = lambda seq, value: seq + [value] * (T - len(seq))
    labels = [label for _, _, label in items]
    is_regression = isinstance(labels[0], float)  # STS-B scores
    return {
        "input_ids": torch.tensor([pad(ids, pad_id) for ids, _, _ in items]),              # (B, T) long
        "token_type_ids": torch.tensor([pad(types, 0) for _, types, _ in items]),          # (B, T) long
        "attention_mask": torch.tensor([pad([True] * len(ids), False) for ids, _, _ in items]),  # True = real token
        "labels": torch.tensor(labels, dtype=torch.float32 if is_regression else torch.long),   # (B,)
    }


def make_batches(encoded: list, batch_size: int, shuffle=False, seed=0, group_by_length=False, pad_id=0) -> list:
    """Split encoded examples into padded batches (dicts of tensors).

    shuffle: a fresh permutation from torch.Generator seeded with `seed` (pass seed + epoch).
    group_by_length: within chunks of 50 batches, sort by length before cutting batches, so that
    each batch holds similar lengths and little padding; with shuffle, the batch order is then
    shuffled too, so that the model does not see short sequences first.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(encoded), generator=g).tolist() if shuffle else list(range(len(encoded)))
    if group_by_length:
        chunk = 50 * batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: len(encoded[i][0]))  # stable sort
            batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
        if shuffle:
            batches = [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
    else:
        batches = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
    return [_collate([encoded[i] for i in idx], pad_id) for idx in batches]


# Metrics, as GLUE reports them (sklearn / scipy definitions), written with numpy.

def accuracy(preds, labels) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1(preds, labels) -> float:
    """Binary F1 of class 1: 2 TP / (2 TP + FP + FN); 0.0 when there are no positives at all."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = np.sum((preds == 1) & (labels == 1))
    fp = np.sum((preds == 1) & (labels != 1))
    fn = np.sum((preds != 1) & (labels == 1))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom > 0 else 0.0  # sklearn's zero_division=0


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation from the confusion matrix, in sklearn's multiclass form (Gorodkin 2004):
    (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)), with c correct, s samples, t true and p predicted
    counts per class. 0.0 when either side is constant (denominator 0), as sklearn returns."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    t = np.array([np.sum(labels == k) for k in classes], dtype=np.float64)  # true count per class
    p = np.array([np.sum(preds == k) for k in classes], dtype=np.float64)   # predicted count per class
    c, s = float(np.sum(preds == labels)), float(len(labels))
    cov_tp = c * s - t @ p
    cov_pp = s * s - p @ p
    cov_tt = s * s - t @ t
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x, y) -> float:
    """Pearson correlation; 0.0 when either input is constant (scipy would return nan)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xm * xm) * np.sum(ym * ym))
    return float(np.sum(xm * ym) / denom) if denom > 0 else 0.0


def _average_ranks(x) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy.stats.rankdata, method='average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new_run = np.r_[True, xs[1:] != xs[:-1]]  # where a run of equal values starts
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], len(x)]          # exclusive
    mean_rank = (starts + 1 + ends) / 2       # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = mean_rank[np.cumsum(new_run) - 1]
    return ranks


def spearman(x, y) -> float:
    """Spearman correlation: Pearson correlation of the average ranks."""
    return pearson(_average_ranks(x), _average_ranks(y))


_METRIC_KEYS = {"matthews": ("matthews",), "accuracy": ("accuracy",), "acc_f1": ("accuracy", "f1"),
                "pearson_spearman": ("pearson", "spearman")}
_METRIC_FNS = {"matthews": matthews_corrcoef, "accuracy": accuracy, "f1": f1, "pearson": pearson,
               "spearman": spearman}


def metric_names(task: Task) -> tuple:
    """The metrics GLUE reports for a task, e.g. ("accuracy", "f1") for MRPC."""
    return _METRIC_KEYS[task.metric]


def glue_metrics(task: Task, preds, labels) -> dict:
    """The metrics GLUE reports for a task; preds are class indices (floats for STS-B)."""
    return {k: _METRIC_FNS[k](preds, labels) for k in _METRIC_KEYS[task.metric]}


def main_score(task: Task, metrics: dict) -> float:
    """The one number per task that the paper reports, x100: the metric,
    or the mean of the two for MRPC and QQP (accuracy, F1) and STS-B (Pearson, Spearman)."""
    keys = _METRIC_KEYS[task.metric]
    return 100 * sum(metrics[k] for k in keys) / len(keys)


def constant_baseline(task: Task, labels) -> float:
    """The best score x100 that one constant prediction gets on these labels, every class tried
    (F1 may reward the minority); 0 for STS-B, whose correlations a constant leaves undefined.
    A fine-tune should clear it by a margin."""
    if not task.labels:
        return 0.0
    return max(main_score(task, glue_metrics(task, [c] * len(labels), labels))
               for c in range(task.num_labels))

"""Carved splits: osrm-min's own, opt-in (--carve-splits N), for a GLUE folder that lacks one
split of a task, as the shared copy lacks QQP's dev file and QNLI's training file.

The split a task lacks is carved, with a fixed seed, from the one it has: N rows of it are
scored, and the rest is the training pool that training and held-out rows are drawn from. Rows
that share their first text (QNLI's question) are carved together, so that no question is both
scored and trained on.
"""

import pathlib

import torch

import data  # (data imports this module too: its names are looked up when called)

CARVE_SEED = 0  # carved rows are the same for every --seeds, as a real split would be
FIRST_TEXT = lambda example: example.text_a  # noqa: E731 (a carved task's rows group by it)


def split_sources(task, data_dir, carve=0):
    """({"train": path, "dev": path}, carved): the file each split is read from, and which
    split is carved (None, "train" or "dev"). A split the GLUE folder lacks is carved from the
    one it has when carve > 0, and both point at that file. Without carving, or with neither
    file, a missing split is a DataError that says what is missing."""
    folder = pathlib.Path(data_dir) / task.folder
    paths = {"train": folder / task.train_file, "dev": folder / task.dev_file}
    have = {split: path.is_file() for split, path in paths.items()}
    if all(have.values()):
        return paths, None
    missing = next(split for split in paths if not have[split])
    other = "dev" if missing == "train" else "train"
    if not carve or not have[other]:
        offer = (f"; --carve-splits N carves it, seeded, from {task.name}'s {other} split"
                 if have[other] else "")
        raise data.DataError(f"missing {paths[missing]}: the GLUE folder lacks {task.name}'s "
                        f"{missing} split{offer}")
    return {"train": paths[other], "dev": paths[other]}, missing


def carved_rows(carved, carve, read):
    """(training rows, dev rows) of a task whose split `carved` is missing: `carve_split` of
    the other split's rows (read(split) reads them), by first text."""
    dev, train = carve_split(read("dev" if carved == "train" else "train"), carve, FIRST_TEXT)
    return train, dev


def groups_in_seeded_order(rows, key, seed):
    """[[row index, ...] per group], groups of rows with the same key(row), in an order drawn
    with `seed` (key None: each row its own group)."""
    groups = {}
    for i, r in enumerate(rows):
        groups.setdefault(i if key is None else key(r), []).append(i)
    groups = list(groups.values())
    order = torch.randperm(len(groups), generator=torch.Generator().manual_seed(seed)).tolist()
    return [groups[g] for g in order]


def first_rows(groups, n):
    """The row indices of the first groups, whole, until n rows are reached (the last group
    may take it past n)."""
    out = []
    for g in groups:
        if len(out) >= n:
            break
        out += g
    return out


def carve_split(rows, n, key=None):
    """(carved, rest): n of `rows` drawn with a fixed seed, and every other row, both in file
    order, with no row in both. The carved rows are what gets scored: a dev set carved from
    training rows (QQP's partial copy), or the scored part of a dev set whose rest becomes the
    training pool (QNLI's); training and held-out rows are then drawn from `rest` only. With
    `key` (the run passes a row's first text: QNLI's question), rows of one key are carved
    together, so that no question is both scored and trained on: whole groups until n rows."""
    if not 0 < n < len(rows):
        raise data.DataError(f"--carve-splits {n}: the split to carve from has {len(rows)} rows; "
                        f"carve between 1 and {len(rows) - 1}")
    picked = set(first_rows(groups_in_seeded_order(rows, key, CARVE_SEED), n))
    if len(picked) == len(rows):
        raise data.DataError(f"--carve-splits {n}: carving whole questions leaves no row to train on; "
                        f"carve fewer")
    return ([r for i, r in enumerate(rows) if i in picked],
            [r for i, r in enumerate(rows) if i not in picked])


def train_subset_by_question(name, rows, n, seed, n_heldout=0):
    """data.train_subset for a carved task: the seeded order is of whole groups of one first
    text, so that no question is both held out and trained on (the held-out rows: the last
    groups, whole, at least n_heldout rows)."""
    groups = groups_in_seeded_order(rows, FIRST_TEXT, seed)
    heldout = first_rows(groups[::-1], n_heldout) if n_heldout else []  # the last groups
    kept = set(heldout)
    order = [i for g in groups for i in g if i not in kept] + heldout[::-1]
    return data.subset_in_order(name, rows, order, n, len(heldout))


def described(carved, n_dev, n_train):
    """Where a carved task's rows came from, for the line a run prints about each task."""
    if carved == "dev":
        return f" (dev carved, seeded, from the training file: {n_dev} rows)"
    return (f" (scored rows carved, seeded, from the dev file: {n_dev}; the other {n_train} "
            f"are the training pool)")

"""What a run keeps and says as it goes: the results dict that becomes results.json, and the
lines it prints beside each step of the experiment (osrm_min.run_seed). None of it is part
of the method; each function appends what a step measured, and says what a reader should
know at once (a fine-tune that did not learn, a loss that did not fall).
"""

import math
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch

from extensions.subspaces import direction_share
from study import resume, tables
from study.config import ExperimentError

LISTS = tables.LISTS  # the lists results.json holds, one entry per seed, init, task, ...


def new_results(cfg, inputs):
    """The empty results of a run with settings `cfg` and input fingerprints `inputs`."""
    return {"config": resume.plain(asdict(cfg)), "inputs": inputs, "versions": versions(),
            "baselines": {}, "carved": {}, **{key: [] for key in LISTS}}


def versions():
    """What computed the results: osrm-min's git commit where it runs from a git checkout
    ("+changes" if tracked files differ from it), else "unknown"; and torch's version."""
    root = Path(__file__).resolve().parents[1]
    git = lambda *args: subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                                       text=True, timeout=10)
    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
        commit = head.stdout.strip() + ("+changes" if changed else "") if head.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):  # no git here
        commit = "unknown"
    return {"osrm_min": commit, "torch": torch.__version__}


def data(results, prepared):
    """What a constant prediction scores on each task's dev rows, and which splits were carved."""
    results["baselines"] = {t: p["baseline"] for t, p in prepared.items()}
    results["carved"] = {t: p["carved"] for t, p in prepared.items() if p["carved"]}


def labels(results, prepared, seed):
    """The gold labels of the rows each split is scored on, in the order the score rows'
    predictions are saved (the batches'; held-out rows differ by seed)."""
    for t, p in prepared.items():
        for split in ("dev", "heldout"):
            if f"{split}_batches" in p:
                results["labels"].append({"seed": seed, "task": t, "split": split, "labels": [
                    y for b in p[f"{split}_batches"] for y in b["labels"].tolist()]})


def alone(results, init, task, row):
    """A task's score with its own adapter alone; a warning if it is not clearly above what a
    constant prediction scores (tables.clearly_above)."""
    score, baseline = row["score"], results["baselines"][task]
    print(f"{init}/{task}: individual score {score:.2f}")
    if not tables.clearly_above(score, baseline):
        print(f"warning: {init}/{task}: {score:.2f} on dev is not {tables.LEARNED_MARGIN:g} "
              f"points above a constant prediction's {baseline:.2f}; this fine-tune did not "
              f"clearly learn its task (more --train-samples may help)")


def training(results, seed, init, task, summary):
    """How an adapter's training loss moved (None: not trained here), with a warning if it did
    not fall."""
    if summary is None:
        return
    learned = summary["loss_end"] < summary["loss_start"]
    results["training"].append({"seed": seed, "init": init, "task": task, **summary,
                                "learned": learned})
    if not learned:
        print(f"warning: {init}/{task}: the training loss did not fall ({summary['loss_start']:.4f} "
              f"-> {summary['loss_end']:.4f}); this adapter learned nothing (try another --lr)")


def scores(results, rows):
    """Score rows (resume.result_row), on dev or on the held-out rows."""
    for r in rows:
        results["rows" if r["split"] == "dev" else "heldout_rows"].append(r)


def dev_scores(results, rows):
    """Record score rows and return {task: score} of those on dev."""
    scores(results, rows)
    return {r["task"]: r["score"] for r in rows if r["split"] == "dev"}


def subspaces(results, seed, rank, stats, measured, subspaces, u, energy):
    """What the reports and figures show about the subspaces, before any training: for each
    statistic's A_t (and, for scale, a random orthonormal A) the energy it reads of its own
    task and of the others' (`energy`: osrm_min.subspace_energy, handed in, as nothing in
    study/ imports the entry point) and its share of the LayerNorm direction u, on the rows
    that fitted A (`stats`, "fit") and on held-out rows (`measured`, "heldout", fair to every
    init: OSRM's A is fitted to the first); and the eigenvalues of S_{-t} in the middle
    adapted layer (the one LAB.md's exercise 3 discusses), whose `rank` smallest OSRM takes."""
    tasks = list(stats)
    g = torch.Generator().manual_seed(seed)
    random = {t: {n: torch.linalg.qr(torch.randn(s["S"].shape[0], rank, generator=g,
                                                 dtype=torch.float64).to(s["S"].device))[0].T
                  for n, s in stats[t].items()} for t in tasks}
    for name, by_task in {**subspaces, "random": random}.items():
        for t, A_init in by_task.items():
            shares = [direction_share(A, u[n]) for n, A in A_init.items() if n in u]
            for rows, on in (("fit", stats), ("heldout", measured)):
                own, others = energy(A_init, on, t)
                finite(f"the input energy that {name}'s A_t of {t} reads", own, others)
                results["subspace_energy"].append({
                    "seed": seed, "stat": name, "task": t, "rows": rows, "own": own,
                    "others": others, "ln_share": sum(shares) / len(shares) if shares else None})
    layers = list(stats[tasks[0]])
    layer = layers[(len(layers) - 1) // 2]  # of six layers' query and value: layers.2.value
    for t in tasks:
        S_others = sum(stats[j][layer]["S"] for j in tasks if j != t)
        results["spectrum"].append({"seed": seed, "task": t, "layer": layer, "rank": rank,
                                    "eigenvalues": torch.linalg.eigvalsh(S_others).tolist()})


def finite(what, *values):
    """An ExperimentError unless every value is a finite number: results.json holds no silent
    nan, and the report reads whatever the run writes."""
    if not all(math.isfinite(v) for v in values):
        raise ExperimentError(f"{what} is not a finite number; the run cannot measure it")


def interference(results, key, seed, init, tasks, matrix):
    """An interference matrix (osrm_min.interference) on the held-out rows ("interference") or
    on the statistics rows ("interference_fit"). Entry (t, j) divides by ||dW_j H_j||: if task
    j's own update is zero on its inputs (B never left 0, as with a learning rate or alpha so
    small that every step underflows), the ratio is undefined, and the run says so."""
    for j, task in enumerate(tasks):
        if not all(math.isfinite(row[j]) for row in matrix):
            raise ExperimentError(f"{init}/{task}: the adapter's update is zero on its own "
                                  f"task's inputs (its B never left 0), so its interference "
                                  f"ratios are undefined; a larger --lr or --alpha lets it train")
    results[key].append({"seed": seed, "init": init, "tasks": list(tasks), "matrix": matrix})


def movement(results, seed, init, task, moved):
    """How far training moved one adapter's A (osrm_min.movement)."""
    finite(f"{init}/{task}: how far training moved A", *moved.values())
    results["movement"].append({"seed": seed, "init": init, "task": task, **moved})


def merged(init, method, lam, by_task, since):
    """The line printed after a merge is scored."""
    print(f"{init}/{method}{'' if lam is None else f' (lambda {lam:g})'}: average "
          f"{tables.task_mean(by_task):.2f} ({time.time() - since:.0f}s)")


def merge_statistics(results, seed, init, names, seconds):
    """The time the data-aware merges' statistics took (none asked for: nothing)."""
    if names:
        results["merge_statistics_s"].append({"seed": seed, "init": init,
                                              "seconds": round(seconds, 2)})
        print(f"{init}: statistics for {', '.join(names)} in {seconds:.1f}s")


def extend(results, added):
    """Add what a worker process recorded for one seed and init (osrm_min.inits_job) to the
    run's results, after what came before, as one process would have appended it."""
    for key in LISTS:
        results[key].extend(added[key])

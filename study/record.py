"""What a run keeps: the results dict that becomes results.json. None of it is part of the
method: osrm_min.run hands `seed` what each seed's steps 1-2 made and `init` what each init
made, and they append it, with a warning where a reader should know at once (a fine-tune that
did not learn, a loss that did not fall).
"""

import math
import subprocess
from dataclasses import asdict
from pathlib import Path

import torch

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


def seed(results, seed):
    """What one seed's steps 1-2 made (osrm_min.run_seed's Seed): what a constant prediction
    scores on each task's dev rows and which splits were carved; the gold labels of the rows
    each split is scored on, in the order the score rows' predictions are saved (the batches';
    held-out rows differ by seed); what the subspaces read, and the spectrum."""
    results["baselines"] = {t: p.baseline for t, p in seed.prepared.items()}
    results["carved"] = {t: p.carved for t, p in seed.prepared.items() if p.carved}
    for t, p in seed.prepared.items():
        for split in ("dev", "heldout"):
            if getattr(p, f"{split}_batches") is not None:
                results["labels"].append({"seed": seed.seed, "task": t, "split": split, "labels": [
                    y for b in getattr(p, f"{split}_batches") for y in b["labels"].tolist()]})
    for e in seed.energy:
        finite(f"the input energy that {e['stat']}'s A_t of {e['task']} reads", e["own"], e["others"])
    results["subspace_energy"] += seed.energy
    results["spectrum"] += seed.spectrum


def init(results, seed, init, run):
    """What one init of one seed made (osrm_min.run_init's InitRun), with a warning for an
    adapter whose training loss did not fall or whose score is not clearly above a constant
    prediction's (tables.clearly_above)."""
    for task, summary in run.training.items():
        if summary is not None:
            training(results, seed, init, task, summary)
    for task, moved in run.movement.items():
        finite(f"{init}/{task}: how far training moved A", *moved.values())
        results["movement"].append({"seed": seed, "init": init, "task": task, **moved})
    for r in run.rows:
        results["rows" if r["split"] == "dev" else "heldout_rows"].append(r)
        if r["merge"] == "none" and r["split"] == "dev":
            alone(results, init, r["task"], r["score"])
    names, seconds = run.merge_statistics
    if names:
        results["merge_statistics_s"].append({"seed": seed, "init": init,
                                              "seconds": round(seconds, 2)})
    for key, matrix in run.interference.items():
        interference(results, key, seed, init, results["config"]["tasks"], matrix)


def alone(results, init, task, score):
    """A warning if a task's score with its own adapter alone is not clearly above what a
    constant prediction scores (tables.clearly_above)."""
    baseline = results["baselines"][task]
    if not tables.clearly_above(score, baseline):
        print(f"warning: {init}/{task}: {score:.2f} on dev is not {tables.LEARNED_MARGIN:g} "
              f"points above a constant prediction's {baseline:.2f}; this fine-tune did not "
              f"clearly learn its task (more --train-samples may help)")


def training(results, seed, init, task, summary):
    """How an adapter's training loss moved, with a warning if it did not fall."""
    learned = summary["loss_end"] < summary["loss_start"]
    results["training"].append({"seed": seed, "init": init, "task": task, **summary,
                                "learned": learned})
    if not learned:
        print(f"warning: {init}/{task}: the training loss did not fall ({summary['loss_start']:.4f} "
              f"-> {summary['loss_end']:.4f}); this adapter learned nothing (try another --lr)")


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



"""What a run keeps and says as it goes: the results dict that becomes results.json, and the
lines it prints beside each step of the experiment (osrm_min.run_seed). None of it is part
of the method; each function appends what a step measured, and says what a reader should
know at once (a fine-tune that did not learn, a loss that did not fall).
"""

import time
from dataclasses import asdict

from study import report, resume

LISTS = report.LISTS  # the lists results.json holds, one entry per seed, init, task, ...


def new_results(cfg, inputs):
    """The empty results of a run with settings `cfg` and input fingerprints `inputs`."""
    return {"config": resume.plain(asdict(cfg)), "inputs": inputs, "baselines": {},
            "carved": {}, **{key: [] for key in LISTS}}


def data(results, prepared):
    """What a constant prediction scores on each task's dev rows, and which splits were carved."""
    results["baselines"] = {t: p["baseline"] for t, p in prepared.items()}
    results["carved"] = {t: p["carved"] for t, p in prepared.items() if p["carved"]}


def alone(results, init, task, row):
    """A task's score with its own adapter alone; a warning if it is not clearly above what a
    constant prediction scores (report.clearly_above)."""
    score, baseline = row["score"], results["baselines"][task]
    print(f"{init}/{task}: individual score {score:.2f}")
    if not report.clearly_above(score, baseline):
        print(f"warning: {init}/{task}: {score:.2f} on dev is not {report.LEARNED_MARGIN:g} "
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


def merged(init, method, lam, by_task, since):
    """The line printed after a merge is scored."""
    print(f"{init}/{method}{'' if lam is None else f' (lambda {lam:g})'}: average "
          f"{report.task_mean(by_task):.2f} ({time.time() - since:.0f}s)")


def merge_statistics(results, seed, init, names, seconds):
    """The time the data-aware merges' statistics took (none asked for: nothing)."""
    if names:
        results["merge_statistics_s"].append({"seed": seed, "init": init,
                                              "seconds": round(seconds, 2)})
        print(f"{init}: statistics for {', '.join(names)} in {seconds:.1f}s")

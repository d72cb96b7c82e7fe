"""What lets a run stop and resume without losing or mixing anything: the trained adapters and
the computed scores saved under the output folder, each reused only while the settings that
produced it are unchanged, and files written atomically (whole, or not at all).

    <out>/adapters/<init>-<task>-seed<seed>.pt   one trained adapter: its settings, A and B, head
    <out>/evaluations.json                       every score computed so far, with its settings

None of this is part of the method; osrm_min.py asks `Store` for an adapter or a score before
computing it, and hands it what it computed.
"""

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from config import ExperimentError

# Everything that shapes one trained adapter; a saved adapter is reused only if all match.
ADAPTER_KEYS = ("model", "data_dir", "full", "rank", "alpha", "targets", "lora_dropout", "lr",
                "epochs", "batch_size", "train_samples", "max_length", "group_by_length",
                "weight_decay", "warmup", "max_grad_norm", "seed", "pooling")
OSRM_KEYS = ("osrm_samples",)  # an OSRM A_t also depends on the other tasks
# Settings that say which evaluations a run makes, not what any one of them scores
WORK_KEYS = ("seeds", "seed", "inits", "merges", "lams", "lam_ta", "lam_ties", "out", "device",
             "eval_batch_size")


def save_atomic(obj, path):
    tmp = Path(f"{path}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def write_text_atomic(text, path):
    tmp = Path(f"{path}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(obj, path):
    write_text_atomic(json.dumps(obj, indent=1), path)


def check_writable(out):
    """Make the output folder, or say in one line why it cannot be written."""
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
        probe = Path(out) / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise ExperimentError(f"--out {out} is not writable ({e.strerror}); choose another folder")


def plain(obj):
    """Lists, not tuples: the form a setting has when it is read back from JSON."""
    return json.loads(json.dumps(obj))


def result_row(seed, init, merge_method, lam, task, score, metrics):
    """One row of results.json: a task's score under one init and one merge ("none": alone)."""
    return {"seed": seed, "init": init, "merge": merge_method, "lambda": lam, "task": task,
            "score": score, "metrics": metrics}


class Store:
    """The adapters and scores of earlier runs into the same output folder."""

    def __init__(self, cfg):
        self.out = Path(cfg.out)
        (self.out / "adapters").mkdir(parents=True, exist_ok=True)
        self.scores = Evaluations(self.out / "evaluations.json", cfg)

    def adapter_path(self, init, task, seed):
        return self.out / "adapters" / f"{init}-{task}-seed{seed}.pt"

    @staticmethod
    def adapter_settings(cfg, task, init, uses_osrm):
        """The settings saved with an adapter; a rerun reuses the adapter only if they match."""
        d = {k: getattr(cfg, k) for k in ADAPTER_KEYS}
        d.update(task=task, init=init)
        if uses_osrm:
            d.update({k: getattr(cfg, k) for k in OSRM_KEYS},
                     other_tasks=sorted(set(cfg.tasks) - {task}))
        return plain(d)

    def load_adapter(self, cfg, task, init, uses_osrm):
        """(lora state, head state) saved earlier with the same settings, or None."""
        path = self.adapter_path(init, task, cfg.seed)
        if not path.exists():
            return None
        try:
            saved = torch.load(path, map_location=cfg.device, weights_only=True)
        except Exception as e:  # a truncated or foreign file: say so and retrain, never crash
            print(f"note: cannot read {path} ({type(e).__name__}); training again")
            return None
        if saved.get("config") != self.adapter_settings(cfg, task, init, uses_osrm):
            print(f"{init}/{task}: settings changed since {path} was saved; training again")
            return None
        print(f"{init}/{task}: loaded the adapter trained earlier ({path})")
        return saved["lora"], saved["head"]

    def save_adapter(self, cfg, task, init, uses_osrm, lora_state, head_state):
        save_atomic({"config": self.adapter_settings(cfg, task, init, uses_osrm),
                     "lora": lora_state, "head": head_state},
                    self.adapter_path(init, task, cfg.seed))


class Evaluations:
    """Scores computed earlier with the same settings, kept in <out>/evaluations.json, so that
    an interrupted run resumes its evaluations (merges at every lambda), not only its training.

    A row is reused only if every setting that shapes a score matches (all but WORK_KEYS) and
    its seed, init, merge, lambda and task are the ones asked for.
    """

    def __init__(self, path, cfg):
        self.path = Path(path)
        self.settings = plain({k: v for k, v in asdict(cfg).items() if k not in WORK_KEYS})
        saved = {}
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text())
            except ValueError:
                print(f"note: cannot read {self.path}; evaluating again")
        same = saved.get("settings") == self.settings
        self.rows = {self.key(r): r for r in saved.get("rows", [])} if same else {}
        if self.rows:
            print(f"note: reusing {len(self.rows)} scores of an earlier run with the same "
                  f"settings ({self.path})")

    @staticmethod
    def key(row):
        return (row["seed"], row["init"], row["merge"], row["lambda"], row["task"])

    def get(self, seed, init, merge_method, lam, task):
        return self.rows.get((seed, init, merge_method, lam, task))

    def add(self, rows):
        self.rows.update({self.key(r): r for r in rows})
        write_json_atomic({"settings": self.settings, "rows": list(self.rows.values())}, self.path)

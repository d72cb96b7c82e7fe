"""What lets a run stop and resume without losing, mixing or reusing anything stale: trained
adapters and computed scores saved under the output folder, each reused only while the
settings and the input files that produced it are unchanged; files written whole or not at
all; one run per output folder at a time.

    <out>/adapters/<init>-<task>-seed<seed>.pt   one trained adapter: its settings and inputs,
                                                 A and B, the head, how its training loss moved
    <out>/evaluations.json                       every score computed so far, with its settings
                                                 and a digest of the adapters it came from
    <out>/.lock                                  held by the run in progress

The inputs are fingerprinted by content (SHA-256) before they are read: every file of the
model folder the encoder and tokenizer are built from (named by its path in the folder), each
task's training and dev files, and which split was carved (--carve-splits). What is read later
is checked against them: the model and tokenizer files once loaded (study/cli.py), each GLUE
file as each seed reads it (data.load_split), the encoder each worker process loads
(speed/parallel.py). None of this is part of the method: `reusing` wraps the method's two
costly steps, osrm_min.finetune_adapter and osrm_min.score, from outside.
"""

import contextlib
import errno
import functools
import hashlib
import io
import json
import math
import os
import re
import stat
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch

import data
import lora
from pretrained import checkpoint, tokenization
from study import config
from study.config import ExperimentError

# Everything that shapes one trained adapter; a saved adapter is reused only if all match
# (the device too: a GPU trains in bf16 autocast). The model and the data enter by content
# ("inputs" in Store.adapter_settings), not by where they lie (PATH_KEYS), so that adapters
# and scores copied with their folder to another machine are reused there (LAB.md's handed-out
# runs).
PATH_KEYS = ("model", "data_dir")
ADAPTER_KEYS = ("full", "rank", "alpha", "targets", "lora_dropout", "lr",
                "epochs", "batch_size", "train_samples", "max_length", "group_by_length",
                "weight_decay", "warmup", "max_grad_norm", "pooling", "device")
OSRM_KEYS = ("osrm_samples", "osrm_skip_ln_direction", "own_eps")  # A_t also depends on the other tasks
# Settings that say which evaluations a run makes, not what any one of them scores. The device
# and --eval-batch-size are not among them: they change a score's rounding (STS-B's in the
# fifth digit), and a reused score must be the one a fresh run computes.
WORK_KEYS = ("seeds", "inits", "merges", "lams", "lam_ta", "lam_ties", "out",
             "lab", "workers", "own_at_lambda")  # --lab only sets other settings


# Writing files whole

UMASK = os.umask(0o022)  # read once, and put back at once
os.umask(UMASK)


def write_atomic(path, write):
    """`write(f)` fills a temporary file beside `path`, under a name no other process uses
    (TEMPORARY: osrm-min's and this process's); only once it is complete and on disk does it
    replace `path`."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.osrm-min-{os.getpid()}-",
                               suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's file is private (0600); give the usual mode
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError):
            # name the file meant: the error names the temporary file, or none (a full disk)
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
        raise


def save_atomic(obj, path):
    # into memory first: torch's own file writer reports a full disk as a RuntimeError that
    # names no file
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_atomic(path, lambda f: f.write(buffer.getbuffer()))


def write_text_atomic(text, path):
    write_atomic(path, lambda f: f.write(text.encode("utf-8")))


def finite(obj):
    """obj with every float that is not finite replaced by None (JSON has no NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def write_json_atomic(obj, path):
    """Strict JSON: a value that is not a finite number is written as null."""
    write_text_atomic(json.dumps(finite(obj), indent=1, allow_nan=False), path)


def plain(obj):
    """Lists, not tuples: the form a setting has when it is read back from JSON."""
    return json.loads(json.dumps(obj))


def check_writable(out, files):
    """Make the output folder and the folders in it that `files` (names under `out`) go into,
    or say in one line why one cannot be written, before any work rather than after it;
    likewise for a folder (or anything but a file) where one of `files` will be written."""
    out = Path(out)
    for folder in sorted({out} | {(out / name).parent for name in files}):
        if folder != out and folder.is_symlink():  # its files would go wherever it points
            raise ExperimentError(f"{folder} is a link, which osrm-min did not make and does "
                                  f"not write through; remove it, or choose another --out")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
            os.close(fd)
            os.unlink(probe)
        except OSError as e:
            raise ExperimentError(f"--out {out}: {folder} is not writable ({e.strerror}); "
                                  f"choose another folder")
    for name in files:
        if (out / name).exists() and not (out / name).is_file():
            raise ExperimentError(f"{out / name} is a folder, where this run writes a file; "
                                  f"move it away, or choose another --out")


# write_atomic's temporary files: the name of the file they become, and the writer's pid
TEMPORARY = re.compile(r"\..+\.osrm-min-(\d+)-[a-z0-9_]+\.tmp")


def left_by_a_dead_run(path):
    """Whether `path` is a temporary file of write_atomic's (a plain file, not a link) whose
    process is gone, or is this one (which, taking the lock, is writing nothing yet)."""
    match = TEMPORARY.fullmatch(path.name)
    if not match or path.is_symlink() or not path.is_file():
        return False
    pid = int(match[1])
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # another user's process, or not a pid at all
        return False
    return pid == os.getpid()


class RunLock:
    """`with RunLock(out):` this process is the only osrm-min run writing to `out`. The lock
    (flock on <out>/.lock) goes away with the process, however it ends."""

    def __init__(self, out):
        self.path = Path(out) / ".lock"

    def __enter__(self):
        import fcntl  # POSIX; the lock is what keeps two runs from mixing their files
        # never through a link: a .lock that is one, or a hard link, would have this run
        # truncate and write a file that it did not make, wherever that lies
        not_ours = ExperimentError(f"{self.path} is a link or not a plain file, so it is not "
                                   f"osrm-min's lock; remove it, or choose another --out")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        except OSError as e:
            raise (not_ours if e.errno == errno.ELOOP else e) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            raise not_ours
        self.file = os.fdopen(fd, "r+")
        try:
            fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = self.file.read().strip()
            self.file.close()
            raise ExperimentError(f"--out {self.path.parent} is in use by another osrm-min run"
                                  f"{f' ({owner})' if owner else ''}; wait for it to finish or "
                                  f"choose another --out")
        self.file.truncate(0)
        self.file.write(f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}")
        self.file.flush()
        # a run killed while writing leaves a temporary file; no other run writes here now
        for folder in (self.path.parent, self.path.parent / "adapters"):
            for tmp in folder.glob(".*.tmp"):
                if left_by_a_dead_run(tmp):
                    tmp.unlink(missing_ok=True)
        return self

    def __exit__(self, *exc):
        self.file.close()


# Fingerprints of the inputs

def file_digest(path):
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def digest(parts):
    """One short digest of {name: digest} (sorted, so that order does not matter)."""
    text = json.dumps(sorted(parts.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def files_digest(folder, paths):
    """One digest of files, each named by its path inside `folder`: two files of one name in
    different subfolders (a sentence-transformers model's config.json and
    1_Pooling/config.json) are two entries, and a copy of the folder elsewhere has the same."""
    return digest({Path(p).relative_to(folder).as_posix(): file_digest(p) for p in paths})


def fingerprint_inputs(model_dir, data_files=None, carved=None):
    """{"model": ..., "tokenizer": ..., "train:sst2": ..., "dev:sst2": ..., "carved:qqp":
    "dev"}: a digest of each input's content (the files of model_dir that the encoder and the
    tokenizer are built from, checkpoint.model_files and tokenization.tokenizer_files), and
    which split of a task was carved from the other's file (--carve-splits;
    data.split_sources). data_files: {"train:sst2": path, ...}; carved: {task: split}."""
    out = {"model": files_digest(model_dir, checkpoint.model_files(model_dir)),
           "tokenizer": files_digest(model_dir, tokenization.tokenizer_files(model_dir))}
    out.update({key: file_digest(path) for key, path in (data_files or {}).items()})
    out.update({f"carved:{t}": split for t, split in (carved or {}).items() if split})
    return out


def encoder_digest(encoder):
    """A digest of a loaded encoder as it is in memory: every weight, the config, and whether
    the checkpoint had a pooler. Two processes that loaded the same files agree on it."""
    return digest({"weights": tensors_digest(encoder.state_dict()),
                   "config": json.dumps(asdict(encoder.config), sort_keys=True),
                   "pooler": str(getattr(encoder, "has_pretrained_pooler", None))})


# The stores

def adapter_file(init, task, seed):
    return f"adapters/{init}-{task}-seed{seed}.pt"


def stored_files(cfg):
    """The files under --out that Store may write for this run."""
    return ["evaluations.json"] + [adapter_file(init, task, seed) for seed in cfg.seeds
                                   for init in cfg.inits for task in cfg.tasks]


def lora_shapes(encoder, targets, rank):
    """{"layers.0.query.A": (r, d_in), "layers.0.query.B": (d_out, r), ...}: the shapes of the
    adapters `add_lora` would give this encoder."""
    shapes = {}
    for name, m in lora.target_layers(encoder, targets).items():
        shapes[f"{name}.A"], shapes[f"{name}.B"] = (rank, m.in_features), (m.out_features, rank)
    return shapes


class Store:
    """The adapters and scores of earlier runs into the same output folder."""

    def __init__(self, cfg, device, inputs, save_scores=True):
        """device: the run's, as resolved (config.Located); save_scores=False (a worker
        process, speed/parallel.py): new scores are kept in self.scores.new_rows for the main
        process to save, which alone writes the file."""
        self.out, self.device = Path(cfg.out), device
        self.inputs = inputs  # fingerprint_inputs(...)
        (self.out / "adapters").mkdir(parents=True, exist_ok=True)
        self.scores = Evaluations(self.out / "evaluations.json", dict(asdict(cfg), device=device),
                                  lambda task: self.row_inputs(cfg.tasks, task), save_scores)

    def adapter_path(self, init, task, seed):
        return self.out / adapter_file(init, task, seed)

    def adapter_settings(self, cfg, seed, task, init, uses_osrm):
        """The settings and inputs saved with an adapter; it is reused only if they match.
        Its own training file shapes it, and with OSRM the other tasks' too (the subspace)."""
        d = dict({k: getattr(cfg, k) for k in ADAPTER_KEYS}, device=self.device)
        rows = config.train_rows(cfg)
        d.update(seed=seed, task=task, init=init, train_samples=rows[task])
        if not data.TASKS[task].labels:  # only a regression head's start depends on it
            d["head_bias_mean"] = cfg.head_bias_mean
        if cfg.select_on == "heldout":  # held-out rows are taken out of the training rows
            d["heldout_samples"] = cfg.heldout_samples
        reads = cfg.tasks if uses_osrm else [task]
        # a carved split's rows are taken out of the training pool: the key holds whether a
        # split was carved, as the run found the files, and how many rows
        carved = {t: self.inputs[f"carved:{t}"] for t in reads if f"carved:{t}" in self.inputs}
        if carved:
            d.update(carve_splits=cfg.carve_splits, carved=carved)
        if uses_osrm:
            # in --tasks order: osrm-mean stacks the other tasks' means in it (and LAPACK's null
            # basis follows the order), and with three or more a float sum of their moments
            # rounds differently in another order
            d.update({k: getattr(cfg, k) for k in OSRM_KEYS},
                     other_tasks=[t for t in cfg.tasks if t != task])
            # the statistics read each task's first --osrm-samples training rows, a prefix of
            # the same seeded order whatever the count, unless a task has fewer rows than that
            short = {t: n for t, n in rows.items() if t != task and 0 < n < cfg.osrm_samples}
            if short:
                d["statistics_rows"] = short
        d["inputs"] = {k: self.inputs[k] for k in ["model", "tokenizer"] + [f"train:{t}" for t in reads]}
        return plain(d)

    def row_inputs(self, tasks, task):
        """The digest of what a score of `task` depends on: the model, the tokenizer, every
        task's training file (a merge holds every adapter) and the task's dev file."""
        return digest({k: self.inputs[k] for k in ["model", "tokenizer", f"dev:{task}"]
                       + [f"train:{t}" for t in tasks]
                       + [f"carved:{t}" for t in tasks if f"carved:{t}" in self.inputs]})

    def load_adapter(self, cfg, seed, task, init, uses_osrm, shapes, new_head):
        """The lora state saved earlier with the same settings and inputs, a head made by
        `new_head()` with the saved state loaded into it, and its training summary; or None,
        saying why, if there is none that can be used. shapes: {"layers.0.query.A": (r, d_in),
        ...} of this model."""
        path = self.adapter_path(init, task, seed)
        if not path.exists():
            return None
        head = new_head()
        try:
            saved = torch.load(path, map_location=self.device, weights_only=True)
            wanted = self.adapter_settings(cfg, seed, task, init, uses_osrm)
            if saved.get("config") != wanted:
                old = saved.get("config") or {}
                changed = [k for k in wanted["inputs"] if (old.get("inputs") or {}).get(k) != wanted["inputs"][k]]
                same_settings = {k: v for k, v in old.items() if k != "inputs"} == {
                    k: v for k, v in wanted.items() if k != "inputs"}
                why = (f"its input files changed ({', '.join(changed)})" if same_settings and changed
                       else "settings changed")
                print(f"{init}/{task}: {why} since {path} was saved; training again")
                return None
            # all of it checked before anything is loaded: a head half copied into `head` would
            # start the training again from the old values
            state, training = saved["lora"], saved.get("training")
            if not fits(state, {k: (shape, torch.float32) for k, shape in shapes.items()}):
                raise ValueError("its A and B do not fit this model")
            fresh_head = {k: (tuple(v.shape), v.dtype) for k, v in head.state_dict().items()}
            if not fits(saved["head"], fresh_head):
                raise ValueError("its head does not fit this task and model")
            if not usable_training(training):
                raise ValueError("its training summary is not one that finetune writes")
            head.load_state_dict(saved["head"])
        except Exception as e:  # a truncated or foreign file: say so and retrain, never crash
            print(f"note: cannot use {path} ({type(e).__name__}: {str(e).splitlines()[0][:80] if str(e) else ''}); "
                  f"training again")
            return None
        print(f"{init}/{task}: loaded the adapter trained earlier ({path})")
        return state, head, training

    def save_adapter(self, cfg, seed, task, init, uses_osrm, adapter):
        save_atomic({"config": self.adapter_settings(cfg, seed, task, init, uses_osrm),
                     "lora": adapter.lora, "head": adapter.head.state_dict(),
                     "training": adapter.training},
                    self.adapter_path(init, task, seed))

    def adapter(self, finetune, spine, encoder, init, task_data, A_init, seed, cfg):
        """`spine.finetune_adapter` reusing what was saved: the adapter of the task under
        `init` saved earlier, if it is wholly usable, else what `finetune` (the plain
        finetune_adapter) trains, saved at once."""
        task = task_data.task.name
        uses_osrm = spine.INITS[init].statistic is not None
        saved = self.load_adapter(cfg, seed, task, init, uses_osrm,
                                  lora_shapes(encoder, cfg.targets, cfg.rank),
                                  lambda: spine.new_head(encoder, task_data.task, seed, cfg,
                                                         task_data.train))
        if saved is not None:
            return spine.Adapter(*saved)
        t0 = time.time()
        adapter = finetune(encoder, init, task_data, A_init, seed, cfg)
        print(f"{init}/{task}: trained in {time.time() - t0:.0f}s")
        self.save_adapter(cfg, seed, task, init, uses_osrm, adapter)
        return adapter

    def evaluate(self, score, encoder, adapters, scoring, prepared, cfg):
        """`spine.score` reusing what was saved: on each split of `scoring`, the rows saved
        earlier from the same settings, inputs and adapters in the model (all of
        `scoring.merged`'s in a merge) if every task has one, else what `score` (the plain
        one) computes, saved at once. Each row also holds the digests of the input files and
        of the adapters it came from."""
        from_adapters = digest({t: adapter_digest(a.lora, a.head) for t, a in scoring.merged.items()})
        rows = []
        for split in scoring.splits:
            saved = [self.scores.get(scoring.seed, scoring.init, scoring.method, scoring.lam, t,
                                     from_adapters, split) for t in adapters]
            if None in saved:
                saved = [dict(r, inputs=self.row_inputs(cfg.tasks, r["task"]), adapters=from_adapters)
                         for r in score(encoder, adapters, replace(scoring, splits=(split,)), prepared, cfg)]
                self.scores.add(saved)
            rows += saved
        return rows


@contextlib.contextmanager
def reusing(store, spine):
    """Within the block, the method's two costly steps in the module `spine` (osrm_min) reuse
    what an earlier run saved and save what they compute: `finetune_adapter` (Store.adapter)
    and `score` (Store.evaluate). The method calls them as plain functions; this is the one
    place that wraps them, and it puts them back as they were afterwards."""
    finetune, score = spine.finetune_adapter, spine.score
    spine.finetune_adapter = functools.partial(store.adapter, finetune, spine)
    spine.score = functools.partial(store.evaluate, score)
    try:
        yield
    finally:
        spine.finetune_adapter, spine.score = finetune, score


def fits(tensors, like):
    """Whether `tensors` is what a fresh run makes, as `like` ({name: (shape, dtype)}) says: the
    same names, shapes and dtypes, and every value finite."""
    return (isinstance(tensors, dict) and set(tensors) == set(like)
            and all(isinstance(t, torch.Tensor) and (tuple(t.shape), t.dtype) == like[k]
                    and torch.isfinite(t).all() for k, t in tensors.items()))


def is_a(value, kind):
    """isinstance, except that a bool is not a number (JSON's true would pass as 1)."""
    return isinstance(value, kind) and not isinstance(value, bool)


def usable_training(training):
    """A training summary as train.finetune writes it: the mean losses of the first and last
    quarter of the steps, finite and not negative, and a positive number of steps."""
    return (isinstance(training, dict)
            and all(is_a(training.get(k), float) and 0 <= training[k] < math.inf
                    for k in ("loss_start", "loss_end"))
            and is_a(training.get("steps"), int) and training["steps"] >= 1)


def adapter_digest(lora_state, head):
    """A digest of an adapter's A, B and head (tensors_digest): a saved score is reused only
    beside the very adapters it was computed from."""
    return tensors_digest({**lora_state, **{f"head.{k}": v for k, v in head.state_dict().items()}})


def tensors_digest(tensors):
    """A short digest of {name: tensor}: the names, dtypes, shapes and every byte of the values."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name} {t.dtype} {tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:16]


SCORE_TYPES = {"seed": int, "init": str, "merge": str, "task": str, "score": (int, float),
               "metrics": dict, "split": str}


def valid_score(row):
    """A score row as a run writes it, as far as the report reads it: every field of its type,
    a task and split that exist, a positive finite lambda or none, and the task's metrics,
    each in [-1, 1], giving exactly its score."""
    if not (isinstance(row, dict) and all(is_a(row.get(k), t) for k, t in SCORE_TYPES.items())):
        return False
    task, lam, metrics = data.TASKS.get(row["task"]), row.get("lambda"), row["metrics"]
    return (task is not None and row["split"] in ("dev", "heldout")
            and (lam is None or (is_a(lam, (int, float)) and 0 < lam < math.inf))
            and set(metrics) == set(data.metric_names(task))
            and all(is_a(v, (int, float)) and -1 <= v <= 1 for v in metrics.values())
            and data.main_score(task, metrics) == row["score"])


def usable_row(row):
    """A saved score row that a fresh run could have written (valid_score), with the digests
    of the inputs and adapters it came from and its predictions."""
    return (valid_score(row) and all(is_a(row.get(k), str) for k in ("inputs", "adapters"))
            and isinstance(row.get("predictions"), list)
            and all(is_a(p, (int, float)) and math.isfinite(p) for p in row["predictions"]))


class Evaluations:
    """Scores computed earlier, kept in <out>/evaluations.json, so that an interrupted run
    resumes its evaluations (merges at every lambda), not only its training.

    A row is reused only if every setting that shapes a score matches (all but WORK_KEYS and
    PATH_KEYS), the files it was computed from are unchanged (`inputs_of(task)`, a digest), and
    its seed, init, merge, lambda and task are the ones asked for.
    """

    def __init__(self, path, settings, inputs_of, save=True):
        """settings: the run's, {name: value} (the Config's, with the device as resolved)."""
        self.path, self.save, self.new_rows = Path(path), save, []
        self.settings = plain({k: v for k, v in settings.items() if k not in WORK_KEYS + PATH_KEYS})
        saved = {}
        if self.path.exists():
            try:
                saved = json.loads(self.path.read_text(encoding="utf-8"))
                if not isinstance(saved, dict) or not isinstance(saved.get("rows", []), list) \
                        or not all(map(usable_row, saved.get("rows", []))):
                    raise ValueError("not a list of score rows")
            except (ValueError, UnicodeDecodeError, RecursionError) as e:  # (nested too deep)
                print(f"note: cannot use {self.path} ({e}); evaluating again")
                saved = {}
        rows = saved.get("rows", []) if saved.get("settings") == self.settings else []
        fresh = [r for r in rows if r["task"] in settings["tasks"] and r["inputs"] == inputs_of(r["task"])]
        self.rows = {self.key(r): r for r in fresh}
        if save and len(fresh) < len(rows):  # (said once, by the process that saves)
            print(f"note: the model, tokenizer or data files changed since {len(rows) - len(fresh)} "
                  f"scores in {self.path} were computed; evaluating those again")
        if save and self.rows:
            print(f"note: reusing {len(self.rows)} scores of an earlier run with the same "
                  f"settings and input files ({self.path})")

    @staticmethod
    def key(row):
        return (row["seed"], row["init"], row["merge"], row["lambda"], row["task"], row["split"])

    def get(self, seed, init, merge_method, lam, task, adapters, split="dev"):
        """The saved row, if it was computed from the same adapters (Store.evaluate)."""
        row = self.rows.get((seed, init, merge_method, lam, task, split))
        return row if row is not None and row["adapters"] == adapters else None

    def add(self, rows):
        self.rows.update({self.key(r): r for r in rows})
        if not self.save:
            self.new_rows += rows
            return
        write_json_atomic({"settings": self.settings, "rows": list(self.rows.values())}, self.path)

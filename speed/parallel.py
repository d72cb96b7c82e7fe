"""Inits side by side (--workers): once a seed's statistics and subspaces exist, each init's
part of the seed (its fine-tunes, its merges at every lambda, its interference:
osrm_min.run_init, run by `inits_job`) depends on nothing else, so these jobs can run in worker processes at once,
each with its share of the CPU threads. On a CPU, two processes of one thread each can get more
out of two cores than one process of two threads (small matrices parallelise poorly inside one
process; PERFORMANCE.md has the measurements). While they run, the main process computes the
next seeds' statistics on one share of the threads too.

Each worker loads the checkpoint once and runs the jobs it is given. It saves each adapter as
it finishes, as one process does, so an interrupted run resumes and a rerun reuses; the scores
come back to the main process, which saves them as each job ends and adds what the jobs
recorded to the results in the order one process would have. A job that fails (a diverged
fine-tune, a killed process, Ctrl-C) ends the run with the usual one-line error; the adapters
and the jobs finished before it are kept.

A job and its result travel as files in a temporary folder; the pool's pipes carry only their
names. Data that several jobs read (a seed's statistics, tens of MB) is written once
(`Workers.share`) and read back in a worker with `shared`. Sent through the pipes, a worker
killed at the wrong moment broke the run: killed while it fetched a job's tensors (torch hands
them over as file descriptors) it left a traceback from the main process's fd-sharing thread;
killed halfway through writing a large result it left the pool waiting for the rest forever.
A message of a few hundred bytes reaches a pipe in one piece, so neither can happen. A worker
whose main process is killed outright stops itself (`_watch`), and a later run removes the
temporary folder the killed one left: only a folder whose lock no process holds any more
(`_job_folder`), never one judged by a process id, which another pid namespace (a container
sharing the temporary folder) would read as someone else's. A worker that cannot start (the
model unreadable, or changed since the run loaded it) says why in its jobs' one-line error.
"""

import contextlib
import fcntl
import multiprocessing
import os
import pickle
import shutil
import signal
import tempfile
import threading
import time
from dataclasses import replace
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch

import train
from pretrained import checkpoint
from speed import fastpath
from study import resume
from study.config import ExperimentError

_ENCODER = None  # in a worker: the encoder it loaded, with the speed path on
_START_ERROR = None  # in a worker: why it could not start, said by each job it is given
_SHARED = {}  # in a worker: the shared data it read last, {file name: data}
_PREFIX = "osrm-min-jobs-"  # the temporary folders' names: this, the main process's pid, -, random
_LOCK = "lock"  # in each folder: held (flock) by the run that made it, for as long as it runs


def workers(requested, device):
    """At most how many jobs run side by side: --workers (`requested`), or with 0 one per CPU
    core on a CPU, one per visible card on device cuda (one on cuda:N; `device` as resolved,
    config.Located). With --workers N on one GPU, N fine-tunes share the card, checked against
    its free memory (`check_device_memory`)."""
    if requested:
        return requested
    if str(device).startswith("cuda"):
        return max(1, torch.cuda.device_count()) if device == "cuda" else 1
    return max(1, os.cpu_count() or 1)


def worker_devices(device, n):
    """The device of each of n workers: with --device cuda and several GPUs visible, the
    workers take the cards in turn (one fine-tune per card with --workers 0); otherwise they
    all share `device`, each running its own fine-tunes on it."""
    cards = torch.cuda.device_count() if device == "cuda" else 0
    return [f"cuda:{i % cards}" for i in range(n)] if cards > 1 else [device] * n


def fine_tune_bytes(config, batch_size, max_length):
    """A rough upper estimate of one fine-tune's GPU memory in bytes: the model's float32
    weights twice (AdamW's state and the adapters are small beside them), and the activations
    the backward pass keeps, T B H (34 + 5 a T / H) bytes per layer at 16-bit (Korthikanti et
    al. 2022, "Reducing Activation Recomputation in Large Transformer Models", section 4.1),
    at the longest batch (T = --max-length)."""
    H, L, a = config.hidden_size, config.num_hidden_layers, config.num_attention_heads
    weights = 4 * (config.vocab_size * H + L * (4 * H * H + 2 * H * config.intermediate_size))
    activations = L * max_length * batch_size * H * (34 + 5 * a * max_length / H)
    return 2 * weights + activations


def check_device_memory(devices, need, batch_size):
    """An ExperimentError, before any worker starts, where a card has less free memory than
    its share of the workers' fine-tunes needs (`fine_tune_bytes` each)."""
    for device in dict.fromkeys(d for d in devices if d.startswith("cuda")):
        k = devices.count(device)
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        if free < k * need:
            fit = int(free // need)
            raise ExperimentError(
                f"--workers {len(devices)}: {k} fine-tune{'s' if k > 1 else ''} on {device} "
                f"need{'' if k > 1 else 's'} about "
                f"{k * need / 2**30:.1f} GB ({need / 2**30:.1f} GB each at --batch-size "
                f"{batch_size}), and it has {free / 2**30:.1f} GB free; use "
                + (f"--workers {fit} or fewer" if fit else "a smaller --batch-size or --max-length"))


def init_groups(inits, post_hoc):
    """The inits of a seed that can run apart: each alone, but the post-hoc ones (`post_hoc`,
    e.g. osrm-post) with plain LoRA, whose trained adapters they project."""
    return [[init] + ([p for p in inits if p in post_hoc] if init == "lora" else [])
            for init in inits if init not in post_hoc]


def inits_job(encoder, job):
    """In a worker: osrm_min.run_init for a group of one seed's inits. job = (cfg, the run's
    device as resolved, inits, the name the seed's data was shared under, input fingerprints).
    Adapters are saved as they finish, as in one process; the scores are not (the main process
    writes them, as each job ends): returns ({init: its InitRun, without the adapters}, the new
    score rows)."""
    import osrm_min  # (here: osrm_min imports this module)
    cfg, device, inits, shared_name, inputs = job
    seed = shared(shared_name)
    store = resume.Store(cfg, device, inputs, save_scores=False)
    trained = {}
    with resume.reusing(store, osrm_min):
        for init in inits:
            trained[init] = osrm_min.run_init(cfg, init, encoder, seed, trained)
    return {i: replace(r, adapters={}) for i, r in trained.items()}, store.scores.new_rows


def _take_device(devices, taken):
    """In a worker at its start: the next of `devices` (`taken`: a shared counter)."""
    with taken.get_lock():
        i, taken.value = taken.value, taken.value + 1
    return devices[i % len(devices)]


def _start(main_pid, model_dir, devices, taken, threads, model_digest):
    """A worker's start: Ctrl-C is the main process's to handle (it came blocked from there,
    `_quiet_children`: now ignored, then unblocked); a watch on the main process; its share of
    the threads; the checkpoint, loaded once and checked to be what the main process loaded
    (resume.encoder_digest), on its device (`worker_devices`). A failure is kept for its jobs
    to report (`_run`): an initializer
    that raises would print a traceback and break the pool as if the worker had been killed."""
    global _ENCODER, _START_ERROR
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    threading.Thread(target=_watch, args=(main_pid,), daemon=True).start()
    try:
        torch.set_num_threads(threads)
        encoder, _ = checkpoint.load_checkpoint(model_dir)
        if resume.encoder_digest(encoder) != model_digest:
            raise ExperimentError(f"the model in {model_dir} changed after this run loaded it; "
                                  f"rerun once it is complete")
        _ENCODER = fastpath.speed_up(encoder.to(_take_device(devices, taken)))
        train.PROGRESS = False  # one process draws the progress; a worker's bars would mix in
    except Exception as e:  # any failure: said in one line by its jobs
        _START_ERROR = str(e) if isinstance(e, ExperimentError) else (
            f"cannot load the model in {model_dir} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:150] if str(e) else ''})")


@contextlib.contextmanager
def _quiet_children():
    """Around starting worker processes: SIGINT blocked, so that a Ctrl-C pressed while a child
    is still importing torch cannot end it with a traceback (the child inherits the blocked
    signal, and `_start` ignores it before unblocking). This process gets such a Ctrl-C as
    soon as the block is lifted. (multiprocessing's resource tracker starts the same way.)"""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _save(obj, path):
    """Write obj to path whole or not at all (plain pickle: tensors as bytes, no shared memory)."""
    resume.write_atomic(path, lambda f: pickle.dump(obj, f, protocol=pickle.HIGHEST_PROTOCOL))


def _load(path):
    with open(path, "rb") as f:
        return pickle.load(f)


def shared(name):
    """In a worker's job: the data `Workers.share` wrote under name (read once per worker)."""
    if name not in _SHARED:
        _SHARED.clear()
        _SHARED[name] = _load(name)
    return _SHARED[name]


def _watch(main_pid):
    """A main process killed outright (SIGKILL, or SIGTERM, which Python does not turn into an
    exception) cannot stop its workers; each stops itself within a second of it. (main_pid
    comes from the main process: one killed while this worker started has already given it
    to another parent.)"""
    while os.getppid() == main_pid:
        time.sleep(1)
    os._exit(1)


def _job_folder():
    """(a new temporary folder for this process's jobs, its lock held), after removing the
    folders of runs that ended without removing their own (killed outright): those whose lock
    this process can take, since the lock goes with the process that held it. A folder without
    a lock, or whose lock is held, is left alone."""
    for old in Path(tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        lock = _take_lock(old)
        if lock is not None:
            shutil.rmtree(old, ignore_errors=True)
            os.close(lock)
    folder = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
    # locked under another name, then renamed: no other run can find it unlocked
    fd = os.open(os.path.join(folder, f"{_LOCK}.new"), os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.rename(os.path.join(folder, f"{_LOCK}.new"), os.path.join(folder, _LOCK))
    return folder, fd


def _take_lock(folder):
    """The lock of one of our folders (an fd), if no process holds it; else None. Never
    through a link, and only in a folder of this user's."""
    try:
        if folder.is_symlink() or not folder.is_dir() or folder.stat().st_uid != os.getuid():
            return None
        fd = os.open(folder / _LOCK, os.O_RDWR | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fd
    except OSError:
        os.close(fd)
        return None


def _run(job_fn, job_path, result_path):
    """In a worker: the job from its file, its result to another; only the name goes back."""
    if _START_ERROR is not None:
        raise ExperimentError(f"a worker process could not start: {_START_ERROR}")
    _save(job_fn(_ENCODER, _load(job_path)), result_path)
    return result_path


class Workers:
    """`with Workers(cfg, located, n, model_digest) as pool:` n worker processes, started at
    the first `pool.share` or `pool.submit` and kept for every seed (a worker's start-up, an
    interpreter and a checkpoint, costs seconds)."""

    def __init__(self, cfg, located, n, model_digest, model_config=None):
        """located: the model folder and device (config.Located); model_digest:
        resume.encoder_digest of the encoder this process loaded, which each worker's own must
        match; model_config (its BertConfig): on a GPU, each card's free memory is checked
        against its workers' fine-tunes (`check_device_memory`)."""
        self.cfg, self.located, self.n, self.model_digest = cfg, located, n, model_digest
        self.devices = worker_devices(str(located.device), n)
        if model_config is not None and str(located.device).startswith("cuda"):
            check_device_memory(self.devices, fine_tune_bytes(model_config, cfg.batch_size,
                                                              cfg.max_length), cfg.batch_size)
        self.pool, self.futures, self.folder, self.lock, self.main_threads = None, {}, None, None, None
        self.threads = max(1, torch.get_num_threads() // n)

    def __enter__(self):
        return self

    def share(self, data):
        """Write data that several jobs read once; returns the name to put in those jobs, which
        `shared(name)` reads back in a worker."""
        self._start_pool()
        name = os.path.join(self.folder, f"shared-{self.n_shared}")
        self.n_shared += 1
        _save(data, name)
        return name

    def run_inits(self, cfg, seed, inputs, groups):
        """Queue one seed's inits (`groups`, init_groups), a job per group (`inits_job`), with
        the seed's data (osrm_min.run_seed's Seed) written once for all of them; inputs: the
        run's input fingerprints. Each job's result comes back from `wait` under (seed, group)."""
        shared_name = self.share(seed)
        for inits in groups:
            self.submit((seed.seed, tuple(inits)), inits_job,
                        (cfg, self.located.device, inits, shared_name, inputs))

    def submit(self, key, job_fn, job):
        """Queue `job_fn(encoder, job)` for a worker; its result comes back from `wait`
        under `key`. job_fn must be a module-level function (it is sent to the workers by
        name)."""
        self._start_pool()
        job_path = os.path.join(self.folder, f"job-{len(self.futures)}")
        _save(job, job_path)
        with _quiet_children():  # the pool starts its processes as jobs arrive
            self.futures[self.pool.submit(_run, job_fn, job_path, f"{job_path}-result")] = key

    def _start_pool(self):
        """The pool and its folder, at the first share or submit."""
        if self.pool is not None:
            return
        # a killed worker leaves the pool's semaphores to multiprocessing's resource tracker,
        # which would warn about them at exit, after the run's one-line error
        os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
        (self.folder, self.lock), self.n_shared = _job_folder(), 0
        # Meanwhile this process computes the next seeds' statistics on a worker's share of the
        # threads: with more threads than cores, torch's threads wait for each other (on 2
        # cores the three-seed lab run took 300 s with this process on 2 threads, 192 s on 1).
        self.main_threads = torch.get_num_threads()
        context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked thread pools
        with _quiet_children():
            self.pool = ProcessPoolExecutor(self.n, mp_context=context, initializer=_start,
                                            initargs=(os.getpid(), self.located.model, self.devices,
                                                      context.Value("i", 0), self.threads,
                                                      self.model_digest))
        print(f"the inits of every seed run side by side in {self.n} worker processes, "
              f"{self.threads} thread(s) each")
        self.t0 = time.time()
        torch.set_num_threads(self.threads)

    def wait(self, on_done):
        """{key: result} of every job submitted, calling `on_done(result)` in this process as
        each one ends."""
        results = {}
        try:
            for n, done in enumerate(as_completed(self.futures), 1):
                key = self.futures[done]
                results[key] = _load(done.result())
                on_done(results[key])
                print(f"  {n}/{len(self.futures)} jobs done: {key} ({time.time() - self.t0:.0f}s)")
        except BrokenProcessPool:
            raise ExperimentError("a worker process ended without finishing its job (killed, "
                                  "or out of memory); the adapters and jobs finished before it "
                                  "are saved: rerun the same command to resume") from None
        return results

    def __exit__(self, kind, error, traceback):
        """Stop the workers (at once after a failure or Ctrl-C, keeping what is saved), put the
        threads back, remove the folder; whatever part of the pool had started."""
        try:
            if self.pool is not None:
                if kind is not None:
                    for process in list((self.pool._processes or {}).values()):  # (no public way)
                        process.terminate()
                self.pool.shutdown(wait=True, cancel_futures=True)
        finally:
            if self.main_threads is not None:
                torch.set_num_threads(self.main_threads)
            if self.folder is not None:
                shutil.rmtree(self.folder, ignore_errors=True)
                os.close(self.lock)
        return False

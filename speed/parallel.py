"""Independent fine-tunes side by side (--workers): once a seed's statistics and subspaces
exist, every task's adapter under every init trains on its own, so they can run in worker
processes at once, each with its share of the CPU threads. On a CPU, two processes of one
thread each get more out of two cores than one process of two threads (small matrices
parallelise poorly inside one process; PERFORMANCE.md has the measurements).

Each worker loads the checkpoint once and trains the jobs it is given; the adapter comes back
to the main process, which saves it at once, as a sequential run does, so an interrupted run
resumes and a rerun reuses. Merging and evaluation stay in the main process. A worker that
fails (a diverged fine-tune, a killed process, Ctrl-C) ends the run with the usual one-line
error; the adapters finished before it are kept.
"""

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool

import torch

from pretrained import checkpoint
from speed import fastpath
from study.config import ExperimentError

_MODEL = None  # in a worker: the encoder it loaded, with the speed tricks on


def workers(cfg):
    """At most how many fine-tunes run side by side: --workers, or with 0 one per CPU core on a
    CPU (one on a GPU, which one process already keeps busy); Workers takes no more processes
    than there are fine-tunes to run."""
    if cfg.workers:
        return cfg.workers
    return 1 if str(cfg.device).startswith("cuda") else max(1, os.cpu_count() or 1)


def _start(model_dir, device, threads):
    """A worker's start: Ctrl-C is the main process's to handle; its share of the threads; the
    checkpoint, loaded once."""
    global _MODEL
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    encoder, _ = checkpoint.load_checkpoint(model_dir)
    _MODEL = fastpath.speed_up(encoder.to(device))


def _run(train_job, job):
    return train_job(_MODEL, job)


class Workers:
    """`with Workers(cfg, n) as pool:` up to n worker processes for the run's fine-tunes (no more
    than the first seed's fine-tunes), started at the first `pool.train(...)` and kept for
    every seed (a worker's start-up, an interpreter and a checkpoint, costs seconds)."""

    def __init__(self, cfg, n):
        self.cfg, self.n, self.pool = cfg, n, None  # n: at most this many processes
        self.threads = None

    def __enter__(self):
        return self

    def train(self, jobs, train_job, save):
        """Run `train_job(model, job)` for every job in the workers, and `save(job, result)` in
        this process as each one finishes. train_job must be a module-level function (it is
        sent to the workers by name)."""
        if not jobs:
            return
        if self.pool is None:
            # a killed worker leaves the pool's semaphores to multiprocessing's resource tracker,
            # which would warn about them at exit, after the run's one-line error
            os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
            # no more processes than the first seed has fine-tunes, each with its share of threads
            self.n = min(self.n, len(jobs))
            self.threads = max(1, torch.get_num_threads() // self.n)
            context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked thread pools
            self.pool = ProcessPoolExecutor(self.n, mp_context=context, initializer=_start,
                                            initargs=(self.cfg.model, self.cfg.device, self.threads))
        print(f"training {len(jobs)} adapters in {self.n} worker processes, {self.threads} "
              f"thread(s) each")
        t0 = time.time()
        futures = {self.pool.submit(_run, train_job, job): job for job in jobs}
        try:
            for n, done in enumerate(as_completed(futures), 1):
                save(futures[done], done.result())
                print(f"  {n}/{len(jobs)} adapters trained ({time.time() - t0:.0f}s)")
        except BrokenProcessPool:
            raise ExperimentError("a worker process ended without finishing its fine-tune "
                                  "(killed, or out of memory); the adapters finished before it "
                                  "are saved: rerun the same command to resume") from None

    def __exit__(self, kind, error, traceback):
        if self.pool is None:
            return False
        if kind is not None:  # a failed fine-tune or Ctrl-C: stop the others, keep what is saved
            for process in list(self.pool._processes.values()):  # (no public way to do this)
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)
        return False

"""Inits side by side (--workers): once a seed's statistics and subspaces exist, each init's
part of the seed (its fine-tunes, its merges at every lambda, its interference:
osrm_min.run_init) depends on nothing else, so these jobs can run in worker processes at once,
each with its share of the CPU threads. On a CPU, two processes of one thread each can get more
out of two cores than one process of two threads (small matrices parallelise poorly inside one
process; PERFORMANCE.md has the measurements).

Each worker loads the checkpoint once and runs the jobs it is given. It saves each adapter as
it finishes, as one process does, so an interrupted run resumes and a rerun reuses; the scores
come back to the main process, which saves them as each job ends and adds what the jobs
recorded to the results in the order one process would have. A job that fails (a diverged
fine-tune, a killed process, Ctrl-C) ends the run with the usual one-line error; the adapters
and the jobs finished before it are kept.
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

_ENCODER = _MODEL = None  # in a worker: the encoder it loaded, and the same with the speed tricks on


def workers(cfg):
    """At most how many jobs run side by side: --workers, or with 0 one per CPU core on a CPU
    (one on a GPU, which one process already keeps busy)."""
    if cfg.workers:
        return cfg.workers
    return 1 if str(cfg.device).startswith("cuda") else max(1, os.cpu_count() or 1)


def _start(model_dir, device, threads):
    """A worker's start: Ctrl-C is the main process's to handle; its share of the threads; the
    checkpoint, loaded once."""
    global _ENCODER, _MODEL
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    _ENCODER, _ = checkpoint.load_checkpoint(model_dir)
    _MODEL = fastpath.speed_up(_ENCODER.to(device))


def _run(job_fn, job):
    return job_fn(_ENCODER, _MODEL, job)


class Workers:
    """`with Workers(cfg, n) as pool:` n worker processes, started at the first `pool.submit`
    and kept for every seed (a worker's start-up, an interpreter and a checkpoint, costs
    seconds)."""

    def __init__(self, cfg, n):
        self.cfg, self.n, self.pool, self.futures = cfg, n, None, {}
        self.threads = max(1, torch.get_num_threads() // n)

    def __enter__(self):
        return self

    def submit(self, key, job_fn, job):
        """Queue `job_fn(encoder, model, job)` for a worker; its result comes back from `wait`
        under `key`. job_fn must be a module-level function (it is sent to the workers by
        name)."""
        if self.pool is None:
            # a killed worker leaves the pool's semaphores to multiprocessing's resource tracker,
            # which would warn about them at exit, after the run's one-line error
            os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
            context = multiprocessing.get_context("spawn")  # fresh interpreters: no forked thread pools
            self.pool = ProcessPoolExecutor(self.n, mp_context=context, initializer=_start,
                                            initargs=(self.cfg.model, self.cfg.device, self.threads))
            print(f"the inits of every seed run side by side in {self.n} worker processes, "
                  f"{self.threads} thread(s) each")
            self.t0 = time.time()
        self.futures[self.pool.submit(_run, job_fn, job)] = key

    def wait(self, on_done):
        """{key: result} of every job submitted, calling `on_done(result)` in this process as
        each one ends."""
        results = {}
        try:
            for n, done in enumerate(as_completed(self.futures), 1):
                key = self.futures[done]
                results[key] = done.result()
                on_done(results[key])
                print(f"  {n}/{len(self.futures)} jobs done: {key} ({time.time() - self.t0:.0f}s)")
        except BrokenProcessPool:
            raise ExperimentError("a worker process ended without finishing its job (killed, "
                                  "or out of memory); the adapters and jobs finished before it "
                                  "are saved: rerun the same command to resume") from None
        return results

    def __exit__(self, kind, error, traceback):
        if self.pool is None:
            return False
        if kind is not None:  # a failed fine-tune or Ctrl-C: stop the others, keep what is saved
            for process in list(self.pool._processes.values()):  # (no public way to do this)
                process.terminate()
        self.pool.shutdown(wait=True, cancel_futures=True)
        return False

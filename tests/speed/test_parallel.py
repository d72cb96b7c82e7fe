"""Fine-tunes side by side (--workers, speed/parallel.py): the same results as one process; a
worker that dies, at any moment, ends the run in one line with every finished adapter kept;
workers whose main process is killed stop, and the rerun clears what it left."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import lora
import osrm_min
from conftest import ROOT, tiny_args, write_tiny_glue
from speed import parallel
from study.config import ExperimentError


def recorded(out):
    """What results.json holds, but for the times it took."""
    results = json.loads((out / "results.json").read_text())
    return {k: results[k] for k in ("rows", "heldout_rows", "interference", "interference_fit",
                                    "subspace_energy", "spectrum", "training", "movement")}


def test_two_workers_give_what_one_process_gives(tmp_path, tiny_model, capsys):
    # one thread in the main process too, so that both runs sum in the same order: on some CPUs
    # one and two threads round differently (PERFORMANCE.md says by how much on real runs)
    write_tiny_glue(tmp_path / "glue")
    runs, threads = {}, torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for workers in ("1", "2"):
            args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm,osrm-post", "--merges", "ta,ties",
                             "--lams", "0.5,1.0", "--select-on", "heldout", "--heldout-samples", "4",
                             "--seeds", "1,2", "--workers", workers)
            args[args.index("--out") + 1] = str(tmp_path / workers)
            assert osrm_min.main(args) == 0
            runs[workers] = recorded(tmp_path / workers)
    finally:
        torch.set_num_threads(threads)
    assert "the inits of every seed run side by side in 2 worker processes" in capsys.readouterr().out
    assert runs["1"]["heldout_rows"] and runs["1"]["movement"]
    assert runs["1"] == runs["2"]  # identical, in the same order
    saved = [json.loads((tmp_path / w / "evaluations.json").read_text())["rows"] for w in ("1", "2")]
    assert len(saved[1]) == len(saved[0])  # every score the workers computed, saved by the main process
    assert sorted(p.name for p in (tmp_path / "2" / "adapters").iterdir()) == sorted(
        p.name for p in (tmp_path / "1" / "adapters").iterdir())


def children(pid):
    """The pids whose parent is `pid` (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cmdline(pid):
    """Process pid's command line ("" once it has ended)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_text()
    except OSError:
        return ""


def test_a_killed_worker_ends_the_run_in_one_line_and_a_rerun_keeps_what_finished(tmp_path, tiny_model):
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm", "--merges", "ta", "--seeds", "1",
                     "--epochs", "4", "--workers", "2")
    env = dict(os.environ, OMP_NUM_THREADS="2")
    run = subprocess.Popen([sys.executable, str(ROOT / "osrm_min.py"), *args], cwd=tmp_path, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    adapters = tmp_path / "out" / "adapters"
    deadline = time.time() + 120
    while time.time() < deadline and not (adapters.exists() and any(adapters.glob("*.pt"))):
        time.sleep(0.05)
    workers = [p for p in children(run.pid) if "spawn" in cmdline(p)]
    assert workers, "no worker process to kill"
    os.kill(workers[0], signal.SIGKILL)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 2, err
    assert err.count("\n") == 1 and "a worker process ended" in err, err
    finished = {p.name: p.stat().st_mtime_ns for p in adapters.glob("*.pt")}
    assert finished  # what finished before the kill was saved
    again = subprocess.run([sys.executable, str(ROOT / "osrm_min.py"), *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    for name, mtime in finished.items():  # reused, not trained again
        assert (adapters / name).stat().st_mtime_ns == mtime
    assert len(list(adapters.glob("*.pt"))) == 2 * 2


def test_a_worker_killed_with_its_result_or_next_job_in_transit_ends_in_one_line(tmp_path, tiny_model):
    # kill_a_worker.py kills the worker of a job whose 20 MB result is on its way back, or that
    # is taking its next job (with a tensor in it); a pool that hangs is timed out here
    moments = ["sending+0.03", "sending+0.06", "sending+0.09", "next+0", "next+0.01"]
    program = Path(__file__).with_name("kill_a_worker.py")
    run = subprocess.run([sys.executable, str(program), str(tiny_model), str(tmp_path), *moments],
                         capture_output=True, text=True, timeout=150,
                         env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Traceback" not in run.stderr, run.stderr
    assert run.stdout.count("a worker process ended without finishing its job") == len(moments)


def start_and_kill(args, cwd, env, moment):
    """`python osrm_min.py args` killed outright (SIGKILL: no clean-up) at `moment`, "while the
    workers start" or "once an adapter is saved"; returns its workers' pids."""
    run = subprocess.Popen([sys.executable, str(ROOT / "osrm_min.py"), *args], cwd=cwd, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.05)
        workers = [p for p in children(run.pid) if "spawn" in cmdline(p)]
    assert len(workers) == 2
    saved = set((cwd / "out" / "adapters").glob("*.pt"))
    while moment.startswith("once") and time.time() < deadline and not (
            set((cwd / "out" / "adapters").glob("*.pt")) - saved):
        time.sleep(0.05)
    run.kill()
    run.wait()
    return workers


def test_workers_stop_when_the_main_process_is_killed_and_a_rerun_clears_its_folder(tmp_path, tiny_model):
    # killed while its workers start, then a rerun killed once it saved an adapter (which
    # clears the first run's folder as its pool starts), then a rerun that finishes
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm", "--merges", "ta", "--seeds", "1,2",
                     "--epochs", "4", "--workers", "2")
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="2", TMPDIR=str(tmp_path / "tmp"))
    left = []
    for moment in ("while the workers start", "once an adapter is saved"):
        workers = start_and_kill(args, tmp_path, env, moment)
        deadline = time.time() + 30
        while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
            time.sleep(0.1)
        assert not any(Path(f"/proc/{p}").exists() for p in workers), \
            f"the workers outlived their main process, killed {moment}"
        assert not any(p.exists() for p in left)  # the earlier run's, cleared by this one
        left = list((tmp_path / "tmp").glob("osrm-min-jobs-*"))
        assert left  # the killed run could not remove its folder
    again = subprocess.run([sys.executable, str(ROOT / "osrm_min.py"), *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not any(p.exists() for p in left)
    assert not list((tmp_path / "tmp").glob("osrm-min-jobs-*"))  # its own, removed at the end


def test_ctrl_c_while_the_pool_is_being_built_ends_in_the_usual_message(tmp_path, tiny_model, monkeypatch,
                                                                        capsys):
    def pressed(*args):  # Ctrl-C during a step of the pool's start
        raise KeyboardInterrupt

    write_tiny_glue(tmp_path / "glue")
    monkeypatch.setattr(parallel, "_job_folder", pressed)
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm", "--workers", "2")
    assert osrm_min.main(args) == 130
    assert "interrupted" in capsys.readouterr().err
    assert torch.get_num_threads() >= 1


@pytest.mark.parametrize("delay", [0.0, 1.0])
def test_ctrl_c_while_the_workers_start_leaves_no_traceback(tmp_path, tiny_model, delay):
    # Ctrl-C at a terminal reaches the whole process group, workers still importing torch too
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm", "--seeds", "1,2", "--workers", "2")
    run = subprocess.Popen([sys.executable, "-u", str(ROOT / "osrm_min.py"), *args], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="2"))
    for line in run.stdout:
        if "side by side" in line:
            break
    time.sleep(delay)
    os.killpg(run.pid, signal.SIGINT)
    out, err = run.communicate(timeout=120)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_worker_that_cannot_load_the_model_says_so_in_one_line(tmp_path):
    # the model is damaged after the main process loaded it: the workers cannot read it
    from conftest import write_tiny_checkpoint
    model = tmp_path / "model"
    write_tiny_checkpoint(model)
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, model, "--inits", "lora,osrm", "--workers", "2")
    program = ("import sys; sys.path.insert(0, sys.argv[1]); import osrm_min; from speed import parallel\n"
               "real = parallel.Workers._start_pool\n"
               "def damage_then_start(self):\n"
               "    if self.pool is None:\n"
               "        open(sys.argv[2], 'r+b').truncate(100)\n"
               "    real(self)\n"
               "parallel.Workers._start_pool = damage_then_start\n"
               "sys.exit(osrm_min.main(sys.argv[3:]))\n")
    done = subprocess.run([sys.executable, "-c", program, str(ROOT), str(model / "model.safetensors"), *args],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="2"))
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().replace("\r", "\n").splitlines()[-1]
    assert "Traceback" not in done.stderr and done.stderr.count("error: ") == 1, done.stderr
    assert last.startswith("error: a worker process could not start: cannot load the model"), last


def test_a_job_folder_is_removed_only_when_no_process_holds_its_lock(tmp_path, monkeypatch):
    # another pid namespace (a container sharing the temporary folder) has pids this one cannot
    # see: a live run's folder must not be judged by its pid
    import fcntl
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    live = tmp_path / "osrm-min-jobs-999999999-live"  # a pid that does not exist here
    live.mkdir()
    held = open(live / "lock", "w")
    fcntl.flock(held, fcntl.LOCK_EX)  # held by that run
    dead = tmp_path / "osrm-min-jobs-999999998-dead"
    dead.mkdir()
    (dead / "lock").write_text("")  # its run ended: nobody holds it
    (dead / "job-0").write_text("")
    unknown = tmp_path / "osrm-min-jobs-999999997-unknown"  # no lock: not provably ours and dead
    unknown.mkdir()
    folder, fd = parallel._job_folder()
    try:
        assert live.exists() and unknown.exists() and not dead.exists()
        assert parallel._take_lock(Path(folder)) is None  # our own is held while we run
    finally:
        os.close(fd)
        held.close()


# Several fine-tunes on GPUs (--workers N --device cuda), checked without one

def test_workers_take_the_visible_cards_in_turn_or_share_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert parallel.worker_devices("cuda", 3) == ["cuda:0", "cuda:1", "cuda:0"]
    assert parallel.worker_devices("cuda:1", 3) == ["cuda:1"] * 3  # a named card is shared
    assert parallel.worker_devices("cpu", 2) == ["cpu", "cpu"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert parallel.worker_devices("cuda", 2) == ["cuda", "cuda"]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert parallel.workers(0, "cuda") == 4 and parallel.workers(0, "cuda:2") == 1
    assert parallel.workers(3, "cuda") == 3


def test_each_worker_takes_the_next_device():
    taken = multiprocessing.get_context("spawn").Value("i", 0)
    assert [parallel._take_device(["cuda:0", "cuda:1"], taken) for _ in range(3)] == \
        ["cuda:0", "cuda:1", "cuda:0"]


def test_a_fine_tunes_memory_estimate_on_a_worked_case():
    """RoBERTa-large at the paper's batch 64, length 128: 2 x 4 bytes x 353.5M parameters
    (embeddings 51.5M, 24 layers of 4H^2 + 2 H I = 12.6M; biases and norms left out) and
    24 x 128 x 64 x 1024 x (34 + 5 x 16 x 128 / 1024) bytes of activations."""
    c = lora.BertConfig(vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                        num_attention_heads=16, intermediate_size=4096)
    weights = 50265 * 1024 + 24 * (4 * 1024**2 + 2 * 1024 * 4096)
    activations = 24 * 128 * 64 * 1024 * 44
    assert parallel.fine_tune_bytes(c, 64, 128) == 8 * weights + activations
    assert round(parallel.fine_tune_bytes(c, 64, 128) / 2**30, 2) == 10.88  # GiB


def test_too_many_fine_tunes_for_a_cards_free_memory_is_one_line_before_any_start(monkeypatch):
    free = {"cuda:0": 30 * 2**30, "cuda:1": 9 * 2**30}
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d: (free[str(d)], 80 * 2**30))
    parallel.check_device_memory(["cuda:0", "cuda:0", "cuda:0"], 10 * 2**30, 64)  # 30 GB: fits
    with pytest.raises(ExperimentError, match=r"--workers 4: 4 fine-tunes on cuda:0 need about "
                       r"40.0 GB \(10.0 GB each at --batch-size 64\), and it has 30.0 GB free; "
                       r"use --workers 3 or fewer"):
        parallel.check_device_memory(["cuda:0"] * 4, 10 * 2**30, 64)
    with pytest.raises(ExperimentError, match="1 fine-tune on cuda:1 needs .* use a smaller --batch-size"):
        parallel.check_device_memory(["cuda:0", "cuda:1"], 10 * 2**30, 64)
    parallel.check_device_memory(["cpu", "cpu"], 10 * 2**30, 64)  # no card, nothing to check

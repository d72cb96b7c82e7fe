#!/usr/bin/env bash
# The GPU check on a bare GPU machine: no internet, no pip, no virtual environment. It runs
# tools/gpu_check.py with the Python that already has a CUDA build of torch (and numpy, tqdm):
#
#   bash tools/gpu_check.sh --data-dir BUNDLE/glue --model-dir BUNDLE/model     # ~6 min (planned)
#   PYTHON=/opt/conda/bin/python bash tools/gpu_check.sh ...                    # another Python
#
# Its inputs are named, never downloaded; `python -m tools.gpu_check --pack BUNDLE` makes the
# bundle on a machine with the set-up (tools/gpu_check.py's docstring: what it holds, its size).
# Nothing here installs anything: a pip pointed at a local wheel folder can pick a CPU torch.
# Relative paths are read from the folder it is started in; gpu_check/ is written there too.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m tools.gpu_check "$@"

"""What the GPU check reads, checked before any GPU time is spent, and packed for carrying to a
GPU machine that has no internet and no pip (tools/gpu_check.py's docstring says how).

    python -m tools.gpu_check --pack /tmp/bundle          # GLUE_DIR's SST-2, MRPC; the default model
    python -m tools.gpu_check --pack /tmp/bundle --half   # the same with the weights in float16

The bundle: glue/SST-2 and glue/MRPC (train.tsv, dev.tsv; 4.9 MB), model/ (the files the model
and its tokenizer are read from: config.json, model.safetensors, vocab.txt,
tokenizer_config.json, 1_Pooling/config.json; 91 MB for the default all-MiniLM-L6-v2, 46 MB
with --half), python/tqdm (pure Python, the one requirement a CUDA torch install may lack;
numpy it usually has) and README.txt with the command to run.
"""

import importlib.util
import shutil
from pathlib import Path

# What every step reads of GLUE: the two tasks of the default command
GLUE_FILES = {"SST-2": ("train.tsv", "dev.tsv"), "MRPC": ("train.tsv", "dev.tsv")}
MODULES = ("torch", "numpy", "tqdm")  # what osrm-min imports outside the standard library


class BundleError(Exception):
    """An input folder that the check cannot use; printed as one line."""


def missing_modules():
    return [m for m in MODULES if importlib.util.find_spec(m) is None]


def model_files(model_dir):
    """The files of `model_dir` that the encoder and its tokenizer are read from."""
    from pretrained import checkpoint, tokenization
    try:
        return checkpoint.model_files(model_dir) + tokenization.tokenizer_files(model_dir)
    except Exception as e:  # CheckpointError, DataError: both name what is missing
        raise BundleError(f"--model-dir {model_dir}: {e}") from None


def check_inputs(data_dir, model_dir):
    """One-line errors for a --data-dir or --model-dir that is missing or lacks a file."""
    if data_dir is None or model_dir is None:
        missing = " and ".join(f for f, v in (("--data-dir", data_dir), ("--model-dir", model_dir))
                               if v is None)
        raise BundleError(f"pass {missing}: --data-dir DIR, a GLUE folder in the standard layout "
                          f"(SST-2/ and MRPC/ with train.tsv and dev.tsv), and --model-dir DIR, a "
                          f"local model folder (config.json, model.safetensors, vocab.txt); "
                          f"`python -m tools.gpu_check --pack DIR` makes both; or --dry-run")
    data_dir, model_dir = Path(data_dir), Path(model_dir)
    for folder, files in GLUE_FILES.items():
        for name in files:
            if not (data_dir / folder / name).is_file():
                raise BundleError(f"--data-dir {data_dir} lacks {folder}/{name}; pass a GLUE "
                                  f"folder in the standard layout (SST-2/, MRPC/, ...)")
    if not model_dir.is_dir():
        raise BundleError(f"--model-dir {model_dir} is not a folder; pass a local model folder "
                          f"(config.json, model.safetensors, vocab.txt)")
    model_files(model_dir)


def pack(out, data_dir, model_dir, half=False):
    """Copy what the check reads into `out` (a new folder); returns (out, size in bytes)."""
    from pretrained import checkpoint
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise BundleError(f"--pack {out} exists and is not empty; choose a new folder")
    check_inputs(data_dir, model_dir)
    model_dir = Path(model_dir)
    for folder, files in GLUE_FILES.items():
        (out / "glue" / folder).mkdir(parents=True, exist_ok=True)
        for name in files:
            shutil.copyfile(Path(data_dir) / folder / name, out / "glue" / folder / name)
    for path in model_files(model_dir):
        target = out / "model" / path.relative_to(model_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if half and path.name == "model.safetensors":  # float16: half the bytes, the same names
            tensors = checkpoint.read_safetensors(path)
            checkpoint.write_safetensors({k: v.half() if v.is_floating_point() else v
                                          for k, v in tensors.items()}, target)
        else:
            shutil.copyfile(path, target)
    spec = importlib.util.find_spec("tqdm")
    if spec is not None and spec.origin:
        shutil.copytree(Path(spec.origin).parent, out / "python" / "tqdm",
                        ignore=shutil.ignore_patterns("__pycache__"))
    (out / "README.txt").write_text(
        "The inputs of osrm-min's GPU check (tools/gpu_check.py), packed by `python -m "
        "tools.gpu_check --pack DIR" + (" --half` (the model's weights rounded to float16)" if half
                                        else "`") + ".\nOn the GPU machine, from the repository:\n\n"
        "  PYTHONPATH=BUNDLE/python bash tools/gpu_check.sh --data-dir BUNDLE/glue "
        "--model-dir BUNDLE/model\n\n(BUNDLE: this folder; PYTHON=/path/to/python for a Python "
        "other than python3.)\n")
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return out, size

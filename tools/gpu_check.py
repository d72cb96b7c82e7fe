"""A prepared GPU check: verify and measure osrm-min's CUDA path with one command.

    bash tools/gpu_check.sh                 # on a GPU machine: the README's set-up, then this script
    python -m tools.gpu_check               # the check alone, in an environment that is already set up
    python -m tools.gpu_check --dry-run     # every step on the CPU with a tiny checkpoint and tiny data

GPU time is scarce, so everything is prepared here and the minutes go to measuring. Steps, each
timed, with a budget of about 8 minutes on one GPU in all:

1. environment: the GPU, its driver, torch and its CUDA version;
2. tests: the device-sensitive tests (encoder parity with transformers, packed against plain,
   bf16 autocast) run with OSRM_TEST_DEVICE=cuda, which tests/conftest.py passes to them;
3. numerics: one training step under bf16 autocast against the fp32 step on the same batch
   (loss within 2e-2 relative, LoRA gradients with cosine above 0.99), and the encoder's fp32
   hidden states on the device against the CPU's (within 1e-4);
4. speed: training and evaluation examples/s of the default model (batch 32, bf16 autocast),
   the bf16 matrix-multiply rate measured on the device and the fraction of it that a training
   step reaches; the same training step on a RoBERTa-large-shaped encoder (random weights,
   batch 64, length 128), which projects the paper's protocol (10 epochs over every row);
5. the default two-task command with --device cuda: its wall time and scores.

Everything lands in gpu_check/ (results.json, summary.txt, the run's own folder). Without a GPU
(and without --dry-run) it says so in one line and exits 1.
"""

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lora
import train
from pretrained import checkpoint
from speed import bench
from study import config
from study import resume

ROOT = Path(__file__).resolve().parents[1]
DEVICE_TESTS = ["tests/pretrained/test_encoder_parity.py", "tests/speed/test_fastpath.py",
                "tests/pretrained/test_roberta.py"]
ROBERTA_LARGE = dict(vocab_size=50265, hidden_size=1024, num_hidden_layers=24,
                     num_attention_heads=16, intermediate_size=4096, max_position_embeddings=514,
                     type_vocab_size=1, pad_token_id=1, model_type="roberta")


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def environment(device):
    out = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda,
           "python": platform.python_version(), "cpu": platform.processor() or platform.machine()}
    if device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name(0)
        try:
            out["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            out["driver"] = "unknown (no nvidia-smi)"
    return out


def device_tests(device, dry_run):
    """The device-sensitive tests, in a child pytest with OSRM_TEST_DEVICE set."""
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DEVICE_TESTS]
    if dry_run:  # the quick ones: the suite itself runs all of them on the CPU
        args += ["-k", "tiny_model or bf16"]
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, OSRM_TEST_DEVICE=device))
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    return {"passed": done.returncode == 0, "summary": last}


def random_batch(vocab_size, batch_size, length, seed, pad_id=0):
    """Token ids of varied lengths (a quarter to all of `length`), padded on the right."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(length // 4, length + 1, (batch_size,), generator=g)
    mask = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.randint(1000 % vocab_size, vocab_size, (batch_size, length), generator=g)
    return {"input_ids": torch.where(mask, ids, pad_id), "token_type_ids": torch.zeros_like(ids),
            "attention_mask": mask, "labels": torch.arange(batch_size) % 2}


def with_adapters(encoder, device, seed=0):
    """LoRA on query and value (rank 8) with a non-zero B, so that A gets a gradient too."""
    lora.add_lora(encoder, ("query", "value"), rank=8, alpha=16, seed=seed)
    for m in lora.lora_layers(encoder).values():
        torch.nn.init.normal_(m.B, std=0.02, generator=torch.Generator().manual_seed(seed + 1))
    head = lora.ClassificationHead(encoder.config.hidden_size, 2, "cls", 0.0)
    return encoder.to(device), head.to(device)


def loss_and_grads(encoder, head, batch, device, bf16):
    with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
        hidden = encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
        loss = F.cross_entropy(head(hidden, batch["attention_mask"]).float(), batch["labels"])
    params = [p for p in encoder.parameters() if p.requires_grad]
    return loss.item(), torch.autograd.grad(loss, params)


def numerics(model_dir, device):
    """bf16 autocast against fp32 on one training step, and fp32 on the device against the CPU."""
    encoder, _ = checkpoint.load_checkpoint(model_dir)
    encoder.eval()  # no dropout: both steps compute the same function
    c = encoder.config
    batch = random_batch(c.vocab_size, 16, min(64, c.max_length), seed=0, pad_id=c.pad_token_id)
    with torch.no_grad():
        cpu_hidden = encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"])
    on_device = {k: v.to(device) for k, v in batch.items()}
    encoder.to(device)
    with torch.no_grad():
        hidden = encoder(on_device["input_ids"], on_device["token_type_ids"], on_device["attention_mask"])
    encoder, head = with_adapters(encoder, device)
    mask = batch["attention_mask"]
    hidden_err = (hidden.cpu() - cpu_hidden)[mask].abs().max().item()
    loss32, g32 = loss_and_grads(encoder, head, on_device, device, bf16=False)
    loss16, g16 = loss_and_grads(encoder, head, on_device, device, bf16=True)
    a, b = torch.cat([g.flatten() for g in g32]), torch.cat([g.flatten() for g in g16])
    cosine = F.cosine_similarity(a, b, dim=0).item()
    out = {"hidden_max_abs_err_vs_cpu": hidden_err, "loss_fp32": loss32, "loss_bf16": loss16,
           "loss_rel_diff": abs(loss16 - loss32) / abs(loss32), "grad_cosine": cosine,
           "grad_rel_norm_diff": ((a - b).norm() / a.norm()).item()}
    out["passed"] = hidden_err < 1e-4 and out["loss_rel_diff"] < 2e-2 and cosine > 0.99
    return out


def train_rate(encoder, head, batches, device, bf16):
    """(examples/s, seconds per step) of AdamW training steps on `batches` (the first is warm-up)."""
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=4e-4)
    encoder.train()
    for i, batch in enumerate(batches):
        if i == 1:
            sync(device)
            t0 = time.perf_counter()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            logits = head(encoder(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"]),
                          batch["attention_mask"])
        loss = F.cross_entropy(logits.float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    sync(device)
    seconds = (time.perf_counter() - t0) / (len(batches) - 1)
    return len(batches[0]["labels"]) / seconds, seconds


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


def speed(model_dir, device, dry_run):
    bf16 = device.startswith("cuda")
    steps, n = (3, 512) if dry_run else (30, 8192)
    encoder, _ = checkpoint.load_checkpoint(model_dir)
    c = encoder.config
    length = min(128, c.max_length)
    batches = [{k: v.to(device) for k, v in random_batch(c.vocab_size, 32, length, s, c.pad_token_id).items()}
               for s in range(steps + 1)]
    encoder, head = with_adapters(encoder, device)
    train_eps, step_s = train_rate(encoder, head, batches, device, bf16)
    flops = sum(bench.step_flops({k: v.cpu() for k, v in b.items()}, c, True)["real"]
                for b in batches[1:]) / steps
    peak = matmul_rate(device, n, torch.bfloat16 if bf16 else torch.float32)
    encoder.eval()
    sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), train.autocast(device):
        for b in batches:
            head(encoder(b["input_ids"], b["token_type_ids"], b["attention_mask"]), b["attention_mask"])
    sync(device)
    eval_eps = 32 * len(batches) / (time.perf_counter() - t0)
    out = {"train_examples_per_s": train_eps, "eval_examples_per_s": eval_eps,
           "train_step_tflop": flops / 1e12, "matmul_tflops": peak / 1e12,
           "fraction_of_matmul_peak": flops / step_s / peak}
    # The paper's model: a RoBERTa-large-shaped encoder with random weights, batch 64, length 128
    shape = dict(ROBERTA_LARGE, num_hidden_layers=2, hidden_size=64, num_attention_heads=4,
                 intermediate_size=128) if dry_run else ROBERTA_LARGE
    large = lora.BertEncoder(lora.BertConfig.from_dict(shape))
    large_batches = [{k: v.to(device) for k, v in random_batch(shape["vocab_size"], 64, 128, s, 1).items()}
                     for s in range(3 if dry_run else 11)]
    large, large_head = with_adapters(large, device)
    out["roberta_large_train_examples_per_s"], _ = train_rate(large, large_head, large_batches, device, bf16)
    del large, large_head
    return out


def glue_rows(data_dir, tasks):
    """{task: training rows} for those tasks whose train file is in `data_dir`."""
    import data
    rows = {}
    for name in tasks:
        try:
            examples, _ = data.load_split(data.TASKS[name], "train", data_dir)
        except data.DataError:
            continue
        rows[name] = min(len(examples), data.FULL_CAPS.get(name, len(examples)))
    return rows


def default_command(device, out, dry_run, tiny):
    """The README's two-task command on the device: wall time and the headline table."""
    args = [sys.executable, str(ROOT / "osrm_min.py"), "--tasks", "sst2,mrpc", "--device", device,
            "--out", str(out / "default")]
    if dry_run:
        args += ["--model", str(tiny["model"]), "--data-dir", str(tiny["glue"]), "--train-samples",
                 "16", "--epochs", "1", "--osrm-samples", "4", "--rank", "2", "--max-length", "32"]
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"passed": False, "wall_s": wall, "error": done.stderr.strip()[-2000:]}
    results = json.loads((out / "default" / "results.json").read_text())
    from study import tables
    table = {f"{init}/{merge}": {"lambda": lam, "average": sum(avg) / len(avg),
                                 **{t: sum(v) / len(v) for t, v in by_task.items()}}
             for init, merge, lam, by_task, avg, _ in tables.headline(results)}
    return {"passed": True, "wall_s": wall, "table": table}


def summary(r):
    lines = [f"osrm-min GPU check, {r['date']}: {r['environment'].get('gpu', r['environment']['device'])}"
             f" (driver {r['environment'].get('driver', '-')}, torch {r['environment']['torch']}, "
             f"CUDA {r['environment']['cuda']})" + (" -- DRY RUN on the CPU" if r["dry_run"] else "")]
    t, n = r["tests"], r["numerics"]
    lines.append(f"tests on the device: {'PASS' if t['passed'] else 'FAIL'} ({t['summary']})")
    lines.append(f"numerics: {'PASS' if n['passed'] else 'FAIL'}; hidden states vs CPU "
                 f"{n['hidden_max_abs_err_vs_cpu']:.1e}; bf16 loss {n['loss_rel_diff']:.1e} relative "
                 f"to fp32; gradient cosine {n['grad_cosine']:.5f}")
    s = r["speed"]
    lines.append(f"default model: training {s['train_examples_per_s']:.0f} examples/s "
                 f"({100 * s['fraction_of_matmul_peak']:.1f}% of the measured matmul rate "
                 f"{s['matmul_tflops']:.3g} TFLOP/s), evaluation {s['eval_examples_per_s']:.0f} examples/s")
    lines.append(f"RoBERTa-large shape, batch 64 x 128: {s['roberta_large_train_examples_per_s']:.0f} "
                 f"training examples/s")
    for task, hours in r["projection_hours"].items():
        lines.append(f"  the paper's protocol (10 epochs, all rows): {task} {hours:.2f} h per init and seed")
    d = r["default_command"]
    lines.append(f"default two-task command: {'PASS' if d['passed'] else 'FAIL'} in {d['wall_s']:.0f}s")
    for key, row in d.get("table", {}).items():
        lines.append(f"  {key:<16}" + "  ".join(f"{k} {v:.2f}" for k, v in row.items()
                                                 if k != "lambda" and v is not None))
    lines.append(f"total {r['wall_s']:.0f}s")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="every step on the CPU with a tiny checkpoint and tiny data")
    p.add_argument("--out", default="gpu_check", help="folder for results.json and summary.txt")
    args = p.parse_args(argv)
    if not args.dry_run and not torch.cuda.is_available():
        print("error: no CUDA GPU is visible to torch here; run it on a GPU machine, or use "
              "--dry-run to check the script on the CPU", file=sys.stderr)
        return 1
    t_start = time.perf_counter()
    device = "cpu" if args.dry_run else "cuda"
    out = Path(args.out)
    try:  # before the minutes of GPU time, not after
        resume.check_writable(out, ["results.json", "summary.txt"])
    except (config.ExperimentError, train.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        tiny = {}
        if args.dry_run:  # the test suite's own tiny checkpoint and GLUE files
            from tools import tiny as build
            tiny = {"model": Path(tmp) / "tiny-bert", "glue": Path(tmp) / "glue"}
            build.write_checkpoint(tiny["model"])
            build.write_glue(tiny["glue"])
        model_dir = tiny.get("model") or config.default_model_dir()
        r = {"date": time.strftime("%Y-%m-%d"), "dry_run": args.dry_run, "environment": environment(device)}
        steps = [("tests", lambda: device_tests(device, args.dry_run)),
                 ("numerics", lambda: numerics(model_dir, device)),
                 ("speed", lambda: speed(model_dir, device, args.dry_run)),
                 ("default_command", lambda: default_command(device, out, args.dry_run, tiny))]
        for name, step in steps:
            t0 = time.perf_counter()
            print(f"{name} ...", flush=True)
            r[name] = step()
            r[name]["seconds"] = round(time.perf_counter() - t0, 1)
        data_dir = tiny.get("glue") or os.environ.get("GLUE_DIR") or ROOT.parent / "shared" / "glue"
        rate = r["speed"]["roberta_large_train_examples_per_s"]
        r["projection_hours"] = {t: 10 * n / rate / 3600 for t, n in glue_rows(data_dir, ["sst2", "mrpc"]).items()}
    r["wall_s"] = round(time.perf_counter() - t_start, 1)
    resume.write_json_atomic(r, out / "results.json")
    text = summary(r)
    resume.write_text_atomic(text + "\n", out / "summary.txt")
    print(text)
    ok = all(r[k]["passed"] for k in ("tests", "numerics", "default_command"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

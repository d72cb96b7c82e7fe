"""How fast osrm-min fine-tunes and evaluates on this machine, against transformers + PEFT.

    python -m speed.bench            # a table (about 3 minutes on 2 CPU cores, 6 with the comparison)
    python -m speed.bench --json     # the same numbers as JSON

On the default model and real GLUE text it measures, with the model's own dropout (0.1):

- first, the default run's own workload (`python osrm_min.py`'s settings): training steps on
  its SST-2 and MRPC batches (16 rows cut from length-sorted chunks of the seeded training
  subset, so little padding) and its evaluation of both dev sets (length-sorted batches of
  128); then, for comparison, what an ungrouped loop does: random SST-2 batches of 32 (about
  two thirds padding) and SST-2 dev in file order. LoRA rank 8, alpha 16 on query and value,
  AdamW lr 4e-4; `--warmup` untimed steps, then `--steps` timed ones, `--repeats` times (the
  median repeat is reported);
- the OSRM overhead: layer statistics on 100 examples of each of two tasks plus the subspaces,
  as a fraction of one default fine-tuning run (`python osrm_min.py`'s settings; its time is
  estimated from the step time on a sample of its own batches).
- merging two tasks' adapters (TA, TIES), the peak resident memory, the matrix-multiply rate of
  this machine and the fraction of it that a training step reaches.

If `transformers` and `peft` can be imported (they are never dependencies of osrm-min; install
them in a side environment: `pip install torch==2.13.0 transformers peft`), the same batches go
through `AutoModelForSequenceClassification` + PEFT `LoraConfig(r=8, lora_alpha=16,
lora_dropout=0.0, target_modules=["query", "value"])` in this process, and the ratios are printed.
Both sides get the same examples in the same order with the same padded shapes and the same
dropout; both classify from [CLS] through the pooler.
"""

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

import data
import lora
import merge
import osrm_min
import train
from pretrained import checkpoint
from pretrained import tokenization
from speed import fastpath
from study import config


def set_dropout(encoder, p):
    """Every dropout of the encoder (hidden and attention, not LoRA's) to p."""
    for name, m in encoder.named_modules():
        if isinstance(m, torch.nn.Dropout) and not name.endswith("lora_dropout"):
            m.p = p


def step_flops(batch, c, train, rank=8):
    """FLOPs (2 per multiply-add) of one step on the padded batch and on its real tokens alone.

    Per layer and token the linear layers cost 2 (4 H^2 + 2 H I) and LoRA on two targets
    2 * 2 * 2 H r; attention costs 2 * 2 B T^2 H on the padded batch. Training adds the backward
    pass through the inputs (the frozen weights get no gradient): about the forward's cost again
    for the linear layers, and twice it for attention.
    """
    B, T = batch["input_ids"].shape
    n_real = int(batch["attention_mask"].sum())
    H, I, L = c.hidden_size, c.intermediate_size, c.num_hidden_layers
    per_token = 2 * (4 * H * H + 2 * H * I) + 8 * H * rank
    attn = 4 * B * T * T * H
    f_lin, f_attn = (2, 3) if train else (1, 1)
    return {"padded": L * (f_lin * per_token * B * T + f_attn * attn),
            "real": L * (f_lin * per_token * n_real + f_attn * attn)}


def matmul_rate():
    """GFLOP/s of a float32 matrix multiply shaped like a feed-forward layer of a batch."""
    x, w = torch.randn(2048, 384), torch.randn(1536, 384)
    seconds = timed(lambda _: F.linear(x, w), [None] * 5, [None] * 50, 5) / 50
    return 2 * 2048 * 384 * 1536 / seconds / 1e9


class Ours:
    """osrm-min's encoder with LoRA on query and value, a head, and AdamW."""

    def __init__(self, model_dir, dropout, unpad=True, pooling="cls", lr=4e-4, A_init=None):
        encoder, _ = checkpoint.load_checkpoint(model_dir)
        set_dropout(encoder, dropout)
        # the experiment's speed tricks (speed/fastpath.py), or the plain padded encoder
        self.encoder = fastpath.speed_up(encoder) if unpad else encoder
        lora.add_lora(self.encoder, ("query", "value"), rank=8, alpha=16, A_init=A_init)
        self.head = lora.ClassificationHead(self.encoder.config.hidden_size, 2, pooling, dropout,
                                            self.encoder.pooler)
        if unpad:
            fastpath.use_fast_dropout(self.head)
        self.params = [p for m in (self.encoder, self.head) for p in m.parameters()
                       if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=lr)

    def logits(self, b):
        return self.head(self.encoder(b["input_ids"], b["token_type_ids"], b["attention_mask"]),
                         b["attention_mask"])

    def train_step(self, b):
        self.encoder.train(); self.head.train()
        loss = F.cross_entropy(self.logits(b), b["labels"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()

    def eval_step(self, b):
        self.encoder.eval(); self.head.eval()
        with torch.inference_mode():
            return self.logits(b)


class TransformersPeft(Ours):
    """The same protocol through AutoModelForSequenceClassification and a PEFT LoraConfig."""

    def __init__(self, model_dir, dropout):
        import transformers
        from peft import LoraConfig, get_peft_model
        transformers.logging.set_verbosity_error()  # "newly initialised classifier" notices
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            model_dir, num_labels=2, hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout)
        self.model = get_peft_model(model, LoraConfig(
            r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
            task_type="SEQ_CLS"))
        self.encoder = self.head = self.model  # train() / eval() switch the whole model
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=4e-4)

    def logits(self, b):
        return self.model(input_ids=b["input_ids"], token_type_ids=b["token_type_ids"],
                          attention_mask=b["attention_mask"].long()).logits


def have_transformers():
    return all(importlib.util.find_spec(m) is not None for m in ("peft", "transformers"))


def throughput(seconds, batches):
    n = sum(len(b["labels"]) for b in batches)
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)  # real tokens, not padding
    return {"seconds": round(seconds, 3), "examples_per_s": round(n / seconds, 1),
            "tokens_per_s": round(tokens / seconds)}


def sst2_batches(tokenizer, data_dir, split, n, batch_size, shuffle):
    """The first n rows of a seeded shuffle of SST-2 `split`, cut into padded batches."""
    rows, _ = data.load_split(data.TASKS["sst2"], split, data_dir)
    if shuffle:
        rows = [rows[i] for i in torch.randperm(len(rows), generator=torch.Generator().manual_seed(0))]
    encoded = data.encode_examples(tokenizer, rows[:n], max_length=128)
    return data.make_batches(encoded, batch_size, pad_id=tokenizer.pad_id)


def round_robin(fns, warmup_items, items, repeats):
    """{name: [seconds per repeat]}: each repeat times every fn over `items` in turn, so that a
    slow spell of a shared machine hits all of them alike."""
    for fn in fns.values():
        for item in warmup_items:
            fn(item)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            for item in items:
                fn(item)
            times[name].append(time.perf_counter() - t0)
    return times


def timed(fn, warmup_items, items, repeats):
    """Median over `repeats` of the seconds `fn` takes over `items`, after a warm-up."""
    return statistics.median(round_robin({"fn": fn}, warmup_items, items, repeats)["fn"])


def summarise(times, batches):
    """Throughput at the median repeat; the speed-up over transformers + PEFT is the median of
    the repeats' ratios."""
    out = {name: throughput(statistics.median(t), batches) for name, t in times.items()}
    if "transformers_peft" in times:
        out["speedup"] = round(statistics.median(
            theirs / ours for theirs, ours in zip(times["transformers_peft"], times["ours"])), 2)
    return out


def bench_sides(sides, workloads, repeats, dropout):
    """{workload: throughput of each side}: every side trains on (or scores) the very same
    batches in turn; workloads: {name: ("train" or "eval", warm-up batches, timed batches)}."""
    built = {}
    for name, make in sides.items():
        torch.manual_seed(0)
        built[name] = make(dropout)
    out = {}
    for label, (kind, warm, batches) in workloads.items():
        steps = {n: s.train_step if kind == "train" else s.eval_step for n, s in built.items()}
        out[label] = summarise(round_robin(steps, warm, batches, repeats), batches)
        print(f"  {label}: {out[label]}", file=sys.stderr, flush=True)
    return out


def run_batches(tokenizer, data_dir, task, steps, warmup):
    """What `python osrm_min.py` trains and scores on for `task`, with its defaults: training
    batches of 16 cut from length-sorted chunks of its seeded 8000-row subset (seed 42; the
    (warmup, steps) batches spread over the epoch), and its dev set in length-sorted batches
    of 128, as data.prepare_tasks makes them."""
    cfg = config.Config(tasks=(task, "sst2" if task != "sst2" else "mrpc"))
    rows, _ = data.load_split(data.TASKS[task], "train", data_dir)
    encoded = data.encode_examples(tokenizer, data.train_subset(task, rows, cfg.train_samples, cfg.seeds[0])[0],
                                   cfg.max_length)
    epoch = data.make_batches(encoded, cfg.batch_size, shuffle=True, seed=osrm_min.task_seed(cfg.seeds[0], task),
                              group_by_length=cfg.group_by_length, pad_id=tokenizer.pad_id)
    picked = epoch[::max(1, len(epoch) // (warmup + steps))][:warmup + steps]
    dev, _ = data.load_split(data.TASKS[task], "dev", data_dir)
    dev = data.make_batches(data.encode_examples(tokenizer, dev, cfg.max_length), cfg.eval_batch_size,
                            group_by_length=True, pad_id=tokenizer.pad_id)
    return picked[:warmup], picked[warmup:], dev


def padding(batches):
    """The share of the batches' positions that are padding."""
    return 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["input_ids"].numel() for b in batches)


def bench_osrm(model_dir, data_dir, tokenizer, repeats):
    """OSRM's statistics and subspaces for two tasks (sst2, mrpc) against one default fine-tune.

    The fine-tune (SST-2 with `python osrm_min.py`'s settings) is estimated from its step time
    on 40 of its own batches, spread over the epoch, times its number of steps. The two are
    timed in turn, `repeats` times; the fraction is the median of the repeats' fractions.
    """
    cfg = config.Config(tasks=("sst2", "mrpc"), model=str(model_dir), data_dir=str(data_dir))
    with contextlib.redirect_stdout(sys.stderr):  # its notes, away from --json's output
        prepared = data.prepare_tasks(cfg.tasks, cfg.data_dir, tokenizer,
                                      replace(cfg.sampling, measure=0), cfg.seeds[0])
    encoder, pooling = checkpoint.load_checkpoint(model_dir)

    def osrm_subspaces(_):
        with contextlib.redirect_stdout(sys.stderr):
            stats = osrm_min.layer_statistics(encoder, cfg, prepared, "stats")
        return {n: osrm_min.osrm_init(stats, n, cfg.rank, osrm_min.INITS["osrm"].statistic)
                for n in cfg.tasks}

    batches = data.make_batches(prepared["sst2"].train, cfg.batch_size, shuffle=True,
                                seed=cfg.seeds[0], group_by_length=True, pad_id=tokenizer.pad_id)
    sample = batches[::max(1, len(batches) // 40)][:40]
    # Ours' adapter is the default's (rank 8, alpha 16, query and value), started as OSRM's
    side = Ours(model_dir, encoder.config.hidden_dropout_prob, pooling=pooling, lr=cfg.lr,
                A_init=osrm_subspaces(0)["sst2"])
    finetune = lambda _: train.finetune(side.encoder, side.head, lambda e: sample,
                                        train.TrainSettings(1, cfg.lr))
    times = round_robin({"osrm": osrm_subspaces, "sample": finetune}, [None], [None], repeats)
    steps = cfg.epochs * len(batches)
    fractions = [o / (f / len(sample) * steps) for o, f in zip(times["osrm"], times["sample"])]
    return {"stats_and_subspaces_s": round(statistics.median(times["osrm"]), 2),
            "default_finetune_s": round(statistics.median(times["sample"]) / len(sample) * steps, 1),
            "steps": steps, "fraction": round(statistics.median(fractions), 4)}


def bench_merge(model_dir, repeats=5):
    """Seconds to merge two tasks' adapters (random A and B of the right shapes)."""
    encoder, _ = checkpoint.load_checkpoint(model_dir)
    tvs = []
    for seed in (1, 2):
        lora.add_lora(encoder, ("query", "value"), 8, 16,
                      A_init=lora.random_As(encoder, ("query", "value"), 8, seed))
        for m in lora.lora_layers(encoder).values():
            m.B.data.normal_(0, 0.01)
        tvs.append(lora.delta_weights(encoder))
    out = {}
    for method, lam in (("ta", 0.7), ("ties", 1.0)):
        seconds = timed(lambda _: merge.merge_task_vectors(tvs, method, lam), [None], [None], repeats)
        out[method] = round(seconds, 4)
    return out


def bench_epoch(model_dir, tokenizer, data_dir, n_rows):
    """A training epoch at batch 32 over `n_rows` SST-2 rows, with and without length grouping.

    The padded and real token counts are also given for a whole SST-2 epoch.
    """
    rows, _ = data.load_split(data.TASKS["sst2"], "train", data_dir)
    encoded = data.encode_examples(tokenizer, rows, max_length=128)
    side = Ours(model_dir, 0.1)
    out = {}
    for grouped in (False, True):
        batch = lambda enc: data.make_batches(enc, 32, shuffle=True, seed=0,
                                              group_by_length=grouped, pad_id=tokenizer.pad_id)
        whole, part = batch(encoded), batch(encoded[:n_rows])
        seconds = timed(side.train_step, part[:2], part, 1)
        out["grouped" if grouped else "random"] = {
            "rows": n_rows, "seconds": round(seconds, 1),
            "padded_tokens": sum(b["input_ids"].numel() for b in part),
            "full_epoch_padded_tokens": sum(b["input_ids"].numel() for b in whole),
            "full_epoch_real_tokens": sum(int(b["attention_mask"].sum()) for b in whole)}
    return out


def machine():
    cpu = "unknown CPU"
    if os.path.exists("/proc/cpuinfo"):
        names = [l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": sys.version.split()[0]}


def run(args, model_dir, data_dir):
    tokenizer = tokenization.load_tokenizer(model_dir)
    config = checkpoint.load_checkpoint(model_dir)[0].config
    checkpoint.check_tokenizer(model_dir, config, tokenizer, pairs=True)  # MRPC's
    # first the default run's own batches, then what an ungrouped loop does
    workloads = {}
    for task in ("sst2", "mrpc"):
        warm, batches, dev = run_batches(tokenizer, data_dir, task, args.steps, args.warmup)
        workloads[f"{task} train, the run's batches (16, grouped)"] = ("train", warm, batches)
        workloads[f"{task} dev, the run's evaluation"] = ("eval", dev[:1], dev)
    batches = sst2_batches(tokenizer, data_dir, "train", 32 * (args.warmup + args.steps), 32, True)
    workloads["sst2 train, random batches (32, ungrouped)"] = ("train", batches[:args.warmup],
                                                               batches[args.warmup:])
    dev = sst2_batches(tokenizer, data_dir, "dev", None, args.eval_batch_size, False)
    workloads["sst2 dev, in file order (128)"] = ("eval", dev[:1], dev)
    results = {"machine": machine(),
               "padding": {k: round(padding(w[2]), 3) for k, w in workloads.items()}}
    rates = [matmul_rate()]

    results["osrm"] = bench_osrm(model_dir, data_dir, tokenizer, args.repeats)
    results["merge_s"] = bench_merge(model_dir)
    if args.epoch_rows:
        results["epoch"] = bench_epoch(model_dir, tokenizer, data_dir, args.epoch_rows)
    results["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)

    sides = {"ours": lambda d: Ours(model_dir, d),
             "ours_padded": lambda d: Ours(model_dir, d, unpad=False)}
    if args.no_compare or not have_transformers():
        results["transformers_peft"] = ("skipped (--no-compare)" if args.no_compare else
                                        "not installed: pip install transformers peft (in a side "
                                        "environment) to compare")
    else:
        import peft, transformers
        results["transformers_peft"] = f"transformers {transformers.__version__}, peft {peft.__version__}"
        sides["transformers_peft"] = lambda d: TransformersPeft(model_dir, d)
    results["workloads"] = bench_sides(sides, workloads, args.repeats, config.hidden_dropout_prob)

    # The arithmetic ceiling: FLOPs of the timed training steps over their time, against the
    # matrix-multiply rate (the best of two measurements: a shared machine has slow spells).
    rates.append(matmul_rate())
    results["matmul_gflops"] = round(max(rates), 1)
    results["ceiling"] = {}
    for label, (kind, _, batches) in workloads.items():
        if kind != "train":
            continue
        flops = {k: sum(step_flops(b, config, True)[k] for b in batches) for k in ("real", "padded")}
        for side, r in results["workloads"][label].items():
            if side != "speedup":  # the packed path computes real tokens only; the others, all
                work = flops["real"] if side == "ours" else flops["padded"]
                results["ceiling"][f"{side}, {label}"] = round(work / r["seconds"] / 1e9 / results["matmul_gflops"], 3)
    results["settings"] = {"max_length": 128, "rank": 8, "alpha": 16, "targets": ["query", "value"],
                           "lr": 4e-4, "dropout": config.hidden_dropout_prob,
                           "warmup_steps": args.warmup, "timed_steps": args.steps,
                           "repeats": args.repeats, "eval_batch_size": args.eval_batch_size}
    return results


def report(r):
    m = r["machine"]
    lines = [f"osrm-min bench: {m['cpu']}, {m['cores']} cores, {m['torch_threads']} torch threads, "
             f"torch {m['torch']}",
             f"matrix multiply (float32): {r['matmul_gflops']} GFLOP/s",
             f"transformers + PEFT: {r['transformers_peft']}", ""]
    cols = [("ours", "osrm-min"), ("ours_padded", "padded path"), ("transformers_peft", "HF+PEFT")]
    lines.append(f"{'examples/s (dropout ' + str(r['settings']['dropout']) + ')':<46}{'padding':>8}"
                 + "".join(f"{c[1]:>13}" for c in cols) + f"{'speed-up':>10}")
    for label, v in r["workloads"].items():
        cells = "".join(f"{v[k]['examples_per_s']:>13.1f}" if k in v else f"{'-':>13}" for k, _ in cols)
        ratio = f"{v['speedup']:>9.2f}x" if "speedup" in v else f"{'-':>10}"
        lines.append(f"{label:<46}{r['padding'][label]:>8.0%}{cells}{ratio}")
    lines += ["", "share of the matrix-multiply rate a training step reaches (FLOPs on the tokens "
                  "each side computes):"]
    lines += [f"  {k}: {v:.0%}" for k, v in r["ceiling"].items()]
    o = r["osrm"]
    lines += ["", f"OSRM statistics + subspaces (2 tasks x 100 examples): {o['stats_and_subspaces_s']:.2f}s "
              f"= {o['fraction']:.2%} of a default fine-tune ({o['steps']} steps, est. "
              f"{o['default_finetune_s']:.0f}s)",
              f"merging two adapters: TA {r['merge_s']['ta'] * 1e3:.1f} ms, TIES {r['merge_s']['ties'] * 1e3:.1f} ms"]
    if "epoch" in r:
        e = r["epoch"]
        lines.append(f"an epoch of {e['random']['rows']} SST-2 rows, batch 32: random batches "
                     f"{e['random']['seconds']:.1f}s, length-grouped {e['grouped']['seconds']:.1f}s "
                     f"(padded tokens {e['random']['padded_tokens']} vs {e['grouped']['padded_tokens']}; a whole "
                     f"epoch: {e['random']['full_epoch_padded_tokens']} vs "
                     f"{e['grouped']['full_epoch_padded_tokens']} for {e['random']['full_epoch_real_tokens']} real)")
    lines.append(f"peak resident memory (osrm-min part): {r['peak_rss_mib']} MiB")
    return "\n".join(lines)


def main(argv=None):
    train.PROGRESS = False  # timings without progress bars
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.add_argument("--model", default=None, help="BERT folder; default: the installed weights")
    p.add_argument("--data-dir", default=None, help="GLUE folder; default: $GLUE_DIR")
    p.add_argument("--steps", type=int, default=20, help="timed training steps per repeat")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed repeats; the median is reported")
    p.add_argument("--eval-batch-size", type=int, default=128, help="SST-2 dev, in file order")
    p.add_argument("--epoch-rows", type=int, default=3200,
                   help="SST-2 rows of the epoch timed with and without length grouping (0: skip)")
    p.add_argument("--no-compare", action="store_true",
                   help="skip transformers + PEFT even if they are installed")
    args = p.parse_args(argv)
    least = {"steps": 1, "repeats": 1, "warmup": 0, "eval_batch_size": 1, "epoch_rows": 0}
    low = next((name for name, n in least.items() if getattr(args, name) < n), None)
    if low:
        print(f"error: {config.flag(low)} must be at least {least[low]}", file=sys.stderr)
        return 2
    try:
        model_dir = Path(args.model) if args.model else config.default_model_dir()
        data_dir = config.find_data_dir(args.data_dir)
        results = run(args, model_dir, data_dir)
    except (data.DataError, checkpoint.CheckpointError, config.ExperimentError,
            train.TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file that cannot be read
        print(f"error: {e.strerror or e}: {e.filename or ''}", file=sys.stderr)
        return 2
    print(json.dumps(results, indent=1) if args.json else report(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())

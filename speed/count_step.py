"""What one training step asks of the host, counted on the CPU: the aten operators it runs
(about one kernel launch each on a GPU, but for views and allocations) and its host syncs
(reads of a device value, which make the host wait until the GPU has caught up), per step of
train.finetune, with the CPU's speed choices and with the GPU's forced (speed/fastpath.py's
StepChoices). On a GPU a step whose kernels are short costs about launches x 5 us of host
time, plus every sync; this is how to see that without one.

    python -m speed.count_step                  # RoBERTa-large's shapes, random weights
    python -m speed.count_step --hidden 64 --intermediate 256 --autocast   # and in bf16

RoBERTa-large's shapes (24 layers, hidden 1024, 16 heads, intermediate 4096, its vocabulary),
random weights, LoRA rank 8 on query and value, a RoBERTa head, dropout 0.1, batch 64 of
`--length` tokens with a little padding, as length-grouped batches have (`--padding`). The
counts depend on the number of layers, not on the widths, the batch or the length, except on
the packed path (CPU choices, a quarter of the batch or more padding), which loops over groups
of 8 sequences. A step on 2 CPU cores takes one to four minutes at these shapes. `--autocast`
counts the GPU's choices once more under bf16 autocast (the CPU's, standing in for CUDA's),
whose casts a GPU launches too, with the frozen base in float32 and in bf16 (`base_bf16`); bf16
matrix products are slow on most CPUs, so count those at small widths.
"""

import argparse
import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, replace

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

import lora
import train
from speed import fastpath

# Calls that read a tensor's value on the host: on a GPU each waits for the device. Indexing
# with a boolean mask does too (it must count the True entries first), as does nonzero.
SYNCS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy, torch.Tensor.__bool__,
         torch.Tensor.__float__, torch.Tensor.__int__, torch.Tensor.__index__,
         torch.Tensor.__complex__, torch.Tensor.nonzero, torch.nonzero, torch.argwhere,
         torch.Tensor.masked_select, torch.masked_select, torch.Tensor.unique, torch.unique,
         torch.Tensor.repeat_interleave, torch.repeat_interleave}
INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__}

# Operators that launch no kernel on a GPU: they only allocate or make a new view of memory.
NO_KERNEL = {"aten::_unsafe_view", "aten::empty", "aten::empty_strided", "aten::lift_fresh"}


class OpCounter(TorchDispatchMode):
    """Counts the aten operators that run inside it: `ops` in all, `kernels` of them not views
    or allocations (about what a GPU launches), `names` by name."""

    def __init__(self):
        super().__init__()
        self.ops, self.kernels, self.names = 0, 0, Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        self.ops += 1
        self.kernels += not (func.is_view or name in NO_KERNEL)
        self.names[name] += 1
        return func(*args, **(kwargs or {}))


class SyncCounter(TorchFunctionMode):
    """Counts the calls inside it that read a tensor's value on the host (`SYNCS`, and indexing
    with a boolean tensor), by name in `names`. Not counted: torch.optim's reads of AdamW's step
    counters, which PyTorch keeps on the host (when not fused) so that reading them never waits
    for the device."""

    def __init__(self):
        super().__init__()
        self.syncs, self.names = 0, Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1).f_globals.get("__name__", "")
        if (func in SYNCS or func in INDEXING and _boolean_index(args)) and not caller.startswith("torch.optim"):
            self.syncs += 1
            self.names[getattr(func, "__name__", str(func))] += 1
        return func(*args, **kwargs)


def _boolean_index(args):
    index = args[1] if len(args) > 1 else None
    parts = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in parts)


@dataclass
class StepCount:
    ops: int      # aten operators
    kernels: int  # of them, neither views nor allocations: about the kernels a GPU launches
    syncs: int    # host syncs


def count_steps(model, head, batches, choices, lr=4e-4, autocast=False):
    """[StepCount of each step] of one epoch of train.finetune over `batches` with `choices`,
    model and head made ready for them (fastpath.speed_up, use_fast_dropout); with
    `autocast`, in the CPU's bf16 autocast (`cpu_autocast`). A step runs from fetching its
    batch to fetching the next: the first makes AdamW's state, the last holds the checks after
    the loop. Also returns the counters, whose `names` say what ran."""
    ops, syncs = OpCounter(), SyncCounter()
    marks = []  # (ops, kernels, syncs) each time the loop fetches a batch, and at the end

    class Epoch(list):  # a list of the batches that marks where each step begins
        def __iter__(self):
            for batch in list.__iter__(self):
                marks.append((ops.ops, ops.kernels, syncs.syncs))
                yield batch

    bf16 = autocast and choices.base_bf16  # fastpath.precision does this on CUDA
    with (cpu_autocast() if autocast else contextlib.nullcontext(),
          fastpath.base_in_bf16(model) if bf16 else contextlib.nullcontext(), ops, syncs):
        train.finetune(model, head, lambda epoch: Epoch(batches), train.TrainSettings(1, lr, warmup=0.0),
                       choices=choices)
    marks.append((ops.ops, ops.kernels, syncs.syncs))
    steps = [StepCount(*(b - a for a, b in zip(m, n))) for m, n in zip(marks, marks[1:])]
    return steps, ops, syncs


@contextlib.contextmanager
def cpu_autocast():
    """Within the block, train.autocast is the CPU's bf16 autocast: what CUDA's does to a step,
    on the CPU, for counting its casts. (train.autocast is off on a CPU otherwise.)"""
    cuda_autocast = train.autocast
    train.autocast = lambda device, enabled=True: torch.autocast("cpu", dtype=torch.bfloat16,
                                                                 enabled=enabled)
    try:
        yield
    finally:
        train.autocast = cuda_autocast


def roberta_large(layers=24, hidden=1024, heads=16, intermediate=4096):
    """RoBERTa-large's configuration (its widths may be shrunk for a quick count)."""
    return lora.BertConfig(model_type="roberta", vocab_size=50265, hidden_size=hidden,
                           num_hidden_layers=layers, num_attention_heads=heads,
                           intermediate_size=intermediate, max_position_embeddings=514,
                           type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1)


def model_for(config, choices, seed=0):
    """A random encoder of `config` with LoRA rank 8 on query and value and a RoBERTa head, made
    ready for `choices`: (model, head)."""
    torch.manual_seed(seed)
    encoder = lora.BertEncoder(config)
    lora.add_lora(encoder, ("query", "value"), rank=8, alpha=16,
                  A_init=lora.random_As(encoder, ("query", "value"), 8, seed))
    head = lora.ClassificationHead(config.hidden_size, 2, "roberta", 0.1)
    return fastpath.speed_up(encoder, choices), fastpath.use_fast_dropout(head, choices)


def batch_of(config, size, length, padding, seed=0):
    """A padded batch of `size` random sequences, their lengths spread evenly from
    (1 - 2 padding) length to length, so that about `padding` of it is padding."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.linspace(max(1.0, (1 - 2 * padding) * length), length, size).round().long()
    mask = torch.arange(length)[None, :] < lengths[:, None]  # (B, T)
    ids = torch.randint(3, config.vocab_size, (size, length), generator=g)
    ids = ids.masked_fill(~mask, config.pad_token_id)
    return {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "attention_mask": mask,
            "labels": torch.randint(0, 2, (size,), generator=g)}


def main(argv=None):
    train.PROGRESS = False  # timings without progress bars
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=24)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--heads", type=int, default=16)
    p.add_argument("--intermediate", type=int, default=4096)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--length", type=int, default=40, help="padded length of a batch (default 40: "
                   "about the mean of the paper's tasks in length-grouped batches of 64)")
    p.add_argument("--padding", type=float, default=0.05, help="fraction of the batch that is padding")
    p.add_argument("--autocast", action="store_true", help="the GPU's choices in bf16 autocast too")
    args = p.parse_args(argv)
    config = roberta_large(args.layers, args.hidden, args.heads, args.intermediate)
    batch = batch_of(config, args.batch, args.length, args.padding)
    real = int(batch["attention_mask"].sum())
    print(f"{args.layers} layers, hidden {args.hidden}, {args.heads} heads, intermediate "
          f"{args.intermediate}; batch {args.batch} x {args.length} tokens, "
          f"{1 - real / batch['input_ids'].numel():.1%} padding; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    # the GPU's choices with a check every 3 steps: step 2 lies between checks, step 3 has one
    gpu = replace(fastpath.GPU, check_every=3)
    runs = {"CPU choices (today's)": (fastpath.CPU, False, 3), "GPU choices, forced": (gpu, False, 4)}
    if args.autocast:
        runs["  in bf16 autocast"] = (gpu, True, 4)
        runs["  and the base in bf16"] = (replace(gpu, base_bf16=True), True, 4)
    print(f"{'per training step':<26}{'aten ops':>10}{'kernels':>10}{'host syncs':>12}")
    for name, (choices, autocast, n) in runs.items():
        t0 = time.time()
        steps, ops, syncs = count_steps(*model_for(config, choices), [batch] * n, choices,
                                        autocast=autocast)
        s = steps[1]  # neither the first (AdamW's state is made) nor the last (the final checks)
        print(f"{name:<26}{s.ops:>10,}{s.kernels:>10,}{s.syncs:>12}"
              f"   ({(time.time() - t0) / n:.0f} s a step here)")
        if choices.check_every > 1 and not autocast:
            c = steps[2]
            print(f"{'  a step with a check':<26}{c.ops:>10,}{c.kernels:>10,}{c.syncs:>12}"
                  f"   (every {fastpath.GPU.check_every} steps in a run)")
        sys.stdout.flush()


if __name__ == "__main__":
    main()

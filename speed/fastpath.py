"""Speed tricks for the encoder of lora.py and for train.py's steps, kept apart from the plain
code a reader follows and switched on by the experiment (`speed_up`, `step_choices`); the plain
encoder knows nothing of them.

Each computes what the plain code computes (a GPU's steps in bf16 autocast); the tests in
tests/speed/ hold each to the plain version (hidden states on real tokens within 1e-5, LoRA
gradients within 1e-4 relative, the dropout rate and scaling, the training losses), and
speed/bench.py measures what they save on a CPU. Which tricks a step takes depends on the
device (`StepChoices`):

1. `Packed` / `encode_packed` (CPU): a batch cut from randomly drawn sentences is mostly padding
   (two thirds for 32 SST-2 sentences). The linear layers, nearly all of the work, then run on
   the N real tokens alone, and attention, the only step that mixes tokens, pads each group of
   8 similar-length sentences only to its own longest. Taken when at least
   `PACK_ABOVE_PADDING` of a batch is padding.
2. `FastDropout` (CPU): inverted dropout with its mask from 16-bit slices of random 64-bit
   integers, cheaper on a CPU than the sampler behind F.dropout (`keep_mask`).
3. On a GPU, where the cost of a step is launching its kernels and waiting for the device, not
   the arithmetic: the padded batch as it is (deciding to pack would read the mask back to the
   host), `fused_attention`, F.dropout, fused AdamW, losses read every `check_every` steps, and
   evaluation in bf16 autocast as training (speed/count_step.py counts what a step launches).

    model = fastpath.speed_up(encoder)   # the same encoder, the same parameters, faster
    head = fastpath.use_fast_dropout(head)
    hidden = model(input_ids, token_type_ids, attention_mask)
"""

import contextlib
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import lora

# Packing tokens costs gathers, scatters and a loop over attention groups, so it pays only on
# batches with much padding; PERFORMANCE.md has the measurements (speed/bench.py) behind the
# threshold.
PACK_ABOVE_PADDING = 0.25


@dataclass(frozen=True)
class StepChoices:
    """How a training or scoring step runs on its device: every field a speed choice around the
    plain code of lora.py and train.py, which computes the same function without it. On a CPU
    the arithmetic is the cost; on a GPU, launching kernels and waiting for the device, so that
    a step must never read a value back to the host (a "host sync": .item(), bool(tensor), ...)."""
    packed: bool = True        # linear layers on real tokens only, where a batch is padded enough
                               # (`pays_off`, which reads the mask back: a sync every forward)
    fast_dropout: bool = True  # FastDropout's cheap CPU masks; else F.dropout (one kernel on a GPU)
    fused_attention: bool = False  # attention by F.scaled_dot_product_attention (`fused_attention`)
    fused_adamw: bool = False  # AdamW in one kernel for all parameters (fused=True), not ~9 each
    check_every: int = 1       # steps between reads of the losses and gradient norms to the host
                               # (progress bar, the check that they are finite)
    eval_autocast: bool = False  # scoring under training's bf16 autocast (on CUDA only)
    tf32: bool = False         # float32 matrix products in TF32 within the steps (on CUDA only)
    base_bf16: bool = False    # frozen linear weights held in bf16 within the steps (on CUDA only;
                               # `base_in_bf16`); A, B, the head and AdamW's state stay float32
    pin_memory: bool = False   # batches copied from pinned memory, without waiting (with CUDA)

    def __post_init__(self):
        if self.base_bf16 and not self.eval_autocast:
            raise ValueError("base_bf16 needs eval_autocast: a float32 forward would meet bf16 weights")


CPU = StepChoices()  # what the published CPU numbers were made with
GPU = StepChoices(packed=False, fast_dropout=False, fused_attention=True, fused_adamw=True,
                  check_every=50, eval_autocast=True, tf32=True, pin_memory=True)


def step_choices(device):
    """The choices for `device` (a str or torch.device): GPU's on CUDA, CPU's elsewhere. Pass
    either one explicitly (speed_up(..., choices=GPU), train.finetune(..., choices=GPU)) to run
    a GPU's step on the CPU, as the tests and speed/count_step.py do."""
    return GPU if torch.device(device).type == "cuda" else CPU


def device_of(module):
    """Where `module`'s parameters are (the CPU if it has none)."""
    return next(module.parameters(), torch.empty(0)).device


def pays_off(attention_mask):
    """True when enough of the batch (B, T) is padding for packing to be faster."""
    return bool(attention_mask.sum() <= (1 - PACK_ABOVE_PADDING) * attention_mask.numel())


class Layout:
    """Where a batch's real tokens go for attention.

    x holds only the N real tokens, in the batch's order (`real` says where each sat in the
    flattened (B*T) batch). Each group is a few sequences of similar length, padded only to
    their own longest: `rows` picks the group's tokens from x, `slots` says where they sit in
    its padded (B_g * T_g) block, `bias` is its attention bias (lora.padding_bias of its mask);
    `order` puts the concatenated groups' outputs back in x's order.
    """

    def __init__(self, mask, padding_bias, dtype, group_size=8):
        B, T = mask.shape
        self.real = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
        index = torch.full((B, T), -1, device=mask.device)
        index.view(-1)[self.real] = torch.arange(len(self.real), device=mask.device)  # token -> row of x
        extent = (mask * torch.arange(1, T + 1, device=mask.device)).amax(1)  # last real + 1
        self.groups, rows_all = [], []
        for seqs in extent.argsort(stable=True).split(group_size):  # similar lengths together
            m = mask[seqs, :int(extent[seqs].max())]  # (B_g, T_g)
            rows = index[seqs, :m.shape[1]][m]  # the group's tokens, as rows of x
            slots = m.reshape(-1).nonzero().squeeze(1)  # where they go in the padded block
            self.groups.append((rows, slots, padding_bias(m, dtype)))
            rows_all.append(rows)
        self.order = torch.cat(rows_all).argsort()

    def self_attention(self, qkv, block):
        """block's multi-head attention on packed tokens: qkv (N, 3H) -> (N, H)."""
        H, nh = qkv.shape[-1] // 3, block.n_head
        parts = []
        for rows, slots, bias in self.groups:
            B, T = bias.shape[0], bias.shape[-1]  # sequences in the group, their padded length
            # this group's tokens into padded rows, zeros at padding
            group = qkv.new_zeros(B * T, 3 * H).index_copy(0, slots, qkv[rows])
            q, k, v = group.view(B, T, 3, nh, H // nh).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hd)
            y = block.attend(q, k, v, bias)
            parts.append(y.transpose(1, 2).reshape(B * T, H)[slots])
        return torch.cat(parts)[self.order]


def encode_packed(blocks, x, attention_mask):
    """The transformer blocks on the real tokens only: x (B, T, H) -> (B, T, H), the same
    function as lora.BertEncoder's loop over them, with zeros at the padding."""
    B, T, H = x.shape
    layout = Layout(attention_mask, lora.padding_bias, x.dtype)
    x = x.reshape(B * T, H)[layout.real]  # (N, H)
    for block in blocks:
        qkv = torch.cat([block.query(x), block.key(x), block.value(x)], -1)  # (N, 3H)
        x = block.per_token(x, layout.self_attention(qkv, block))
    return x.new_zeros(B * T, H).index_copy(0, layout.real, x).view(B, T, H)


def keep_mask(x, p):
    """A dropout mask for x: True (keep) with probability 1 - p, with p rounded to a multiple
    of 1/65536 (0.1 -> 0.100006).

    Each random 64-bit integer gives four 16-bit uniform draws, kept where they clear the
    p-quantile: cheaper on a CPU than F.dropout's sampler (PERFORMANCE.md has the numbers).
    """
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
    draws = bits.view(torch.int16)[:n].view(x.shape)  # uniform on -32768 .. 32767
    return draws >= round(p * 65536) - 32768


class FastDropout(nn.Dropout):
    """nn.Dropout with its mask from `keep_mask`: zero each value with probability p (rounded
    to a multiple of 1/65536), scale the others by 1 / (1 - p); off in eval mode or at p = 0."""

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        return x * keep_mask(x, self.p) * (1.0 / (1.0 - self.p))


def use_fast_dropout(module, choices=None):
    """Swap every nn.Dropout inside `module` for a FastDropout of the same rate, in place (a
    dropout has no parameters, so state dicts are unchanged), where `choices` (by default those
    of the module's device) take FastDropout; returns `module`."""
    if not (choices or step_choices(device_of(module))).fast_dropout:
        return module
    for parent in list(module.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p).train(child.training))
    return module


class Packed(lora.BertEncoder):
    """`encoder` (a lora.BertEncoder) computing on the real tokens only where enough of a batch
    is padding (`pays_off`), and as itself elsewhere. It holds the very same modules under the
    same names, so an adapter put into either is in both."""

    def __init__(self, encoder):
        nn.Module.__init__(self)
        self.config = encoder.config
        self.embeddings, self.layers, self.pooler = encoder.embeddings, encoder.layers, encoder.pooler
        self.has_pretrained_pooler = getattr(encoder, "has_pretrained_pooler", False)

    def forward(self, input_ids, token_type_ids, attention_mask):
        if not pays_off(attention_mask):
            return super().forward(input_ids, token_type_ids, attention_mask)
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        return encode_packed(self.layers, x, attention_mask)


def fused_attention(q, k, v, bias, dropout):
    """lora.attention in one call of F.scaled_dot_product_attention: softmax(q k^T / sqrt(d) +
    bias) v with dropout's rate on the weights while training, (B, nh, T, hd) -> (B, nh, T, hd).
    One fused kernel on a GPU; on this project's CPUs it was slower (PERFORMANCE.md)."""
    p = dropout.p if dropout.training else 0.0
    # the (B, 1, 1, T) bias in q's dtype (bf16 under autocast), as the fused kernels take it
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p)


def speed_up(encoder, choices=None):
    """`encoder` as `choices` (by default those of its device, `step_choices`) run it: on a CPU
    its dropouts made FastDropouts (in place) and a Packed view of it to run the forward passes
    of training and scoring through; on a GPU its attention fused (in place) and the encoder
    itself, padded batches and all. The same modules and parameters either way."""
    choices = choices or step_choices(device_of(encoder))
    use_fast_dropout(encoder, choices)
    for block in encoder.layers:
        block.attention = fused_attention if choices.fused_attention else lora.attention
    return Packed(encoder) if choices.packed else encoder


@contextlib.contextmanager
def precision(encoder, device, choices):
    """Within the block, on CUDA: float32 matrix products in TF32 (`choices.tf32`; under
    autocast few are left) and the frozen base in bf16 (`choices.base_bf16`, `base_in_bf16`);
    both undone afterwards. Nothing changes on other devices."""
    if torch.device(device).type != "cuda":
        yield
        return
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32 or choices.tf32
    try:
        with base_in_bf16(encoder) if choices.base_bf16 else contextlib.nullcontext():
            yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32


@contextlib.contextmanager
def base_in_bf16(encoder):
    """Within the block, the frozen weights and biases of the encoder's linear layers are held
    in bf16: the very values that bf16 autocast casts them to at every forward (so a forward
    under autocast gives the same outputs, without those casts, on half the memory traffic).
    Afterwards the float32 tensors are put back, exactly. Only under autocast: a float32
    forward would meet bf16 weights."""
    saved = []
    for m in encoder.modules():
        if isinstance(m, lora.LoRALinear):
            for p in (m.weight, m.bias):
                if p is not None and not p.requires_grad:
                    saved.append((p, p.data))
                    p.data = p.data.to(torch.bfloat16)
    try:
        yield encoder
    finally:
        for p, data in saved:
            p.data = data

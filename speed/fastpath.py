"""Speed tricks for the encoder of lora.py, kept apart from the plain code a reader follows and
switched on by the experiment (`speed_up`); the plain encoder knows nothing of them.

Neither changes what the encoder computes; tests/speed/test_fastpath.py holds each to the plain
version (hidden states on real tokens within 1e-5, LoRA gradients within 1e-4 relative, the
dropout rate and scaling), and speed/bench.py measures what they save.

1. `Packed` / `encode_packed`: a batch cut from randomly drawn sentences is mostly padding (two
   thirds for 32 SST-2 sentences). The linear layers, nearly all of the work, then run on the
   N real tokens alone, and attention, the only step that mixes tokens, pads each group of 8
   similar-length sentences only to its own longest. Taken when at least
   `PACK_ABOVE_PADDING` of a batch is padding.
2. `FastDropout`: inverted dropout with its mask from 16-bit slices of random 64-bit integers,
   cheaper on a CPU than the sampler behind F.dropout (`keep_mask`).

    model = fastpath.speed_up(encoder)   # the same encoder, the same parameters, faster
    head = fastpath.use_fast_dropout(head)
    hidden = model(input_ids, token_type_ids, attention_mask)
"""

import torch
import torch.nn as nn

import lora

# Packing tokens costs gathers, scatters and a loop over attention groups, so it pays only on
# batches with much padding; PERFORMANCE.md has the measurements (speed/bench.py) behind the
# threshold.
PACK_ABOVE_PADDING = 0.25


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


def use_fast_dropout(module):
    """Swap every nn.Dropout inside `module` for a FastDropout of the same rate, in place (a
    dropout has no parameters, so state dicts are unchanged); returns `module`."""
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


def speed_up(encoder):
    """Both tricks on: `encoder`'s dropouts made FastDropouts (in place) and a Packed view of it
    to run the forward passes of training and scoring through."""
    return Packed(use_fast_dropout(encoder))

"""The model: a BERT (or RoBERTa) encoder written out in plain PyTorch, LoRA layers, per-task
heads, and loading of real Hugging Face format checkpoints.

Everything OSRM needs from the model is here:

- `LoRALinear` computes `W0 x + s * B(A x)` with `W0` frozen, `A` (r x d_in), `B` (d_out x r)
  and `s = alpha / r` (Hu et al. 2021, "LoRA"); `delta_w()` is the dense task update `s * B @ A`.
- `BertEncoder` is the post-LayerNorm transformer of Devlin et al. 2019 with exact GELU, token
  type embeddings and the padding mask; its parameter names follow Hugging Face's `BertModel`
  through a small rename table, so a real checkpoint loads tensor for tensor.
- RoBERTa (Liu et al. 2019, the paper's main backbone) is the same network with three changes,
  all read from `config.json`: position ids count real tokens starting after the padding index
  (`pad_token_id` + 1), a single token type, and LayerNorm eps 1e-5. `model_type` chooses.
- `ClassificationHead` is one head per task, pooling either the mean of the real tokens (what a
  sentence-transformers folder declares in `1_Pooling/config.json`), [CLS] through the
  pretrained pooler, as `BertForSequenceClassification` does, or the first token through a
  fresh dense + tanh, as `RobertaForSequenceClassification` does.
- `load_checkpoint(folder)` reads `config.json` and `model.safetensors` (with the small reader
  below, no extra package) or `pytorch_model.bin`.

Usage:
    encoder, pooling = load_checkpoint("path/to/bert-folder")
    add_lora(encoder, targets=("query", "value"), rank=8, alpha=16)
    hidden = encoder(input_ids, token_type_ids, attention_mask)   # (B, T, H)
"""

import contextlib
import json
import math
import os
import struct
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F


class CheckpointError(Exception):
    """A model folder that cannot be loaded; the CLI prints it as a one-line error."""


@dataclass
class BertConfig:
    model_type: str = "bert"             # "bert" or "roberta"
    vocab_size: int = 30522
    hidden_size: int = 384               # H, the width of every token's hidden state
    num_hidden_layers: int = 6           # L, transformer blocks
    num_attention_heads: int = 12
    intermediate_size: int = 1536        # width of the feed-forward block
    max_position_embeddings: int = 512
    type_vocab_size: int = 2             # segment ids: sentence a = 0, sentence b = 1
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"             # "gelu" is the exact erf form in Hugging Face's BERT
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0                # RoBERTa: 1, and positions start at 2

    @classmethod
    def from_dict(cls, d):
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @property
    def max_length(self):
        """The longest input the position table covers (RoBERTa spends pad_token_id + 1 rows)."""
        if self.model_type == "roberta":
            return self.max_position_embeddings - self.pad_token_id - 1
        return self.max_position_embeddings


ACTIVATIONS = {
    "gelu": F.gelu,                                             # exact, erf-based
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def dropout(x, p, training):
    """Inverted dropout: keep each value with probability 1 - p and scale it by 1 / (1 - p).

    As F.dropout, with a cheaper mask: each random 64-bit integer gives four 16-bit uniform
    draws, kept where they clear the p-quantile, so p is rounded to a multiple of 1/65536
    (0.1 -> 0.100006). On CPU, F.dropout's sampler took a quarter of a training step; this
    mask takes half the time of one drawn with torch.rand (2.1 against 4.1 ms for the 645k
    attention weights of a batch), which saved 6% of a step.
    """
    if not training or p == 0.0:
        return x
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-2**63, None)
    draws = bits.view(torch.int16)[:n].view(x.shape)  # uniform on -32768 .. 32767
    keep = draws >= round(p * 65536) - 32768
    return x * keep * (1.0 / (1.0 - p))


def attention(q, k, v, bias, dropout_p=0.0):
    """softmax(q k^T / sqrt(d) + bias) v over heads: (B, nh, T, hd) -> (B, nh, T, hd).

    bias (B, 1, 1, T) is 0 at real tokens and -inf at padding, so that no query attends to
    padding. Written out rather than F.scaled_dot_product_attention: at these sequence lengths
    PyTorch's fused CPU kernel took about 1.5x as long forward and backward (timed separately,
    batch 32 x 12 heads x 41 tokens), and the written-out form lets the attention weights go
    through dropout.
    """
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, nh, T, T)
    scores += bias  # in place: the product's backward needs q and k, not its output
    return dropout(scores.softmax(-1), dropout_p, True) @ v


class LoRALinear(nn.Linear):
    """A linear layer `W0 x + b` that can carry a low-rank update `s * B(A x)`.

    Without LoRA it is an ordinary nn.Linear. `set_lora` gives it trainable `A` and `B`; the
    pretrained `W0` and bias are frozen by `add_lora` (LoRA section 4.1). `B` starts at zero,
    so a fresh adapter leaves the pretrained model's output unchanged.
    """

    def __init__(self, d_in, d_out):
        super().__init__(d_in, d_out)
        self.A = None     # (r, d_in): what the adapter reads from the input
        self.B = None     # (d_out, r): what it writes back
        self.scale = 0.0  # s = alpha / r
        self.lora_dropout = 0.0

    def set_lora(self, A, rank, alpha, dropout=0.0):
        """Start a new adapter with the given `A` (r x d_in) and `B = 0`."""
        assert A.shape == (rank, self.in_features)
        self.A = nn.Parameter(A.to(self.weight).clone())
        self.B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=self.weight.dtype,
                                          device=self.weight.device))
        self.scale = alpha / rank
        self.lora_dropout = dropout

    def delta_w(self):
        """The dense task update `delta_w = s * B @ A` (d_out x d_in), the paper's task update."""
        return self.scale * self.B @ self.A

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)  # W0 x + b
        if self.A is not None:
            x = dropout(x, self.lora_dropout, self.training)
            out = out + self.scale * F.linear(F.linear(x, self.A), self.B)  # + s * B(A x)
        return out


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout_p = c.hidden_dropout_prob
        self.roberta_positions = c.model_type == "roberta"
        self.pad_id = c.pad_token_id

    def forward(self, input_ids, token_type_ids):
        if self.roberta_positions:
            # RoBERTa (fairseq's make_positions): the i-th real token has position pad_id + i,
            # i = 1, 2, ...; padding keeps position pad_id.
            real = (input_ids != self.pad_id).long()
            positions = real.cumsum(1) * real + self.pad_id  # (B, T)
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)  # (T,)
        x = (self.word_embeddings(input_ids) + self.position_embeddings(positions)
             + self.token_type_embeddings(token_type_ids))
        return dropout(self.norm(x), self.dropout_p, self.training)


class Block(nn.Module):
    """One post-LayerNorm transformer block: x = LN(x + attn(x)); x = LN(x + ffn(x))."""

    def __init__(self, c):
        super().__init__()
        H = c.hidden_size
        self.n_head = c.num_attention_heads
        self.query, self.key, self.value = LoRALinear(H, H), LoRALinear(H, H), LoRALinear(H, H)
        self.attn_out = LoRALinear(H, H)
        self.attn_norm = nn.LayerNorm(H, eps=c.layer_norm_eps)
        self.ffn_in = LoRALinear(H, c.intermediate_size)
        self.ffn_out = LoRALinear(c.intermediate_size, H)
        self.ffn_norm = nn.LayerNorm(H, eps=c.layer_norm_eps)
        self.act = ACTIVATIONS[c.hidden_act]
        self.attn_dropout = c.attention_probs_dropout_prob
        self.dropout_p = c.hidden_dropout_prob

    def forward(self, x, layout):
        """x (N, H): the batch's tokens as rows; layout: how they are padded for attention."""
        H, nh = x.shape[-1], self.n_head  # hidden size, heads
        qkv = torch.cat([self.query(x), self.key(x), self.value(x)], -1)  # (N, 3H)
        parts = []
        for rows, slots, bias in layout.groups:
            B, T = bias.shape[0], bias.shape[-1]  # sequences in the group, their padded length
            if rows is not None:  # this group's tokens into padded rows, zeros at padding
                group = qkv.new_zeros(B * T, 3 * H).index_copy(0, slots, qkv[rows])
            else:
                group = qkv  # x is already the whole padded batch
            q, k, v = group.view(B, T, 3, nh, H // nh).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hd)
            # every query looks at every real token of its own sequence
            y = attention(q, k, v, bias, self.attn_dropout if self.training else 0.0)
            y = y.transpose(1, 2).reshape(B * T, H)  # heads side by side again
            parts.append(y if slots is None else y[slots])
        y = parts[0] if layout.order is None else torch.cat(parts)[layout.order]  # (N, H)
        drop = lambda t: dropout(t, self.dropout_p, self.training)
        x = self.attn_norm(x + drop(self.attn_out(y)))
        return self.ffn_norm(x + drop(self.ffn_out(self.act(self.ffn_in(x)))))


def padding_bias(mask, dtype):
    """(B, T) True at real tokens -> (B, 1, 1, T) attention bias: 0 there, -inf at padding."""
    bias = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask[:, None, None, :], float("-inf"))


# Packing tokens costs gathers, scatters and a loop over attention groups. Measured on 2 CPU
# cores (training steps, batch 16): 0.88x at 4% padding (length-grouped batches), 1.08x at 30%,
# 1.6x at 47%; so batches are packed only when at least a quarter of them is padding.
PACK_ABOVE_PADDING = 0.25


@dataclass
class Layout:
    """Where a batch's tokens go for attention.

    Plain: x holds every padded position and attention runs on the whole batch at once
    (groups = [(None, None, bias)], order = None). Packed: x holds only the N real tokens;
    each group is a few sequences of similar length, padded only to their own longest:
    `rows` picks the group's tokens from x, `slots` says where they sit in its padded
    (B_g * T_g) block, and `order` puts the concatenated groups back in x's order.
    """
    groups: list
    order: torch.Tensor = None
    real: torch.Tensor = None  # (N,): the real tokens' positions in the flattened (B*T) batch

    @classmethod
    def plain(cls, mask, dtype):
        return cls([(None, None, padding_bias(mask, dtype))])

    @classmethod
    def packed(cls, mask, dtype, group_size=8):
        B, T = mask.shape
        real = mask.reshape(-1).nonzero().squeeze(1)  # (N,)
        index = torch.full((B, T), -1, device=mask.device)
        index.view(-1)[real] = torch.arange(len(real), device=mask.device)  # token -> row of x
        extent = (mask * torch.arange(1, T + 1, device=mask.device)).amax(1)  # last real + 1
        groups, rows_all = [], []
        for seqs in extent.argsort(stable=True).split(group_size):  # similar lengths together
            m = mask[seqs, :int(extent[seqs].max())]  # (B_g, T_g)
            rows = index[seqs, :m.shape[1]][m]  # the group's tokens, as rows of x
            slots = m.reshape(-1).nonzero().squeeze(1)  # where they go in the padded block
            groups.append((rows, slots, padding_bias(m, dtype)))
            rows_all.append(rows)
        return cls(groups, torch.cat(rows_all).argsort(), real)


class BertEncoder(nn.Module):
    """Token ids -> contextual hidden states (B, T, H), as Hugging Face's BertModel (or
    RobertaModel when config.model_type is "roberta")."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_hidden_layers))
        # The pretrained [CLS] pooler (dense + tanh). Heads copy it; the encoder never uses it.
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        # True: skip padding where there is enough of it to pay (fast). False: compute every
        # position, as a plain transformer does (the reference the tests hold the fast path to).
        self.unpad = True

    def forward(self, input_ids, token_type_ids, attention_mask):
        B, T = input_ids.shape  # batch size, padded sequence length
        x = self.embeddings(input_ids, token_type_ids).reshape(B * T, -1)  # (B*T, H)
        if self.unpad and attention_mask.sum() <= (1 - PACK_ABOVE_PADDING) * attention_mask.numel():
            # Padding is most of a randomly drawn batch. The linear layers, nearly all of the
            # work, see only the N real tokens, and attention pads each group of similar
            # lengths only to its own longest (bench.py measures what this saves).
            layout = Layout.packed(attention_mask, x.dtype)
            x = x[layout.real]  # (N, H)
        else:
            layout = Layout.plain(attention_mask, x.dtype)
        for block in self.layers:
            x = block(x, layout)
        if layout.real is not None:  # zeros at the padded positions, which nothing reads
            x = x.new_zeros(B * T, x.shape[-1]).index_copy(0, layout.real, x)
        return x.view(B, T, -1)  # (B, T, H)


class ClassificationHead(nn.Module):
    """Pooling, dropout and a linear classifier; one per task, trained fully and never merged.

    pooling="mean": average of the real tokens' hidden states (sentence-transformers models).
    pooling="cls": the [CLS] state through a dense + tanh pooler initialised from the
    checkpoint's, as in BertForSequenceClassification. The pooler copy belongs to the head, so
    it is trained with it and stays task-specific after merging.
    pooling="roberta": RobertaClassificationHead: the first token (<s>) through dropout, a
    freshly initialised dense + tanh, dropout and the classifier (`out_proj` there).
    """

    def __init__(self, hidden_size, num_labels, pooling, dropout, pooler=None):
        super().__init__()
        self.pooling = pooling
        self.pooler = None
        if pooling in ("cls", "roberta"):
            self.pooler = nn.Linear(hidden_size, hidden_size)
            if pooler is not None and pooling == "cls":
                self.pooler.load_state_dict(pooler.state_dict())
        self.dropout_p = dropout
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)         # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1)                    # (B, H)
        elif self.pooling == "roberta":
            first = dropout(hidden[:, 0], self.dropout_p, self.training)
            pooled = torch.tanh(self.pooler(first))                      # (B, H)
        else:
            pooled = torch.tanh(self.pooler(hidden[:, 0]))              # (B, H)
        return self.classifier(dropout(pooled, self.dropout_p, self.training))  # (B, num_labels)


def add_lora(encoder, targets, rank, alpha, dropout=0.0, A_init=None, seed=0):
    """Freeze the encoder and give every `targets` layer a fresh adapter.

    `A_init` maps layer names (as in `lora_layers`) to an `A` (r x d_in), the OSRM
    initialisation; otherwise `A` is drawn as in loralib/PEFT (Kaiming-uniform with a=sqrt(5),
    the nn.Linear default) from a generator seeded with `seed`. `B` is always zero.
    """
    for p in encoder.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    for name, layer in target_layers(encoder, targets).items():
        if A_init is not None:
            A = A_init[name]
        else:
            bound = 1 / math.sqrt(layer.in_features)  # kaiming_uniform_(a=sqrt(5)) on (r, d_in)
            A = (torch.rand(rank, layer.in_features, generator=g) * 2 - 1) * bound
        layer.set_lora(A, rank, alpha, dropout)


def target_layers(encoder, targets):
    """The LoRALinear layers whose last name is in `targets`, e.g. ("query", "value")."""
    return {name: m for name, m in encoder.named_modules()
            if isinstance(m, LoRALinear) and name.split(".")[-1] in targets}


def lora_layers(encoder):
    """The layers that carry an adapter, by name, e.g. {"layers.0.query": LoRALinear}."""
    return {name: m for name, m in encoder.named_modules()
            if isinstance(m, LoRALinear) and m.A is not None}


def lora_state(encoder):
    """The adapter as plain tensors: {"layers.0.query.A": ..., "layers.0.query.B": ...}."""
    return {f"{name}.{k}": getattr(m, k).detach().clone()
            for name, m in lora_layers(encoder).items() for k in ("A", "B")}


def load_lora_state(encoder, state):
    for name, m in lora_layers(encoder).items():
        m.A.data.copy_(state[f"{name}.A"])
        m.B.data.copy_(state[f"{name}.B"])


def delta_weights(encoder):
    """{layer name: delta_w = s * B @ A} for every adapted layer: the task vector."""
    with torch.no_grad():
        return {name: m.delta_w() for name, m in lora_layers(encoder).items()}


def remove_lora(encoder):
    for m in lora_layers(encoder).values():
        m.A = m.B = None


@contextlib.contextmanager
def merged_into_weights(encoder, deltas):
    """Within the block, each named layer's weight is `W0 + deltas[name]` and LoRA is off.

    This is the merged model of the paper's interference equation: the pretrained encoder plus
    the merged task updates. The pretrained weights are restored exactly afterwards.
    """
    saved = {}
    layers = dict(encoder.named_modules())
    try:
        for name, delta in deltas.items():
            m = layers[name]
            saved[name] = (m.weight.data.clone(), m.A, m.B)
            m.weight.data += delta.to(m.weight)
            m.A = m.B = None
        yield encoder
    finally:
        for name, (w, A, B) in saved.items():
            layers[name].weight.data.copy_(w)
            layers[name].A, layers[name].B = A, B


# Checkpoint loading. Hugging Face BertModel / RobertaModel names -> ours (the prefix "bert." or
# "roberta." is optional; both models name their blocks alike).
HF_BLOCK_NAMES = {
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
# Tensors a checkpoint may carry that the encoder does not use: the position-id buffer and the
# pre-training or fine-tuning heads of BertForPreTraining / BertForSequenceClassification.
IGNORED_PREFIXES = ("embeddings.position_ids", "cls.", "classifier.", "qa_outputs.", "lm_head.")
MODEL_TYPES = ("bert", "roberta")


def hf_to_ours(name):
    """'bert.encoder.layer.3.attention.self.query.weight' -> 'layers.3.query.weight'."""
    name = name.removeprefix("bert.").removeprefix("roberta.")
    name = name.replace(".gamma", ".weight").replace(".beta", ".bias")  # old TF-converted names
    if name.startswith("encoder.layer."):
        i, rest = name[len("encoder.layer."):].split(".", 1)
        for hf, ours in HF_BLOCK_NAMES.items():
            if rest.startswith(hf + "."):
                return f"layers.{i}.{ours}{rest[len(hf):]}"
    if name.startswith("embeddings.LayerNorm."):
        return "embeddings.norm." + name.split(".")[-1]
    if name.startswith("pooler.dense."):
        return "pooler." + name.split(".")[-1]
    return name


SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U8": torch.uint8, "BOOL": torch.bool,
}


def read_safetensors(path):
    """Read a .safetensors file into {name: tensor}.

    The format: an 8-byte little-endian header length n, n bytes of JSON mapping each name to
    its dtype, shape and [begin, end) byte offsets into the data that follows.
    """
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data = bytearray(f.read())
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        t = torch.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        tensors[name] = t.reshape(info["shape"])
    return tensors


def write_safetensors(tensors, path):
    """Write {name: tensor} as .safetensors (atomically), the inverse of `read_safetensors`."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        b = t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # the data starts 8-byte aligned
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, path)


def checkpoint_pooling(folder, model_type="bert"):
    """'mean' if a sentence-transformers `1_Pooling/config.json` says so, otherwise the
    architecture's own sequence-classification head: 'cls' (BERT) or 'roberta'."""
    cfg = Path(folder) / "1_Pooling" / "config.json"
    if cfg.exists() and json.loads(cfg.read_text()).get("pooling_mode_mean_tokens"):
        return "mean"
    return "roberta" if model_type == "roberta" else "cls"


def load_checkpoint(folder):
    """Build a BertEncoder from a Hugging Face format BERT or RoBERTa folder; returns
    (encoder, pooling).

    The folder needs `config.json` and `model.safetensors` or `pytorch_model.bin`. A missing
    pooler is allowed (heads then start with a fresh one); any other missing or unexpected
    tensor is an error that names it.
    """
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder} has no config.json; --model needs a Hugging Face "
                              f"format BERT or RoBERTa folder (config.json, model.safetensors, "
                              f"and vocab.txt or vocab.json + merges.txt)")
    try:
        config_dict = json.loads((folder / "config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{folder}/config.json is not valid JSON ({e})")
    if config_dict.get("model_type", "bert") not in MODEL_TYPES:
        raise CheckpointError(f"{folder}: model_type '{config_dict['model_type']}' is not "
                              f"supported; osrm-min loads {' and '.join(MODEL_TYPES)} encoders")
    config = BertConfig.from_dict(config_dict)
    if config.hidden_act not in ACTIVATIONS:
        raise CheckpointError(f"{folder}: hidden_act '{config.hidden_act}' is not supported "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    for name, read in (("model.safetensors", read_safetensors),
                       ("pytorch_model.bin", lambda p: torch.load(p, map_location="cpu",
                                                                  weights_only=True))):
        if (folder / name).exists():
            try:
                raw = read(folder / name)
            except Exception as e:  # truncated, corrupt, or a pickle that is more than tensors
                raise CheckpointError(f"cannot read {folder / name}: {type(e).__name__}: "
                                      f"{str(e).splitlines()[0] if str(e) else ''}")
            break
    else:
        raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin")

    encoder = BertEncoder(config)
    expected = encoder.state_dict()
    renamed = {hf_to_ours(k): v for k, v in raw.items()}
    state = {k: v for k, v in renamed.items() if not k.startswith(IGNORED_PREFIXES)}
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith("pooler."))
    if missing or unexpected:
        raise CheckpointError(f"{folder}: checkpoint does not match config.json; "
                              f"missing tensors: {_short(missing)}; unexpected: {_short(unexpected)}")
    for k, v in state.items():
        if v.shape != expected[k].shape:
            raise CheckpointError(f"{folder}: tensor {k} has shape {tuple(v.shape)}, "
                                  f"config.json implies {tuple(expected[k].shape)}")
    encoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    encoder.has_pretrained_pooler = "pooler.weight" in state
    return encoder, checkpoint_pooling(folder, config.model_type)


def _short(names, n=5):
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")

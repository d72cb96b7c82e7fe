"""The model: LoRA layers, a BERT (or RoBERTa) encoder written out in plain PyTorch, and
per-task heads. Read it top to bottom:

1. `LoRALinear` computes `W0 x + s * B(A x)` with `W0` frozen, `A` (r x d_in), `B` (d_out x r)
   and `s = alpha / r` (Hu et al. 2021, "LoRA"); `delta_w()` is the dense task update
   `dW = s * B @ A` that the paper merges. `add_lora`, `remove_lora`, `delta_weights` and
   `merged_into_weights` put adapters in, take them out, read them, and merge them.
2. `BertEncoder` is the post-LayerNorm transformer of Devlin et al. 2019 on (B, T, H)
   tensors, with exact GELU, token type embeddings and the padding mask. RoBERTa (Liu et al.
   2019, the paper's main backbone) is the same network with three changes read from
   `config.json`: position ids count real tokens starting after the padding index, a single
   token type, and LayerNorm eps 1e-5.
3. `ClassificationHead`: one per task, never merged.

Pretrained weights are loaded by pretrained/checkpoint.py (Hugging Face's names, renamed). This
is the plain computation; speed/fastpath.py computes the same function faster for the device,
and the tests hold the two equal.

    encoder, pooling = checkpoint.load_checkpoint("path/to/bert-folder")
    add_lora(encoder, targets=("query", "value"), rank=8, alpha=16)
    hidden = encoder(input_ids, token_type_ids, attention_mask)   # (B, T, H)
"""

import contextlib
import math
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        self.lora_dropout = nn.Dropout(0.0)  # on the adapter's input only (LoRA's dropout)

    def set_lora(self, A, rank, alpha, dropout=0.0):
        """Start a new adapter with the given `A` (r x d_in) and `B = 0`."""
        assert A.shape == (rank, self.in_features)
        self.A = nn.Parameter(A.to(self.weight).clone())
        self.B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=self.weight.dtype,
                                          device=self.weight.device))
        self.scale = alpha / rank
        self.lora_dropout.p = dropout

    def delta_w(self):
        """This layer's `delta_w` (below)."""
        return delta_w(self.A, self.B, self.scale)

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)  # W0 x + b
        if self.A is not None:
            x = self.lora_dropout(x)
            out = out + self.scale * F.linear(F.linear(x, self.A), self.B)  # + s * B(A x)
        return out


def delta_w(A, B, scale):
    """The dense task update dW = s * B @ A (d_out x d_in) that the paper merges (never A and B
    apart, which would create cross terms B_i A_j)."""
    return scale * B @ A


def add_lora(encoder, targets, rank, alpha, dropout=0.0, A_init=None):
    """Freeze the encoder and give every `targets` layer a fresh adapter: `A` from `A_init`,
    {layer name (as in `lora_layers`): A (r x d_in)}, OSRM's subspace or a seeded random draw
    (`random_As`; seed 0 without A_init); `B` always zero."""
    for p in encoder.parameters():
        p.requires_grad_(False)
    A_init = A_init if A_init is not None else random_As(encoder, targets, rank, 0)
    for name, layer in target_layers(encoder, targets).items():
        layer.set_lora(A_init[name], rank, alpha, dropout)


def random_As(encoder, targets, rank, seed, A_dist="kaiming"):
    """{layer name: a random A (r x d_in)} for every `targets` layer, drawn in layer order from
    one generator seeded with `seed`: what `add_lora` starts from without an `A_init`."""
    g = torch.Generator().manual_seed(seed)
    return {name: random_A(rank, layer.in_features, g, A_dist)
            for name, layer in target_layers(encoder, targets).items()}


def random_A(rank, d_in, generator, A_dist="kaiming"):
    """A random (r x d_in) A:
    "kaiming": Kaiming-uniform with a=sqrt(5), the nn.Linear default, which loralib and PEFT
      use (rows of norm about 1/sqrt(3));
    "gaussian": PEFT's init_lora_weights="gaussian", N(0, 1/r^2) per entry, which the OSRM
      authors' plain LoRA uses (rows of norm about sqrt(d_in)/r);
    "orthonormal" (osrm-min's own control): a uniformly random A with orthonormal rows, the
      shape and scale of OSRM's A (rows of norm 1) pointing nowhere in particular."""
    if A_dist == "gaussian":
        return torch.randn(rank, d_in, generator=generator) / rank  # std 1/r
    if A_dist == "orthonormal":
        G = torch.randn(d_in, rank, generator=generator, dtype=torch.float64)
        Q, R = torch.linalg.qr(G)  # Q (d_in, r): orthonormal columns
        return (Q * torch.sign(torch.diagonal(R))).T.float()  # signs fixed: Haar-distributed
    bound = 1 / math.sqrt(d_in)  # kaiming_uniform_(a=sqrt(5)) on (r, d_in)
    return (torch.rand(rank, d_in, generator=generator) * 2 - 1) * bound


def target_layers(encoder, targets):
    """The LoRALinear layers whose last name is in `targets`, e.g. ("query", "value")."""
    return {name: m for name, m in encoder.named_modules()
            if isinstance(m, LoRALinear) and name.split(".")[-1] in targets}


def lora_layers(encoder):
    """The layers that carry an adapter, by name, e.g. {"layers.0.query": LoRALinear}."""
    return {name: m for name, m in encoder.named_modules()
            if isinstance(m, LoRALinear) and m.A is not None}


def lora_state(encoder):
    """The adapter as plain tensors on the CPU, wherever the encoder runs: {"layers.0.query.A":
    ..., "layers.0.query.B": ...}. A saved adapter loads there too, so a run's adapters, task
    vectors and merges live in one place whether an adapter was trained now or loaded."""
    return {f"{name}.{k}": getattr(m, k).detach().to("cpu", copy=True)
            for name, m in lora_layers(encoder).items() for k in ("A", "B")}


def delta_weights(encoder):
    """{layer name: delta_w} of every adapted layer: the task vector of the adapter in place."""
    with torch.no_grad():
        return {name: m.delta_w() for name, m in lora_layers(encoder).items()}


def remove_lora(encoder):
    for m in lora_layers(encoder).values():
        m.A = m.B = None


@contextlib.contextmanager
def carrying(encoder, state, targets, rank, alpha):
    """Within the block, the encoder computes with the adapter `state` (a `lora_state`)."""
    add_lora(encoder, targets, rank, alpha, A_init={n: state[f"{n}.A"] for n in
                                                    target_layers(encoder, targets)})
    for name, m in lora_layers(encoder).items():
        m.B.data.copy_(state[f"{name}.B"])
    try:
        yield encoder
    finally:
        remove_lora(encoder)


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
    pooling: str = ""                    # the heads' the checkpoint declares ("": cls or roberta)

    def __post_init__(self):
        self.pooling = self.pooling or ("roberta" if self.model_type == "roberta" else "cls")

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


def padding_bias(mask, dtype):
    """(B, T) True at real tokens -> (B, 1, 1, T) attention bias: 0 there, -inf at padding."""
    bias = torch.zeros(mask.shape[0], 1, 1, mask.shape[1], dtype=dtype, device=mask.device)
    return bias.masked_fill(~mask[:, None, None, :], float("-inf"))


def attention(q, k, v, bias, dropout):
    """dropout(softmax(q k^T / sqrt(d) + bias)) v over heads: (B, nh, T, hd) -> (B, nh, T, hd).

    bias (B, 1, 1, T) is 0 at real tokens and -inf at padding, so that no query attends to
    padding. Written out, as in BERT (Devlin et al. 2019), so that the attention weights can go
    through dropout (a module: nn.Dropout, off in eval mode).
    """
    scores = (q * (1.0 / math.sqrt(q.shape[-1]))) @ k.transpose(-2, -1)  # (B, nh, T, T)
    scores += bias  # in place: the product's backward needs q and k, not its output
    return dropout(scores.softmax(-1)) @ v


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.dropout = nn.Dropout(c.hidden_dropout_prob)
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
        return self.dropout(self.norm(x))  # (B, T, H)


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
        self.attn_dropout = nn.Dropout(c.attention_probs_dropout_prob)  # on attention weights
        self.dropout = nn.Dropout(c.hidden_dropout_prob)  # on each sub-block's output
        self.attention = attention  # written out; speed/fastpath.py may swap in a fused kernel

    def forward(self, x, bias):
        """x (B, T, H) -> (B, T, H); bias (B, 1, 1, T): 0 at real tokens, -inf at padding."""
        B, T, H = x.shape  # batch size, sequence length, hidden size
        qkv = torch.cat([self.query(x), self.key(x), self.value(x)], -1)  # (B, T, 3H)
        q, k, v = qkv.view(B, T, 3, self.n_head, H // self.n_head).permute(2, 0, 3, 1, 4)  # 3 x (B, nh, T, hd)
        y = self.attend(q, k, v, bias)  # every query looks at every real token of its sequence
        y = y.transpose(1, 2).reshape(B, T, H)  # heads side by side again
        return self.per_token(x, y)

    def attend(self, q, k, v, bias):
        return self.attention(q, k, v, bias, self.attn_dropout)

    def per_token(self, x, y):
        """The rest of the block, which treats each token alone: the projection of the
        attention output y, the residuals, the LayerNorms and the feed-forward layer."""
        x = self.attn_norm(x + self.dropout(self.attn_out(y)))
        h = self.ffn_out(self.act(self.ffn_in(x)))
        return self.ffn_norm(x + self.dropout(h))


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

    def forward(self, input_ids, token_type_ids, attention_mask):
        x = self.embeddings(input_ids, token_type_ids)  # (B, T, H)
        bias = padding_bias(attention_mask, x.dtype)  # (B, 1, 1, T)
        for block in self.layers:
            x = block(x, bias)
        return x  # (B, T, H); padded positions hold values that nothing reads


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
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden, attention_mask):
        if self.pooling == "mean":
            m = attention_mask.unsqueeze(-1).to(hidden.dtype)         # (B, T, 1)
            pooled = (hidden * m).sum(1) / m.sum(1)                    # (B, H)
        elif self.pooling == "roberta":
            first = self.dropout(hidden[:, 0])
            pooled = torch.tanh(self.pooler(first))                      # (B, H)
        else:
            pooled = torch.tanh(self.pooler(hidden[:, 0]))              # (B, H)
        return self.classifier(self.dropout(pooled))  # (B, num_labels)

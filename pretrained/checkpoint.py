"""Loading real pretrained weights: a Hugging Face format BERT or RoBERTa folder becomes a
`lora.BertEncoder`, tensor for tensor.

    encoder, pooling = load_checkpoint("path/to/bert-folder")

The folder holds `config.json` and `model.safetensors` (read by the small reader below, no
extra package) or `pytorch_model.bin` (read with `weights_only=True`, so no pickled code runs).
Hugging Face's `BertModel` and `RobertaModel` name their tensors alike; `hf_to_ours` maps the
names to lora.py's. A missing or unexpected tensor is an error that names it.
"""

import json
import math
import os
import struct
import tempfile
from pathlib import Path

import torch

from lora import ACTIVATIONS, BertConfig, BertEncoder


class CheckpointError(Exception):
    """A model folder that cannot be loaded; the CLI prints it as a one-line error."""


# Hugging Face BertModel / RobertaModel names -> ours (the prefix "bert." or
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


def ours_to_hf(name):
    """'layers.3.query.weight' -> 'encoder.layer.3.attention.self.query.weight': hf_to_ours
    inverted (without the model's prefix, 'bert.' or 'roberta.')."""
    if name.startswith("layers."):
        _, i, ours, rest = name.split(".", 3)
        hf = {o: h for h, o in HF_BLOCK_NAMES.items()}[ours]
        return f"encoder.layer.{i}.{hf}.{rest}"
    if name.startswith("embeddings.norm."):
        return name.replace("embeddings.norm.", "embeddings.LayerNorm.")
    if name.startswith("pooler."):
        return name.replace("pooler.", "pooler.dense.")
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
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    header.pop("__metadata__", None)
    tensors = {}
    for name, info in header.items():
        if info["dtype"] not in SAFETENSORS_DTYPES:  # F8_E4M3, say
            raise ValueError(f"tensor {name} has dtype {info['dtype']}, which osrm-min does not "
                             f"read (it reads {', '.join(SAFETENSORS_DTYPES)})")
        dtype = SAFETENSORS_DTYPES[info["dtype"]]
        shape = [int(d) for d in info["shape"]]
        begin, end = (int(x) for x in info["data_offsets"])
        if not 0 <= begin <= end <= len(data) or end - begin != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"tensor {name} lies outside the file, or does not fit its shape "
                             f"(a truncated download?)")
        t = torch.frombuffer(data, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=begin)
        tensors[name] = t.reshape(shape)
    return tensors


def write_safetensors(tensors, path, metadata=None):
    """Write {name: tensor} as .safetensors, whole or not at all (a temporary file beside `path`,
    then renamed): the inverse of read_safetensors, an 8-byte header length, the JSON header
    (with `metadata`, {str: str}, under "__metadata__", as PEFT writes {"format": "pt"}), then
    the tensors' bytes in the order given."""
    names = {v: k for k, v in SAFETENSORS_DTYPES.items()}
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(metadata)
    for name, t in tensors.items():
        b = t.detach().contiguous().cpu().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)  # the data starts 8-byte aligned
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path):
    """A JSON object from a file, or a CheckpointError that says what is wrong with it."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:  # (nested too deep)
        raise CheckpointError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{path} is not a JSON object")
    return value


def checkpoint_pooling(folder, model_type="bert"):
    """'mean' if a sentence-transformers `1_Pooling/config.json` says so, otherwise the
    architecture's own sequence-classification head: 'cls' (BERT) or 'roberta'."""
    cfg = Path(folder) / "1_Pooling" / "config.json"
    if cfg.exists() and read_json(cfg).get("pooling_mode_mean_tokens") is True:
        return "mean"
    return "roberta" if model_type == "roberta" else "cls"


def weights_file(folder):
    """The weights load_checkpoint reads: model.safetensors, else pytorch_model.bin."""
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (Path(folder) / name).exists():
            return Path(folder) / name
    raise CheckpointError(f"{folder} has neither model.safetensors nor pytorch_model.bin")


def require_config(folder):
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder} has no config.json; --model needs a Hugging Face "
                              f"format BERT or RoBERTa folder (config.json, model.safetensors, "
                              f"and vocab.txt or vocab.json + merges.txt)")


def model_files(folder):
    """Every file of the folder that shapes the encoder and its heads (for fingerprints)."""
    folder = Path(folder)
    require_config(folder)
    pooling = folder / "1_Pooling" / "config.json"
    return [folder / "config.json", weights_file(folder)] + ([pooling] if pooling.exists() else [])


# The config.json fields BertConfig reads, with their domain.
POSITIVE_INTS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                 "intermediate_size", "max_position_embeddings", "type_vocab_size")
PROBABILITIES = ("hidden_dropout_prob", "attention_probs_dropout_prob")
# Far beyond any encoder that osrm-min can fine-tune (RoBERTa-large: 24 layers, 355M
# parameters), and checked before anything is built: 2^63 overflowed torch's sizes, and
# 200,000 layers took minutes to build even without memory.
MAX_SIZE, MAX_LAYERS, MAX_PARAMETERS = 2**31 - 1, 1000, 10**11


def parameter_count(c):
    """The number of parameters of lora.BertEncoder(c), from the sizes alone."""
    H, I = c.hidden_size, c.intermediate_size
    embeddings = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) * H + 2 * H
    block = 4 * (H * H + H) + (H * I + I) + (I * H + H) + 2 * 2 * H  # 4 H x H, 2 ffn, 2 norms
    return embeddings + c.num_hidden_layers * block + H * H + H  # and the pooler


def read_config(folder):
    """config.json as a checked BertConfig: every size a positive integer, the rest in its
    domain, or a CheckpointError that names the field."""
    d = read_json(folder / "config.json")
    bad = lambda field, what: CheckpointError(f"{folder}/config.json: {field} {d[field]!r} is "
                                              f"not {what}")
    if d.get("model_type", "bert") not in MODEL_TYPES:
        raise CheckpointError(f"{folder}: model_type {d['model_type']!r} is not supported; "
                              f"osrm-min loads {' and '.join(MODEL_TYPES)} encoders")
    for field in POSITIVE_INTS:
        if field in d and (type(d[field]) is not int or not 1 <= d[field] <= MAX_SIZE):
            raise bad(field, f"a positive integer (at most {MAX_SIZE})")
    for field in PROBABILITIES:
        if field in d and (type(d[field]) not in (int, float) or not 0 <= d[field] < 1):
            raise bad(field, "a probability in [0, 1)")
    if "layer_norm_eps" in d and (type(d["layer_norm_eps"]) not in (int, float)
                                  or not 0 < d["layer_norm_eps"] < 1):
        raise bad("layer_norm_eps", "a small positive number")
    act = d.get("hidden_act", "gelu")
    if not isinstance(act, str) or act not in ACTIVATIONS:  # a list would not even hash
        raise CheckpointError(f"{folder}: hidden_act {d['hidden_act']!r} is not supported "
                              f"(supported: {', '.join(ACTIVATIONS)})")
    config = BertConfig.from_dict(d)
    if config.num_hidden_layers > MAX_LAYERS or parameter_count(config) > MAX_PARAMETERS:
        raise CheckpointError(f"{folder}/config.json: {config.num_hidden_layers} layers and "
                              f"{parameter_count(config):,} parameters are beyond any encoder "
                              f"osrm-min can fine-tune (at most {MAX_LAYERS} layers, "
                              f"{MAX_PARAMETERS:,} parameters); is the file damaged?")
    if type(config.pad_token_id) is not int or not 0 <= config.pad_token_id < config.vocab_size:
        raise CheckpointError(f"{folder}/config.json: pad_token_id {config.pad_token_id!r} is not "
                              f"an id of its {config.vocab_size}-token vocabulary")
    if config.hidden_size % config.num_attention_heads or config.max_length < 2:
        raise CheckpointError(f"{folder}/config.json: hidden_size {config.hidden_size} does not "
                              f"split into {config.num_attention_heads} heads, or no position is left")
    return config


def check_tokenizer(folder, config, tokenizer, pairs):
    """That the ids `tokenizer` gives index the embeddings of `config` (read_config), before
    any training: every token id below vocab_size; with sentence pairs (`pairs`), every token
    type below type_vocab_size; and for RoBERTa, whose positions skip the padding id, the
    same padding id."""
    largest = max(tokenizer.vocab.values())
    if largest >= config.vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer's ids go up to {largest}, beyond "
                              f"config.json's vocab_size {config.vocab_size}; its vocabulary "
                              f"files do not belong to this checkpoint")
    types = max(tokenizer.encode("a", "b", max_length=8)[1]) if pairs else 0
    if types >= config.type_vocab_size:
        raise CheckpointError(f"{folder}: the tokenizer gives a pair's second sentence token "
                              f"type {types}, beyond config.json's type_vocab_size "
                              f"{config.type_vocab_size}; this checkpoint cannot read the "
                              f"sentence-pair tasks")
    if config.model_type == "roberta" and tokenizer.pad_id != config.pad_token_id:
        raise CheckpointError(f"{folder}: the tokenizer pads with id {tokenizer.pad_id}, "
                              f"config.json's pad_token_id is {config.pad_token_id}; RoBERTa's "
                              f"positions need the two to agree")


def load_checkpoint(folder):
    """Build a BertEncoder from a Hugging Face format BERT or RoBERTa folder; returns
    (encoder, pooling).

    The folder needs `config.json` and `model.safetensors` or `pytorch_model.bin`. A missing
    pooler is allowed (heads then start with a fresh one); any other missing or unexpected
    tensor is an error that names it, checked against the shapes config.json implies before any
    memory is given to them.
    """
    folder = Path(folder)
    require_config(folder)
    config = read_config(folder)
    path = weights_file(folder)
    try:
        raw = (read_safetensors(path) if path.suffix == ".safetensors"
               else torch.load(path, map_location="cpu", weights_only=True))
        if not isinstance(raw, dict) or not all(isinstance(v, torch.Tensor) for v in raw.values()):
            raise ValueError("it does not hold a dict of tensors")
    except Exception as e:  # truncated, corrupt, or a pickle that is more than tensors
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}") from None

    with torch.device("meta"):  # the shapes config.json implies, without allocating them
        expected = {k: v.shape for k, v in BertEncoder(config).state_dict().items()}
    renamed = {hf_to_ours(k): v for k, v in raw.items()}
    state = {k: v for k, v in renamed.items() if not k.startswith(IGNORED_PREFIXES)}
    unexpected = sorted(set(state) - set(expected))
    missing = sorted(k for k in set(expected) - set(state) if not k.startswith("pooler."))
    if missing or unexpected:
        raise CheckpointError(f"{folder}: checkpoint does not match config.json; "
                              f"missing tensors: {_short(missing)}; unexpected: {_short(unexpected)}")
    for k, v in state.items():
        if v.shape != expected[k]:
            raise CheckpointError(f"{folder}: tensor {k} has shape {tuple(v.shape)}, "
                                  f"config.json implies {tuple(expected[k])}")
        if not v.is_floating_point() or not torch.isfinite(v).all():
            raise CheckpointError(f"{folder}: tensor {k} is not all finite floating-point numbers")
    config.pooling = checkpoint_pooling(folder, config.model_type)  # the heads' pooling it declares
    encoder = BertEncoder(config)
    encoder.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    encoder.has_pretrained_pooler = "pooler.weight" in state
    return encoder, config.pooling


def _short(names, n=5):
    if not names:
        return "none"
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")

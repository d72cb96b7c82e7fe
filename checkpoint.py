"""Loading real pretrained weights: a Hugging Face format BERT or RoBERTa folder becomes a
`lora.BertEncoder`, tensor for tensor.

    encoder, pooling = load_checkpoint("path/to/bert-folder")

The folder holds `config.json` and `model.safetensors` (read by the small reader below, no
extra package) or `pytorch_model.bin` (read with `weights_only=True`, so no pickled code runs).
Hugging Face's `BertModel` and `RobertaModel` name their tensors alike; `hf_to_ours` maps the
names to lora.py's. A missing or unexpected tensor is an error that names it.
"""

import json
import struct
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

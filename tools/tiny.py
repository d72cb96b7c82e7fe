"""A tiny random BERT checkpoint and tiny GLUE-format data: the project's tests run on them,
gpu_check.py's dry run does, and so can anyone checking a set-up in seconds (LAB.md):

    python -m tools.tiny /tmp/tiny      # writes /tmp/tiny/model and /tmp/tiny/glue, prints a command

The checkpoint is a real Hugging Face format folder (config.json, vocab.txt,
model.safetensors) with random weights; the data is SST-2 and MRPC in the GLUE layout, with
sentences built from its vocabulary. Scores on them mean nothing; that every step runs does.
"""

import json
import sys
from pathlib import Path

import torch

TINY_WORDS = ("the a movie film was is good great bad awful fun dull plot actors "
              "said says he she it they not very and , . ! ? ' ##s ##ly ##ing").split()

POSITIVE = ["the movie was good", "a great film", "fun and very good", "the actors were great"]
NEGATIVE = ["the movie was bad", "an awful film", "dull and very bad", "the plot was awful"]


def hf_names(state):
    """Our encoder's state dict under Hugging Face BertModel names, with a 'bert.' prefix."""
    from pretrained.checkpoint import ours_to_hf
    return {"bert." + ours_to_hf(k): v for k, v in state.items()}


def write_safetensors(tensors, path):
    from pretrained.checkpoint import write_safetensors as write
    write(tensors, path)


def write_checkpoint(folder, seed=0, mean_pooling=False):
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


def write_glue(folder):
    """SST-2 and MRPC files in the GLUE layout (MRPC with its byte-order mark)."""
    (folder / "SST-2").mkdir(parents=True)
    (folder / "MRPC").mkdir()
    sst = ([f"{s}\t1" for s in POSITIVE] + [f"{s}\t0" for s in NEGATIVE]) * 3
    for split in ("train", "dev"):
        (folder / "SST-2" / f"{split}.tsv").write_text("\n".join(["sentence\tlabel"] + sst) + "\n")
    mrpc = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    mrpc += [f"1\t{i}\t{i}\t{a}\t{a}" for i, a in enumerate(POSITIVE)]
    mrpc += [f"0\t{i}\t{i}\t{a}\t{b}" for i, (a, b) in enumerate(zip(POSITIVE, NEGATIVE))]
    for split in ("train", "dev"):
        (folder / "MRPC" / f"{split}.tsv").write_text("\n".join(mrpc) + "\n", encoding="utf-8")
    return folder


def run_args(folder, *extra):
    """Write the tiny checkpoint and data into folder/model and folder/glue, and return the
    command line of a run on them (into folder/out, seconds long), with `extra` flags."""
    folder = Path(folder)
    write_checkpoint(folder / "model")
    write_glue(folder / "glue")
    return ["--tasks", "sst2,mrpc", "--model", str(folder / "model"), "--data-dir",
            str(folder / "glue"), "--out", str(folder / "out"), "--train-samples", "16",
            "--osrm-samples", "4", "--rank", "2", "--max-length", "32", *extra]


def main(argv):
    if len(argv) != 1:
        print("usage: python -m tools.tiny FOLDER  (writes FOLDER/model and FOLDER/glue)", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    if (folder / "model").exists() or (folder / "glue").exists():
        print(f"error: {folder}/model or {folder}/glue exists already; choose a new folder",
              file=sys.stderr)
        return 2
    try:
        write_checkpoint(folder / "model")
        write_glue(folder / "glue")
    except OSError as e:  # a folder that cannot be written, or a file in the way
        print(f"error: {e.strerror or e}: {e.filename or folder}; choose another folder",
              file=sys.stderr)
        return 2
    print(f"wrote {folder / 'model'} and {folder / 'glue'}; try:\n  python osrm_min.py --tasks "
          f"sst2,mrpc --model {folder / 'model'} --data-dir {folder / 'glue'} --out "
          f"{folder / 'run'} --train-samples 16 --osrm-samples 4 --rank 2 --max-length 32")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

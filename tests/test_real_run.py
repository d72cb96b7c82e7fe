"""One real fine-tuning run: the default model learns SST-2 from a few hundred examples.

Needs the installed default weights and the GLUE folder ($GLUE_DIR, or ../shared/glue beside
the repository); skipped, with the reason, without them.
"""

import pytest
import torch

import data
import lora
from conftest import REAL_GLUE as GLUE
from pretrained import checkpoint
from pretrained import tokenization
from train import TrainSettings, evaluate, finetune


@pytest.mark.skipif(not (GLUE / "SST-2" / "dev.tsv").exists(), reason=f"no GLUE data at {GLUE}")
def test_lora_on_a_few_hundred_sst2_examples_reaches_80_percent(minilm_dir):
    torch.manual_seed(0)
    task = data.TASKS["sst2"]
    tokenizer = tokenization.WordPieceTokenizer.from_dir(minilm_dir)
    train, _ = data.load_split(task, "train", GLUE, limit=800)
    dev, _ = data.load_split(task, "dev", GLUE)
    train = data.encode_examples(tokenizer, train, 128)
    dev = data.make_batches(data.encode_examples(tokenizer, dev, 128), 128, group_by_length=True)

    encoder, pooling = checkpoint.load_checkpoint(minilm_dir)
    head = lora.ClassificationHead(384, 2, pooling, dropout=0.1)
    lora.add_lora(encoder, ("query", "value"), rank=8, alpha=16)
    # small batches: many optimizer steps from few examples
    batches = lambda epoch: data.make_batches(train, 8, shuffle=True, seed=epoch, group_by_length=True)
    finetune(encoder, head, batches, TrainSettings(epochs=3, lr=2e-3))
    score, metrics, _ = evaluate(encoder, head, task, dev)
    assert score >= 80.0, metrics

"""Our BertEncoder against Hugging Face transformers' BertModel on the default checkpoint.

The fixture was made once by tests/pretrained/fixtures/make_encoder_fixture.py in a separate environment.
"""

from pathlib import Path

import numpy as np
import torch

from conftest import TEST_DEVICE
from pretrained.checkpoint import load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "encoder_minilm.npz"


def test_hidden_states_match_transformers(minilm_dir):
    ref = np.load(FIXTURE)
    encoder, pooling = load_checkpoint(minilm_dir)
    encoder.eval().to(TEST_DEVICE)
    mask = torch.from_numpy(ref["attention_mask"])
    with torch.no_grad():
        hidden = encoder(*(torch.from_numpy(ref[k]).to(TEST_DEVICE) for k in ("input_ids", "token_type_ids")),
                         mask.to(TEST_DEVICE))
        pooled = torch.tanh(encoder.pooler(hidden[:, 0])).cpu()
        hidden = hidden.cpu()
    # Only real tokens are compared: padded positions are never read downstream.
    err = (hidden - torch.from_numpy(ref["last_hidden_state"])).abs()[mask].max().item()
    assert err < 1e-4, err
    assert (pooled - torch.from_numpy(ref["pooler_output"])).abs().max().item() < 1e-4
    assert pooling == "mean"  # the sentence-transformers folder declares mean pooling
    assert mask.sum(1).min() < mask.shape[1]  # the batch really has padding

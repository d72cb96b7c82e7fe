"""Our WordPiece tokenizer gives exactly the ids of Hugging Face's BERT tokenizer.

The reference ids are stored in fixtures/tokenizer_glue.json (real GLUE sentences from six tasks
and hand-written edge cases), written once by fixtures/make_tokenizer_fixture.py in an
environment with transformers; this test needs only the vocabulary of the default model.
"""

import json
from pathlib import Path

import pytest

from pretrained.tokenization import WordPieceTokenizer

FIXTURE = Path(__file__).parent / "fixtures" / "tokenizer_glue.json"


@pytest.fixture(scope="module")
def tokenizer(minilm_dir):
    return WordPieceTokenizer.from_dir(minilm_dir)


def test_fixture_is_broad():
    examples = json.loads(FIXTURE.read_text(encoding="utf-8"))["examples"]
    assert len(examples) > 300
    assert {ex["task"] for ex in examples} >= {"cola", "sst2", "mrpc", "stsb", "rte", "qnli", "hand"}
    truncated_pairs = [ex for ex in examples if ex["b"] is not None and len(ex["input_ids"]) == ex["max_length"]]
    assert len(truncated_pairs) > 20


def test_same_ids_as_reference(tokenizer):
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    mismatches = []
    for i, ex in enumerate(fixture["examples"]):
        ids, types = tokenizer.encode(ex["a"], ex["b"], max_length=ex["max_length"])
        if (ids, types) != (ex["input_ids"], ex["token_type_ids"]):
            mismatches.append(f"#{i} {ex['task']} {ex['a'][:50]!r} / {str(ex['b'])[:50]!r}:\n"
                              f"  ours {ids}\n  ref  {ex['input_ids']}")
    assert not mismatches, f"{len(mismatches)} of {len(fixture['examples'])} differ from {fixture['source']}:\n" + \
        "\n".join(mismatches[:10])

"""BERT's WordPiece tokenizer on a tiny vocabulary: each rule of the basic tokenizer, greedy
longest-match-first, encoding and pair truncation. test_tokenizer_parity.py checks the ids
against Hugging Face's on real GLUE text."""

from pathlib import Path

import pytest

from data import DataError, Example, encode_examples
from pretrained.tokenization import WordPieceTokenizer


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "una", "##ffa",
              "##ble", "the", "cafe", "!", ",", "'", "t", "don", "我", "a", "b", "c", "d", "e"]


@pytest.fixture
def tok(tmp_path):
    write(tmp_path / "vocab.txt", "\n".join(TINY_VOCAB) + "\n")
    return WordPieceTokenizer.from_dir(tmp_path)


def test_tokenizer_reads_special_ids(tok):
    assert (tok.pad_id, tok.unk_id, tok.cls_id, tok.sep_id) == (0, 1, 2, 3)


def test_wordpiece_is_greedy_longest_match_first(tok):
    # "una" is the longest prefix in the vocabulary, so "un" + "##affable" is never tried
    assert tok.tokenize("unaffable") == ["una", "##ffa", "##ble"]
    assert tok.tokenize("unbreakable") == ["[UNK]"]  # no piece for "##b...": the whole word is unknown
    assert tok.tokenize("a" * 101) == ["[UNK]"]       # over 100 characters


def test_basic_tokenization(tok):
    assert tok.tokenize("The  CAFÉ!") == ["the", "cafe", "!"]            # lower-case, accents stripped
    assert tok.tokenize("don't") == ["don", "'", "t"]                    # punctuation is its own word
    # NUL and the zero-width space are dropped, so "a\0b\u200b" is the word "ab" (not in the vocabulary);
    # tab and the ideographic space U+3000 separate words
    assert tok.tokenize("a\x00b\u200b\tc\u3000d") == ["[UNK]", "c", "d"]
    assert tok.tokenize("a我b") == ["a", "我", "b"]                       # CJK ideographs are words


def test_tokenizer_config_can_keep_case(tmp_path):
    write(tmp_path / "vocab.txt", "\n".join(TINY_VOCAB + ["Cafe", "Café"]) + "\n")
    write(tmp_path / "tokenizer_config.json", '{"do_lower_case": false}')
    assert WordPieceTokenizer.from_dir(tmp_path).tokenize("Café") == ["Café"]  # accents follow lower-casing


def test_missing_vocab(tmp_path):
    with pytest.raises(DataError, match="vocab.txt"):
        WordPieceTokenizer.from_dir(tmp_path)


def test_vocab_without_special_tokens(tmp_path):
    write(tmp_path / "vocab.txt", "the\nmovie\n")
    with pytest.raises(DataError, match=r"lacks the special tokens \[CLS\], \[SEP\], \[PAD\], \[UNK\]"):
        WordPieceTokenizer.from_dir(tmp_path)


def test_encode_single_and_pair(tok):
    assert tok.encode("a b") == ([2, 19, 20, 3], [0, 0, 0, 0])
    assert tok.encode("a", "b c") == ([2, 19, 3, 20, 21, 3], [0, 0, 0, 1, 1, 1])
    assert tok.encode("a b c d e", max_length=4) == ([2, 19, 20, 3], [0, 0, 0, 0])


def test_pair_truncation_cuts_the_longer_side_first(tok):
    # budget = 9 - 3 = 6 tokens: "a a a a a" (5) + "b b" (2) -> 4 + 2
    ids, _ = tok.encode("a a a a a", "b b", max_length=9)
    assert ids == [2, 19, 19, 19, 19, 3, 20, 20, 3]
    # on a tie the last token goes from b: 3 + 3 over a budget of 5 -> 3 + 2
    ids, types = tok.encode("a a a", "b b b", max_length=8)
    assert ids == [2, 19, 19, 19, 3, 20, 20, 3] and types == [0] * 5 + [1] * 3


def test_encode_examples(tok):
    encoded = encode_examples(tok, [Example("a", "b", 1), Example("c", None, 0)], max_length=8)
    assert encoded == [([2, 19, 3, 20, 3], [0, 0, 0, 1, 1], 1), ([2, 21, 3], [0, 0, 0], 0)]

"""RoBERTa's byte-level BPE tokenizer, piece by piece, and exactly the ids of Hugging Face's.

The reference ids are stored in fixtures/tokenizer_bpe_glue.json (real GLUE sentences from five
tasks and hand-written edge cases), written once by fixtures/make_bpe_fixture.py in an environment
with transformers. The vocabulary is fixtures/bpe/: GPT-2's first 3000 merges with RoBERTa's ids
(fixtures/make_bpe_vocab.py), so this test needs no download.
"""

import json
import shutil
from pathlib import Path

import pytest

from data import DataError
from pretrained.tokenization import ByteLevelBPETokenizer, WordPieceTokenizer, byte_to_unicode, gpt2_split, load_tokenizer

FIXTURES = Path(__file__).parent / "fixtures"
BPE_DIR = FIXTURES / "bpe"
REFERENCE = json.loads((FIXTURES / "tokenizer_bpe_glue.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def tokenizer():
    return ByteLevelBPETokenizer.from_dir(BPE_DIR)


def test_bytes_are_spelled_as_printable_characters():
    symbols = byte_to_unicode()
    assert len(set(symbols.values())) == 256                       # reversible
    assert all(symbols[b] == chr(b) for b in b"azAZ09!~\xa1\xac\xae\xff")  # printable bytes stand for themselves
    assert symbols[0] == "\u0100"                                  # the first of the 68 moved bytes
    assert symbols[ord(" ")] == "Ġ" == "\u0120"                    # why RoBERTa's tokens start with Ġ
    assert symbols[ord("\n")] == "Ċ"
    assert symbols[0xAD] == "\u0143"                               # the soft hyphen is the last moved byte
    assert [symbols[b] for b in "é".encode("utf-8")] == ["Ã", "©"]  # a two-byte character is two symbols


@pytest.mark.parametrize("text, pieces", [
    ("Hello  world's 42!", ["Hello", " ", " world", "'s", " 42", "!"]),
    ("DON'T don't", ["DON", "'", "T", " don", "'t"]),  # contractions are lower case only
    ("!'s", ["!'", "s"]),                              # a run of symbols swallows the apostrophe
    ("a  \n b", ["a", "  \n", " b"]),                  # the last space before a word joins the word
    ("trailing  ", ["trailing", "  "]),
    ("x\u00a0 y", ["x", "\u00a0", " y"]),              # a no-break space is whitespace, but only " " leads a word
    ("café ½²", ["café", " ½²"]),                      # letters and numbers beyond ASCII
    ("a\x1cb", ["a", "\x1c", "b"]),                    # str.isspace() says yes; GPT-2's \s says no
])
def test_gpt2_split(text, pieces):
    assert gpt2_split(text) == pieces


def test_bpe_merges_lowest_rank_first():
    merges = [("l", "o"), ("lo", "w"), ("e", "r"), ("Ġ", "low")]  # by rank: "lo" is learned first
    vocab = {tok: i for i, tok in enumerate(["<s>", "<pad>", "</s>", "<unk>", "l", "o", "w", "e", "r", "Ġ",
                                             "lo", "low", "er", "Ġlow"])}
    tok = ByteLevelBPETokenizer(vocab, merges)
    # " lower": Ġ l o w e r -> Ġ lo w e r -> Ġ low e r -> Ġ low er -> Ġlow er
    assert tok.tokenize("low lower") == ["low", "Ġlow", "er"]
    assert tok.tokenize("owl") == ["o", "w", "l"]      # no merge applies
    assert tok.encode("low lower")[0] == [0, 11, 13, 12, 2]


def test_encode_adds_roberta_special_tokens(tokenizer):
    assert (tokenizer.cls_id, tokenizer.pad_id, tokenizer.sep_id, tokenizer.unk_id) == (0, 1, 2, 3)
    hello = tokenizer.encode("Hello")[0][1:-1]
    world = tokenizer.encode("world")[0][1:-1]
    assert tokenizer.encode("Hello", "world") == ([0, *hello, 2, 2, *world, 2], [0] * (len(hello) + len(world) + 4))


def test_fixture_is_broad():
    examples = REFERENCE["examples"]
    assert len(examples) > 400
    assert {ex["task"] for ex in examples} == {"sst2", "cola", "mrpc", "stsb", "rte", "hand"}
    truncated_pairs = [(ex, m) for ex in examples if ex["b"] is not None for m, ids in ex["ids"].items()
                       if len(ids) == int(m)]
    assert {m for _, m in truncated_pairs} >= {"128", "127", "20", "21"}  # even and odd budgets
    assert len(truncated_pairs) > 100


@pytest.mark.parametrize("task", ["sst2", "cola", "mrpc", "stsb", "rte", "hand"])
def test_same_ids_as_reference(tokenizer, task):
    with_prefix = ByteLevelBPETokenizer.from_dir(BPE_DIR)
    with_prefix.add_prefix_space = True
    mismatches, n = [], 0
    for ex in REFERENCE["examples"]:
        if ex["task"] != task:
            continue
        tok = with_prefix if ex.get("add_prefix_space") else tokenizer
        for max_length, ref_ids in ex["ids"].items():
            ids, types = tok.encode(ex["a"], ex["b"], max_length=int(max_length))
            n += 1
            if ids != ref_ids or types != [0] * len(ids):
                mismatches.append(f"{ex['a'][:50]!r} / {str(ex['b'])[:50]!r} at {max_length}:\n"
                                  f"  ours {ids}\n  ref  {ref_ids}")
    assert n > 0
    assert not mismatches, f"{len(mismatches)} of {n} differ from {REFERENCE['source']}:\n" + "\n".join(mismatches[:10])


def test_add_prefix_space_is_read_from_tokenizer_config(tmp_path):
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(BPE_DIR / name, tmp_path / name)
    assert not ByteLevelBPETokenizer.from_dir(tmp_path).add_prefix_space  # RoBERTa's default
    (tmp_path / "tokenizer_config.json").write_text('{"add_prefix_space": true}', encoding="utf-8")
    tok = ByteLevelBPETokenizer.from_dir(tmp_path)
    assert tok.tokenize("Hello") == tok.tokenize(" Hello")


def test_load_tokenizer_picks_the_class_from_the_files(tmp_path):
    assert isinstance(load_tokenizer(BPE_DIR), ByteLevelBPETokenizer)
    (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nthe\n", encoding="utf-8")
    assert isinstance(load_tokenizer(tmp_path), WordPieceTokenizer)


def test_load_tokenizer_names_the_files_it_expects(tmp_path):
    with pytest.raises(DataError) as e:
        load_tokenizer(tmp_path)
    assert str(e.value) == (f"no tokenizer in {tmp_path}: expected vocab.txt (WordPiece) "
                            f"or vocab.json and merges.txt (byte-level BPE)")


def test_from_dir_errors(tmp_path):
    with pytest.raises(DataError, match="no vocab.json in"):
        ByteLevelBPETokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text('{"a": 0, "<s>": 1}', encoding="utf-8")
    with pytest.raises(DataError, match="no merges.txt in"):
        ByteLevelBPETokenizer.from_dir(tmp_path)
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n", encoding="utf-8")
    with pytest.raises(DataError, match="lacks the special tokens </s>, <pad>, <unk>"):
        ByteLevelBPETokenizer.from_dir(tmp_path)


def test_long_pieces_merge_as_the_plain_bpe_does():
    """_bpe_long (a heap, for long pieces) gives exactly _bpe's tokens."""
    import random
    tok = ByteLevelBPETokenizer.from_dir(BPE_DIR)
    rng = random.Random(0)
    symbols = byte_to_unicode()
    for _ in range(300):
        alphabet = rng.choice(["abcdefghij", "etaoinshrdlu", "ab", "thequickbrown ", "0123456789"])
        piece = "".join(rng.choice(alphabet) for _ in range(rng.randint(2, 200)))
        chars = [symbols[b] for b in piece.encode("utf-8")]
        assert tok._bpe_long(chars) == tok._bpe(chars), piece


def truncate_after_tokenizing(tok, text_a, text_b, max_length, rule):
    """The reference: tokenize everything, then cut by the truncation rule."""
    ids = lambda text: [tok.vocab.get(t, tok.unk_id) for t in tok.tokenize(text)]
    a, b = ids(text_a), ids(text_b)
    n_a, n_b = rule(len(a), len(b))
    return a[:n_a], b[:n_b]


@pytest.mark.parametrize("kind", ["bpe", "wordpiece"])
def test_long_texts_are_cut_exactly_as_after_full_tokenization(kind, tmp_path):
    import random
    from pretrained import tokenization
    from test_wordpiece import TINY_VOCAB
    rng = random.Random(1)
    if kind == "bpe":
        tok, extra, rule = ByteLevelBPETokenizer.from_dir(BPE_DIR), 4, tokenization._longest_first_fast
    else:
        (tmp_path / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
        tok, extra, rule = WordPieceTokenizer.from_dir(tmp_path), 3, tokenization._longest_first
    words = ["the", "a", "b", "cafe", "don't", "unaffable", "hello", "world", "!"]
    for max_length in (8, 9, 16, 17):
        budget = max_length - extra
        for n_a in (0, 1, budget // 2, budget, budget + 1, budget + 7):
            for n_b in (1, budget // 2, budget - 1, budget + 1, budget + 3):
                text_a = " ".join(rng.choice(words) for _ in range(n_a)) or "a"
                text_b = " ".join(rng.choice(words) for _ in range(n_b))
                ids, _ = tok.encode(text_a, text_b, max_length)
                a, b = truncate_after_tokenizing(tok, text_a, text_b, max_length,
                                                 lambda x, y: rule(x, y, budget))
                assert ids == [tok.cls_id] + a + [tok.sep_id] * (extra - 2) + b + [tok.sep_id], (text_a, text_b)

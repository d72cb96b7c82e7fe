"""
GLUE for osrm-min: the eight tasks, a TSV reader, the BERT and RoBERTa tokenizers, batching and metrics.

This is the data side of the paper's experimental protocol: the 8 GLUE tasks
(Wang et al. 2019, "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language
Understanding"), scored on the dev split (MNLI: matched), STS-B as regression, max length 128,
and the metrics x100: CoLA Matthews correlation; SST-2, MNLI, QNLI, RTE accuracy; MRPC and QQP
the mean of accuracy and F1; STS-B the mean of Pearson and Spearman correlation.

One tokenizer is BERT's uncased WordPiece (Devlin et al. 2019, "BERT: Pre-training of Deep
Bidirectional Transformers for Language Understanding"). The behaviour it reproduces is that of
Google's tokenization.py and Hugging Face's Python BertTokenizer (BertTokenizerLegacy in
transformers 5); tests/test_tokenizer_parity.py checks exact agreement with the latter on real
GLUE sentences. One known difference: a literal "[SEP]" (or another special token) inside the
text is tokenized as text here, as Google's code does, while Hugging Face maps it to the special id.

The other tokenizer is RoBERTa's (Liu et al. 2019), GPT-2's byte-level BPE (Radford et al. 2019),
written here with the standard library only (no `regex` package); it reproduces Hugging Face's
RobertaTokenizer in transformers 5, which tests/test_bpe_tokenizer.py checks on real GLUE
sentences. load_tokenizer(model_dir) picks the one that a model folder's files call for.

Nothing here needs a GPU or any library beyond torch and numpy:

    from data import TASKS, find_data_dir, load_split, load_tokenizer, encode_examples, make_batches
    examples, n_skipped = load_split(TASKS["mrpc"], "dev", find_data_dir(None))
"""

import json
import math
import os
import pathlib
import unicodedata
from dataclasses import dataclass

import numpy as np
import torch


class DataError(Exception):
    """A user's data problem; the CLI prints str(e) as a one-line error and exits non-zero."""


@dataclass(frozen=True)
class Task:
    name: str            # short name used on the command line, e.g. "sst2"
    folder: str          # folder inside the GLUE directory, e.g. "SST-2"
    train_file: str      # e.g. "train.tsv"
    dev_file: str        # e.g. "dev.tsv" (MNLI: "dev_matched.tsv")
    text_columns: tuple  # header names (or indices, for header-less CoLA) of sentence a [and b]
    label_column: object # header name or index of the label
    labels: tuple        # label strings in class-index order; () for STS-B regression
    metric: str          # "matthews" | "accuracy" | "acc_f1" | "pearson_spearman"
    header: bool = True  # False only for CoLA

    @property
    def num_labels(self) -> int:
        return len(self.labels) if self.labels else 1  # regression has one output


# Columns and label orders as in GLUE's files and the usual GLUE processors.
TASKS = {t.name: t for t in [
    Task("cola", "CoLA", "train.tsv", "dev.tsv", (3,), 1, ("0", "1"), "matthews", header=False),
    Task("sst2", "SST-2", "train.tsv", "dev.tsv", ("sentence",), "label", ("0", "1"), "accuracy"),
    Task("mrpc", "MRPC", "train.tsv", "dev.tsv", ("#1 String", "#2 String"), "Quality", ("0", "1"), "acc_f1"),
    Task("stsb", "STS-B", "train.tsv", "dev.tsv", ("sentence1", "sentence2"), "score", (), "pearson_spearman"),
    Task("qqp", "QQP", "train.tsv", "dev.tsv", ("question1", "question2"), "is_duplicate", ("0", "1"), "acc_f1"),
    Task("mnli", "MNLI", "train.tsv", "dev_matched.tsv", ("sentence1", "sentence2"), "gold_label",
         ("contradiction", "entailment", "neutral"), "accuracy"),
    Task("qnli", "QNLI", "train.tsv", "dev.tsv", ("question", "sentence"), "label",
         ("entailment", "not_entailment"), "accuracy"),
    Task("rte", "RTE", "train.tsv", "dev.tsv", ("sentence1", "sentence2"), "label",
         ("entailment", "not_entailment"), "accuracy"),
]}


def parse_tasks(spec: str) -> list:
    """'sst2,MRPC, sts-b' -> ['sst2', 'mrpc', 'stsb'] (order kept, duplicates dropped)."""
    names = []
    for part in spec.split(","):
        name = part.strip().lower().replace("-", "")  # also accept the folder spellings SST-2, STS-B
        if not name or name in names:
            continue
        if name not in TASKS:
            raise DataError(f"unknown task '{part.strip()}'; valid tasks: {', '.join(TASKS)}")
        names.append(name)
    if not names:
        raise DataError(f"no task given; valid tasks: {', '.join(TASKS)}")
    return names


def find_data_dir(data_dir=None) -> pathlib.Path:
    """The GLUE folder: the --data-dir argument, else $GLUE_DIR."""
    data_dir = data_dir or os.environ.get("GLUE_DIR")
    if not data_dir:
        raise DataError("no GLUE data folder: pass --data-dir DIR or set GLUE_DIR to a folder laid out as "
                        "download_glue_data.py makes it (CoLA/, SST-2/, ...; data from https://gluebenchmark.com)")
    path = pathlib.Path(data_dir).expanduser()
    if not path.is_dir():
        raise DataError(f"GLUE data folder {path} does not exist (from --data-dir or GLUE_DIR)")
    return path


@dataclass
class Example:
    text_a: str
    text_b: object  # str, or None for single-sentence tasks
    label: object   # int class index, or float score for STS-B


def _column(header: list, col, path) -> int:
    """Index of a column given by name (files with a header) or by index (CoLA)."""
    if isinstance(col, int):
        return col
    if col not in header:
        raise DataError(f"{path}: no column '{col}' in the header; is this a GLUE file?")
    return header.index(col)


def _parse_label(task: Task, raw: str):
    """Class index or float score; None when the label is unknown or unparsable."""
    if not task.labels:
        try:
            score = float(raw)
        except ValueError:
            return None
        return score if math.isfinite(score) else None
    return task.labels.index(raw) if raw in task.labels else None


def load_split(task: Task, split: str, data_dir, limit=None) -> tuple:
    """Read the train or dev split of a task. Returns (examples, n_skipped).

    Rows with the wrong number of fields, an unknown label or an unparsable score are skipped
    and counted, not fatal. `limit` keeps the first `limit` usable rows in file order.
    """
    if split not in ("train", "dev"):
        raise ValueError(f"split must be 'train' or 'dev', not {split!r}")
    path = pathlib.Path(data_dir) / task.folder / (task.train_file if split == "train" else task.dev_file)
    if not path.is_file():
        raise DataError(f"missing {path}: the GLUE folder may be partial (see its README for what it holds)")
    examples, n_skipped = [], 0
    # utf-8-sig drops the BOM that MRPC starts with; newline="\n" ends lines at "\n" only, so that a
    # stray "\r" or other line-break character inside a sentence stays in its field. Fields are split
    # on tabs with no quote handling: quotes are text, as GLUE is read with csv.QUOTE_NONE.
    try:
        with open(path, encoding="utf-8-sig", newline="\n") as f:
            rows = (line.removesuffix("\n").removesuffix("\r").split("\t") for line in f)
            if task.header:
                header = next(rows, None)
                if header is None:
                    raise DataError(f"{path} is empty")
                n_fields = len(header)
            else:
                header, n_fields = None, 4  # CoLA: source, label, original label, sentence
            text_cols = [_column(header, c, path) for c in task.text_columns]
            label_col = _column(header, task.label_column, path)
            for fields in rows:
                if limit is not None and len(examples) >= limit:
                    break
                label = _parse_label(task, fields[label_col]) if len(fields) == n_fields else None
                if label is None:
                    n_skipped += 1
                    continue
                texts = [fields[c] for c in text_cols]
                examples.append(Example(texts[0], texts[1] if len(texts) > 1 else None, label))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); is it a GLUE file?")
    if not examples and limit != 0:
        raise DataError(f"{path}: no usable rows ({n_skipped} malformed)")
    return examples, n_skipped


# The character classes of BERT's tokenization.py: whitespace, control, punctuation, CJK.

def _is_whitespace(ch: str) -> bool:
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs"


def _is_control(ch: str) -> bool:
    # tab and newlines are whitespace, not control
    return ch not in "\t\n\r" and unicodedata.category(ch).startswith("C")


def _is_punctuation(ch: str) -> bool:
    # all non-alphanumeric ASCII counts ("$", "^", "`" are not Unicode P*), plus every Unicode P*
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


_CJK_RANGES = [(0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
               (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F)]


def _is_cjk(ch: str) -> bool:
    # only the CJK Unified Ideographs blocks, as in BERT; Hangul and kana are treated like letters
    return any(lo <= ord(ch) <= hi for lo, hi in _CJK_RANGES)


class WordPieceTokenizer:
    """BERT's tokenizer: basic tokenization (clean, lower-case, strip accents, split punctuation)
    followed by greedy longest-match-first WordPiece."""

    def __init__(self, vocab: dict, do_lower_case=True, strip_accents=None, tokenize_chinese_chars=True,
                 max_chars_per_word=100):
        self.vocab = vocab  # token string -> id
        self.do_lower_case = do_lower_case
        self.strip_accents = do_lower_case if strip_accents is None else strip_accents  # None: follow lower-casing
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self.max_chars_per_word = max_chars_per_word  # longer words become [UNK]
        self.cls_id, self.sep_id = vocab["[CLS]"], vocab["[SEP]"]
        self.pad_id, self.unk_id = vocab["[PAD]"], vocab["[UNK]"]
        self._cache = {}  # word -> word pieces; GLUE repeats words a lot

    @classmethod
    def from_dir(cls, model_dir) -> "WordPieceTokenizer":
        """Read vocab.txt (one token per line, id = line number) and tokenizer_config.json if present."""
        model_dir = pathlib.Path(model_dir)
        vocab_file = model_dir / "vocab.txt"
        if not vocab_file.is_file():
            raise DataError(f"no vocab.txt in {model_dir}")
        tokens = vocab_file.read_text(encoding="utf-8").split("\n")
        if tokens[-1] == "":
            tokens.pop()
        vocab = {tok.rstrip("\r"): i for i, tok in enumerate(tokens)}
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in vocab]
        if missing:
            raise DataError(f"{vocab_file} lacks the special tokens {', '.join(missing)}; "
                            f"is this a BERT WordPiece vocabulary?")
        config_file = model_dir / "tokenizer_config.json"
        config = _read_json(config_file) if config_file.is_file() else {}
        return cls(vocab, do_lower_case=config.get("do_lower_case", True),
                   strip_accents=config.get("strip_accents"),
                   tokenize_chinese_chars=config.get("tokenize_chinese_chars", True))

    def _basic_tokenize(self, text: str) -> list:
        """Split text into words and punctuation marks, normalised as BERT's BasicTokenizer does."""
        # drop NUL, U+FFFD and control characters; every whitespace character becomes a space
        text = "".join(" " if _is_whitespace(ch) else ch for ch in text
                       if ch not in "\x00\ufffd" and not _is_control(ch))
        if self.tokenize_chinese_chars:
            text = "".join(f" {ch} " if _is_cjk(ch) else ch for ch in text)  # each ideograph is a word
        text = unicodedata.normalize("NFC", text)  # one code point per accented letter before lower()
        words = []
        for word in text.split():
            if self.do_lower_case:
                word = word.lower()
            if self.strip_accents:
                # NFD splits "é" into "e" + a combining accent (category Mn), which we drop
                word = "".join(ch for ch in unicodedata.normalize("NFD", word) if unicodedata.category(ch) != "Mn")
            current = ""
            for ch in word:  # each punctuation character is a word of its own
                if _is_punctuation(ch):
                    words += [current, ch] if current else [ch]
                    current = ""
                else:
                    current += ch
            if current:
                words.append(current)
        return words

    def _wordpiece(self, word: str) -> list:
        """Greedy longest-match-first: 'unaffable' -> ['una', '##ffa', '##ble']; no match -> ['[UNK]']."""
        if len(word) > self.max_chars_per_word:
            return ["[UNK]"]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:  # shrink from the right until the piece is in the vocabulary
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    break
                end -= 1
            if end == start:
                return ["[UNK]"]  # one unmatchable position makes the whole word unknown
            pieces.append(piece)
            start = end
        return pieces

    def tokenize(self, text: str) -> list:
        tokens = []
        for word in self._basic_tokenize(text):
            if word not in self._cache:
                self._cache[word] = self._wordpiece(word)
            tokens += self._cache[word]
        return tokens

    def encode(self, text_a: str, text_b=None, max_length: int = 128) -> tuple:
        """(input_ids, token_type_ids) for [CLS] a [SEP] or [CLS] a [SEP] b [SEP], at most max_length long."""
        ids_a = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text_a)]
        if text_b is None:
            ids_a = ids_a[:max_length - 2]  # room for [CLS] and [SEP]
            return [self.cls_id] + ids_a + [self.sep_id], [0] * (len(ids_a) + 2)
        ids_b = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text_b)]
        n_a, n_b = _longest_first(len(ids_a), len(ids_b), max_length - 3)  # room for [CLS], [SEP], [SEP]
        input_ids = [self.cls_id] + ids_a[:n_a] + [self.sep_id] + ids_b[:n_b] + [self.sep_id]
        return input_ids, [0] * (n_a + 2) + [1] * (n_b + 1)


def _longest_first(n_a: int, n_b: int, budget: int) -> tuple:
    """Lengths to keep of a pair so that n_a + n_b <= budget: drop the last token of the longer
    sequence, one at a time, and of b on a tie. This is BERT's _truncate_seq_pair and Hugging
    Face's Python BertTokenizer (truncation="longest_first"). HF's fast tokenizers split the
    budget differently (_longest_first_fast); the two differ by one token when both sequences
    are cut to an odd budget and b is at least as long as a."""
    while n_a + n_b > budget:
        if n_a > n_b:
            n_a -= 1
        else:
            n_b -= 1
    return n_a, n_b


# RoBERTa's tokenizer: GPT-2's byte-level BPE.

def byte_to_unicode() -> dict:
    """GPT-2's reversible map from the 256 byte values to 256 printable characters: {byte: char}.

    BPE runs on strings, and a vocabulary file should not hold spaces or control characters, so
    each byte is spelled as one visible character. The 188 bytes that are already printable and
    not a space ('!'..'~', '¡'..'¬', '®'..'ÿ') stand for themselves; the other 68 (controls,
    space, DEL, the Latin-1 no-break space and soft hyphen) take U+0100, U+0101, ... in byte
    order. So a space (byte 32) is 'Ġ' (U+0120) and a newline (byte 10) is 'Ċ' (U+010A).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, n_moved = {}, 0
    for b in range(256):
        if b in printable:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + n_moved)
            n_moved += 1
    return mapping


# The character classes of GPT-2's pattern, as Hugging Face tokenizers evaluates it (Oniguruma):
# \p{L} is a letter (Lu Ll Lt Lm Lo), \p{N} a number (Nd Nl No), and \s is Unicode White_Space:
# tab..carriage return, NEL, and the space separators. Python's str.isspace() also counts the
# four information separators \x1c..\x1f, which the reference treats as ordinary symbols.

def _char_kind(ch: str) -> str:
    """'L' letter, 'N' number, 'S' whitespace, 'O' anything else."""
    category = unicodedata.category(ch)
    if category[0] in "LN":
        return category[0]
    if ch in "\t\n\x0b\x0c\r\x85" or category in ("Zs", "Zl", "Zp"):
        return "S"
    return "O"


_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")  # lower case only, as in GPT-2


def gpt2_split(text: str) -> list:
    r"""Split text into the pieces that BPE encodes one at a time, as GPT-2's pattern does:

        's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+

    The alternatives are tried in this order at each position. A space joins the letters, digits
    or symbols after it (" world"), and a run of whitespace before a word leaves its last
    character to the next piece (\s+(?!\S)), which that character leads if it is a space.
    "Hello  world's 42!" -> ['Hello', ' ', ' world', "'s", ' 42', '!']; the pieces always
    concatenate back to the text.
    """
    kinds = [_char_kind(ch) for ch in text]
    pieces, i, n = [], 0, len(text)
    while i < n:
        contraction = next((c for c in _CONTRACTIONS if text.startswith(c, i)), None)
        # ' ?' : a space may lead a run of letters, of numbers or of other symbols
        start = i + 1 if text[i] == " " and i + 1 < n and kinds[i + 1] != "S" else i
        if contraction:
            end = i + len(contraction)
        elif kinds[start] != "S":  # ' ?\p{L}+', ' ?\p{N}+' or ' ?[^\s\p{L}\p{N}]+': one kind of character
            end = start + 1
            while end < n and kinds[end] == kinds[start]:
                end += 1
        else:
            end = i + 1
            while end < n and kinds[end] == "S":
                end += 1
            if end < n and end - i > 1:
                end -= 1  # '\s+(?!\S)': leave the last whitespace character to the word that follows
        pieces.append(text[i:end])
        i = end
    return pieces


class ByteLevelBPETokenizer:
    """RoBERTa's tokenizer (Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT Pretraining
    Approach"), which is GPT-2's byte-level BPE (Radford et al. 2019, "Language Models are
    Unsupervised Multitask Learners", Section 2.2): split the text with GPT-2's pattern, spell each
    piece's UTF-8 bytes with byte_to_unicode(), then apply the learned merges, lowest rank first.
    Any text can be encoded: the 256 byte symbols are in the vocabulary, so nothing is unknown.

    It reproduces Hugging Face's RobertaTokenizer in transformers 5 (the Rust tokenizers library;
    transformers 5 has no Python RoBERTa tokenizer): <s> a </s> and <s> a </s></s> b </s>, all
    token type ids 0, and that library's longest_first truncation (see _longest_first_fast).
    tests/test_bpe_tokenizer.py checks exact agreement on real GLUE sentences. As for WordPiece,
    a literal "<s>" (or another special token) in the text is tokenized as text here, while
    Hugging Face maps it to the special id.
    """

    def __init__(self, vocab: dict, merges: list, add_prefix_space=False):
        self.vocab = vocab  # token string (in byte symbols, 'Ġworld') -> id
        self.ranks = {pair: rank for rank, pair in enumerate(merges)}  # ('Ġ', 'w') -> rank; lower merges first
        self.add_prefix_space = add_prefix_space  # encode "Hello" as " Hello", like a word mid-sentence
        self.byte_symbols = byte_to_unicode()
        self.cls_id, self.sep_id = vocab["<s>"], vocab["</s>"]
        self.pad_id, self.unk_id = vocab["<pad>"], vocab["<unk>"]
        self._cache = {}  # piece -> token ids; GLUE repeats words a lot

    @classmethod
    def from_dir(cls, model_dir) -> "ByteLevelBPETokenizer":
        """Read vocab.json ({token: id}), merges.txt (one 'first second' pair per line, by rank,
        after an optional '#version' line) and tokenizer_config.json if present."""
        model_dir = pathlib.Path(model_dir)
        vocab_file, merges_file = model_dir / "vocab.json", model_dir / "merges.txt"
        for path in (vocab_file, merges_file):
            if not path.is_file():
                raise DataError(f"no {path.name} in {model_dir}")
        config_file = model_dir / "tokenizer_config.json"
        vocab = _read_json(vocab_file)
        config = _read_json(config_file) if config_file.is_file() else {}
        missing = [t for t in ("<s>", "</s>", "<pad>", "<unk>") if t not in vocab]
        if missing:
            raise DataError(f"{vocab_file} lacks the special tokens {', '.join(missing)}; "
                            f"is this a RoBERTa byte-level BPE vocabulary?")
        lines = merges_file.read_text(encoding="utf-8").split("\n")
        if lines and lines[0].startswith("#version"):
            lines = lines[1:]
        merges = [tuple(line.split()) for line in lines if line.strip()]
        bad = next((m for m in merges if len(m) != 2), None)
        if bad:
            raise DataError(f"{merges_file}: the line {' '.join(bad)!r} is not a pair of symbols")
        return cls(vocab, merges, add_prefix_space=config.get("add_prefix_space", False))

    def _bpe(self, symbols: list) -> list:
        """Merge adjacent symbols, the pair with the lowest rank first, until no pair is a merge:
        with merges [('l','o'), ('lo','w')], ['l','o','w','l','o'] -> ['low', 'lo']."""
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, math.inf))
            if best not in self.ranks:
                break  # no pair left that training merged
            merged, i = [], 0
            while i < len(symbols):  # merge every occurrence, left to right
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        return symbols

    def tokenize(self, text: str) -> list:
        """Token strings in byte symbols: 'Hello world' -> ['Hello', 'Ġworld'] with RoBERTa's merges."""
        if self.add_prefix_space and text and not text.startswith(" "):
            text = " " + text  # as the tokenizers library does: no second space, nothing for ""
        tokens = []
        for piece in gpt2_split(text):
            if piece not in self._cache:
                symbols = [self.byte_symbols[b] for b in piece.encode("utf-8")]  # 'é' -> ['Ã', '©']
                self._cache[piece] = self._bpe(symbols)
            tokens += self._cache[piece]
        return tokens

    def encode(self, text_a: str, text_b=None, max_length: int = 128) -> tuple:
        """(input_ids, token_type_ids) for <s> a </s> or <s> a </s></s> b </s>, at most max_length long.
        RoBERTa has a single token type, so token_type_ids are all 0."""
        ids_a = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text_a)]
        if text_b is None:
            input_ids = [self.cls_id] + ids_a[:max_length - 2] + [self.sep_id]  # room for <s> and </s>
            return input_ids, [0] * len(input_ids)
        ids_b = [self.vocab.get(t, self.unk_id) for t in self.tokenize(text_b)]
        n_a, n_b = _longest_first_fast(len(ids_a), len(ids_b), max_length - 4)  # room for <s> </s></s> </s>
        input_ids = [self.cls_id] + ids_a[:n_a] + [self.sep_id, self.sep_id] + ids_b[:n_b] + [self.sep_id]
        return input_ids, [0] * len(input_ids)


def _read_json(path: pathlib.Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path} is not valid JSON ({e})")


def _longest_first_fast(n_a: int, n_b: int, budget: int) -> tuple:
    """Lengths to keep of a pair so that n_a + n_b <= budget, as Hugging Face's tokenizers library
    (the fast tokenizers) does for truncation="longest_first": if the shorter sequence fits in
    half the budget, only the longer one is cut; otherwise each gets half, and on an odd budget
    the spare token goes to the longer sequence, to b on a tie. (The Python rule, _longest_first,
    gives the spare token to a.)"""
    if n_a + n_b <= budget:
        return n_a, n_b
    shorter = min(n_a, n_b)
    if 2 * shorter <= budget:
        keep_short, keep_long = shorter, budget - shorter
    else:
        keep_short, keep_long = budget // 2, budget - budget // 2
    return (keep_long, keep_short) if n_a > n_b else (keep_short, keep_long)


def load_tokenizer(model_dir):
    """The tokenizer a model folder holds: BERT's WordPiece (vocab.txt) or RoBERTa's byte-level BPE
    (vocab.json and merges.txt)."""
    model_dir = pathlib.Path(model_dir)
    if (model_dir / "vocab.txt").is_file():
        return WordPieceTokenizer.from_dir(model_dir)
    if (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
        return ByteLevelBPETokenizer.from_dir(model_dir)
    raise DataError(f"no tokenizer in {model_dir}: expected vocab.txt (WordPiece) "
                    f"or vocab.json and merges.txt (byte-level BPE)")


def encode_examples(tokenizer: WordPieceTokenizer, examples: list, max_length: int) -> list:
    """Tokenize once: [(input_ids, token_type_ids, label), ...]."""
    return [(*tokenizer.encode(ex.text_a, ex.text_b, max_length), ex.label) for ex in examples]


def _collate(items: list, pad_id: int) -> dict:
    """Pad a batch to its longest sequence (dynamic padding)."""
    T = max(len(ids) for ids, _, _ in items)  # longest sequence in the batch
    pad = lambda seq, value: seq + [value] * (T - len(seq))
    labels = [label for _, _, label in items]
    is_regression = isinstance(labels[0], float)  # STS-B scores
    return {
        "input_ids": torch.tensor([pad(ids, pad_id) for ids, _, _ in items]),              # (B, T) long
        "token_type_ids": torch.tensor([pad(types, 0) for _, types, _ in items]),          # (B, T) long
        "attention_mask": torch.tensor([pad([True] * len(ids), False) for ids, _, _ in items]),  # True = real token
        "labels": torch.tensor(labels, dtype=torch.float32 if is_regression else torch.long),   # (B,)
    }


def make_batches(encoded: list, batch_size: int, shuffle=False, seed=0, group_by_length=False, pad_id=0) -> list:
    """Split encoded examples into padded batches (dicts of tensors).

    shuffle: a fresh permutation from torch.Generator seeded with `seed` (pass seed + epoch).
    group_by_length: within chunks of 50 batches, sort by length before cutting batches, so that
    each batch holds similar lengths and little padding; with shuffle, the batch order is then
    shuffled too, so that the model does not see short sequences first.
    """
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(encoded), generator=g).tolist() if shuffle else list(range(len(encoded)))
    if group_by_length:
        chunk = 50 * batch_size
        batches = []
        for start in range(0, len(order), chunk):
            part = sorted(order[start:start + chunk], key=lambda i: len(encoded[i][0]))  # stable sort
            batches += [part[j:j + batch_size] for j in range(0, len(part), batch_size)]
        if shuffle:
            batches = [batches[k] for k in torch.randperm(len(batches), generator=g).tolist()]
    else:
        batches = [order[j:j + batch_size] for j in range(0, len(order), batch_size)]
    return [_collate([encoded[i] for i in idx], pad_id) for idx in batches]


# Metrics, as GLUE reports them (sklearn / scipy definitions), written with numpy.

def accuracy(preds, labels) -> float:
    return float(np.mean(np.asarray(preds) == np.asarray(labels)))


def f1(preds, labels) -> float:
    """Binary F1 of class 1: 2 TP / (2 TP + FP + FN); 0.0 when there are no positives at all."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    tp = np.sum((preds == 1) & (labels == 1))
    fp = np.sum((preds == 1) & (labels != 1))
    fn = np.sum((preds != 1) & (labels == 1))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom > 0 else 0.0  # sklearn's zero_division=0


def matthews_corrcoef(preds, labels) -> float:
    """Matthews correlation from the confusion matrix, in sklearn's multiclass form (Gorodkin 2004):
    (c s - t.p) / sqrt((s^2 - p.p)(s^2 - t.t)), with c correct, s samples, t true and p predicted
    counts per class. 0.0 when either side is constant (denominator 0), as sklearn returns."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    classes = np.union1d(preds, labels)
    t = np.array([np.sum(labels == k) for k in classes], dtype=np.float64)  # true count per class
    p = np.array([np.sum(preds == k) for k in classes], dtype=np.float64)   # predicted count per class
    c, s = float(np.sum(preds == labels)), float(len(labels))
    cov_tp = c * s - t @ p
    cov_pp = s * s - p @ p
    cov_tt = s * s - t @ t
    if cov_pp * cov_tt == 0:
        return 0.0
    return float(cov_tp / np.sqrt(cov_tt * cov_pp))


def pearson(x, y) -> float:
    """Pearson correlation; 0.0 when either input is constant (scipy would return nan)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    denom = np.sqrt(np.sum(xm * xm) * np.sum(ym * ym))
    return float(np.sum(xm * ym) / denom) if denom > 0 else 0.0


def _average_ranks(x) -> np.ndarray:
    """1-based ranks, ties sharing their mean rank (scipy.stats.rankdata, method='average')."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    new_run = np.r_[True, xs[1:] != xs[:-1]]  # where a run of equal values starts
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], len(x)]          # exclusive
    mean_rank = (starts + 1 + ends) / 2       # mean of the 1-based ranks starts+1 .. ends
    ranks = np.empty(len(x))
    ranks[order] = mean_rank[np.cumsum(new_run) - 1]
    return ranks


def spearman(x, y) -> float:
    """Spearman correlation: Pearson correlation of the average ranks."""
    return pearson(_average_ranks(x), _average_ranks(y))


_METRIC_KEYS = {"matthews": ("matthews",), "accuracy": ("accuracy",), "acc_f1": ("accuracy", "f1"),
                "pearson_spearman": ("pearson", "spearman")}
_METRIC_FNS = {"matthews": matthews_corrcoef, "accuracy": accuracy, "f1": f1, "pearson": pearson,
               "spearman": spearman}


def glue_metrics(task: Task, preds, labels) -> dict:
    """The metrics GLUE reports for a task; preds are class indices (floats for STS-B)."""
    return {k: _METRIC_FNS[k](preds, labels) for k in _METRIC_KEYS[task.metric]}


def main_score(task: Task, metrics: dict) -> float:
    """The one number per task that the paper reports, x100: the metric,
    or the mean of the two for MRPC and QQP (accuracy, F1) and STS-B (Pearson, Spearman)."""
    keys = _METRIC_KEYS[task.metric]
    return 100 * sum(metrics[k] for k in keys) / len(keys)

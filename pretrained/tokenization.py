"""The tokenizers, written with the standard library only: BERT's uncased WordPiece and
RoBERTa's byte-level BPE. `load_tokenizer(model_dir)` picks the one a model folder's files call for.

WordPiece (Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for
Language Understanding") reproduces Google's tokenization.py and Hugging Face's Python
BertTokenizer (BertTokenizerLegacy in transformers 5); tests/test_tokenizer_parity.py checks
exact agreement with the latter on real GLUE sentences. One known difference: a literal "[SEP]"
(or another special token) inside the text is tokenized as text here, as Google's code does,
while Hugging Face maps it to the special id.

The byte-level BPE is RoBERTa's (Liu et al. 2019), which is GPT-2's (Radford et al. 2019),
written without the `regex` package; it reproduces Hugging Face's RobertaTokenizer in
transformers 5, which tests/test_bpe_tokenizer.py checks on real GLUE sentences.

Both encode a sentence or a pair to (input_ids, token_type_ids), truncated to max_length:

    tokenizer = load_tokenizer("path/to/model-folder")
    input_ids, token_type_ids = tokenizer.encode("A sentence.", "Its pair.", max_length=128)

Nothing here is specific to OSRM; the module is named so that it shadows neither the standard
library's `tokenize` nor Hugging Face's `tokenizers` for anyone running beside transformers.
"""

import heapq
import itertools
import json
import math
import pathlib
import re
import unicodedata

from data import DataError


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
        tokens = _read_text(vocab_file).split("\n")
        if tokens[-1] == "":
            tokens.pop()
        vocab = {tok.rstrip("\r"): i for i, tok in enumerate(tokens)}
        missing = [t for t in ("[CLS]", "[SEP]", "[PAD]", "[UNK]") if t not in vocab]
        if missing:
            raise DataError(f"{vocab_file} lacks the special tokens {', '.join(missing)}; "
                            f"is this a BERT WordPiece vocabulary?")
        config_file = model_dir / "tokenizer_config.json"
        config = _read_json(config_file, CONFIG_KINDS) if config_file.is_file() else {}
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

    def tokens(self, text: str):
        """The word pieces of text, one at a time (so that a long text is cut without being
        tokenized to its end). The text is read in blocks cut at ASCII whitespace, which basic
        tokenization turns into a space and splits at: nothing it does (NFC included) joins
        characters across a space, so the words are the same as from the whole text."""
        for block in _blocks(text, _space_at_or_after):
            for word in self._basic_tokenize(block):
                if word not in self._cache:
                    self._cache[word] = self._wordpiece(word)
                yield from self._cache[word]

    def tokenize(self, text: str) -> list:
        return list(self.tokens(text))

    def encode(self, text_a: str, text_b=None, max_length: int = 128) -> tuple:
        """(input_ids, token_type_ids) for [CLS] a [SEP] or [CLS] a [SEP] b [SEP], at most max_length long."""
        if text_b is None:
            ids_a = _first_ids(self, text_a, max_length - 2)  # room for [CLS] and [SEP]
            return [self.cls_id] + ids_a + [self.sep_id], [0] * (len(ids_a) + 2)
        # the Python rule needs no length beyond the budget: cutting longer sequences to it first
        # changes nothing (_longest_first)
        budget = max_length - 3  # room for [CLS], [SEP], [SEP]
        ids_a, ids_b = _first_ids(self, text_a, budget), _first_ids(self, text_b, budget)
        n_a, n_b = _longest_first(len(ids_a), len(ids_b), budget)
        input_ids = [self.cls_id] + ids_a[:n_a] + [self.sep_id] + ids_b[:n_b] + [self.sep_id]
        return input_ids, [0] * (n_a + 2) + [1] * (n_b + 1)


BLOCK = 1024  # characters of a text read first; most sentences are one block (_blocks)


def _blocks(text: str, cut):
    """text as consecutive blocks, the first about BLOCK characters long and each next one twice
    as long, each ending at `cut(text, i)`, the first place at or after i where the tokenizer
    may cut text without changing its tokens, so that a very long text is read only as far as
    max_length keeps its tokens."""
    start, size = 0, BLOCK
    while start < len(text):
        end = cut(text, start + size)
        yield text[start:end]
        start, size = end, 2 * size


def _space_at_or_after(text: str, i: int) -> int:
    """WordPiece's cuts: the first ASCII whitespace character at or after i (or the end)."""
    match = _ASCII_SPACE.search(text, i)
    return match.start() if match else len(text)


_ASCII_SPACE = re.compile(r"[ \t\n\r]")


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


def _lone_space_at_or_after(text: str, i: int) -> int:
    """gpt2_split's cuts: the first space at or after i between two characters that are not
    whitespace (or the end). A piece always ends before such a space (no run, contraction or
    whitespace piece spans it) and the next one starts at it, led by it, in the whole text
    as in the block that starts there."""
    while 0 < (p := text.find(" ", i)) < len(text) - 1:
        if _char_kind(text[p - 1]) != "S" and _char_kind(text[p + 1]) != "S":
            return p
        i = p + 1
    return len(text)


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
        if not all(type(i) is int and i >= 0 for i in vocab.values()):
            raise DataError(f"{vocab_file} does not map tokens to ids (non-negative integers)")
        config = _read_json(config_file, CONFIG_KINDS) if config_file.is_file() else {}
        missing = [t for t in ("<s>", "</s>", "<pad>", "<unk>") if t not in vocab]
        if missing:
            raise DataError(f"{vocab_file} lacks the special tokens {', '.join(missing)}; "
                            f"is this a RoBERTa byte-level BPE vocabulary?")
        lines = _read_text(merges_file).split("\n")
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

    def _bpe_long(self, symbols: list) -> list:
        """The same merges as `_bpe`, in O(n log n) instead of O(n^2), for long pieces (a
        200,000-character word took minutes with `_bpe`). Pairs wait in a heap by (rank,
        position): a merge only creates pairs that training learned later (they contain the new
        symbol), so popping the lowest rank, leftmost first, merges in `_bpe`'s order.
        tests/test_bpe_tokenizer.py holds the two equal."""
        n = len(symbols)
        symbols = list(symbols)
        after, before = list(range(1, n + 1)), list(range(-1, n - 1))  # a linked list of positions
        heap = [(self.ranks[pair], i, *pair) for i, pair in enumerate(zip(symbols, symbols[1:]))
                if pair in self.ranks]
        heapq.heapify(heap)
        while heap:
            _, i, left, right = heapq.heappop(heap)
            j = after[i]
            if j >= n or symbols[i] != left or symbols[j] != right:
                continue  # an earlier merge used one of the two symbols
            symbols[i], symbols[j] = left + right, None
            after[i] = after[j]
            if after[i] < n:
                before[after[i]] = i
            for a, b in ((before[i], i), (i, after[i])):  # the pairs the new symbol forms
                if a >= 0 and b < n and (symbols[a], symbols[b]) in self.ranks:
                    heapq.heappush(heap, (self.ranks[symbols[a], symbols[b]], a, symbols[a], symbols[b]))
        return [s for s in symbols if s is not None]

    def tokens(self, text: str):
        """Token strings in byte symbols, one at a time: 'Hello world' -> 'Hello', 'Ġworld'
        with RoBERTa's merges."""
        if self.add_prefix_space and text and not text.startswith(" "):
            text = " " + text  # as the tokenizers library does: no second space, nothing for ""
        for block in _blocks(text, _lone_space_at_or_after):  # read as far as wanted
            for piece in gpt2_split(block):
                if piece not in self._cache:
                    symbols = [self.byte_symbols[b] for b in piece.encode("utf-8")]  # 'é' -> ['Ã', '©']
                    self._cache[piece] = (self._bpe if len(symbols) <= 64 else self._bpe_long)(symbols)
                yield from self._cache[piece]

    def tokenize(self, text: str) -> list:
        return list(self.tokens(text))

    def encode(self, text_a: str, text_b=None, max_length: int = 128) -> tuple:
        """(input_ids, token_type_ids) for <s> a </s> or <s> a </s></s> b </s>, at most max_length long.
        RoBERTa has a single token type, so token_type_ids are all 0."""
        if text_b is None:
            ids_a = _first_ids(self, text_a, max_length - 2)  # room for <s> and </s>
            input_ids = [self.cls_id] + ids_a + [self.sep_id]
            return input_ids, [0] * len(input_ids)
        budget = max_length - 4  # room for <s> </s></s> </s>
        ids_a, ids_b = _first_ids(self, text_a, budget + 1), _first_ids(self, text_b, budget + 1)
        n_a, n_b = len(ids_a), len(ids_b)
        if n_a > budget and n_b > budget:  # both are cut: which one is longer gets the spare token
            n_a, n_b = sum(1 for _ in self.tokens(text_a)), sum(1 for _ in self.tokens(text_b))
            ids_a, ids_b = _first_ids(self, text_a, budget), _first_ids(self, text_b, budget)
        n_a, n_b = _longest_first_fast(n_a, n_b, budget)
        input_ids = [self.cls_id] + ids_a[:n_a] + [self.sep_id, self.sep_id] + ids_b[:n_b] + [self.sep_id]
        return input_ids, [0] * len(input_ids)


def _first_ids(tokenizer, text: str, n: int) -> list:
    """The ids of the first n tokens of text."""
    return [tokenizer.vocab.get(t, tokenizer.unk_id) for t in itertools.islice(tokenizer.tokens(text), n)]


def _read_text(path: pathlib.Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start}); is it a "
                        f"tokenizer file?") from None


def _read_json(path: pathlib.Path, kinds=None) -> dict:
    """A JSON object from path; kinds {key: type(s)} checks the values present."""
    try:
        value = json.loads(_read_text(path))
    except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deep
        raise DataError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise DataError(f"{path} is not a JSON object")
    for key, kind in (kinds or {}).items():
        if key in value and not isinstance(value[key], kind):
            raise DataError(f"{path}: {key} is {value[key]!r}, not a {getattr(kind, '__name__', 'valid value')}")
    return value


# What tokenizer_config.json may say, and the types we accept
CONFIG_KINDS = {"do_lower_case": bool, "strip_accents": (bool, type(None)),
                "tokenize_chinese_chars": bool, "add_prefix_space": bool}


NO_TOKENIZER = ("no tokenizer in {}: expected vocab.txt (WordPiece) or vocab.json and merges.txt "
                "(byte-level BPE)")


def tokenizer_files(model_dir) -> list:
    """The files load_tokenizer reads (for fingerprints)."""
    model_dir = pathlib.Path(model_dir)
    if (model_dir / "vocab.txt").is_file():
        names = ["vocab.txt"]
    elif (model_dir / "vocab.json").is_file() and (model_dir / "merges.txt").is_file():
        names = ["vocab.json", "merges.txt"]
    else:
        raise DataError(NO_TOKENIZER.format(model_dir))
    names += ["tokenizer_config.json"] if (model_dir / "tokenizer_config.json").is_file() else []
    return [model_dir / name for name in names]


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
    raise DataError(NO_TOKENIZER.format(model_dir))


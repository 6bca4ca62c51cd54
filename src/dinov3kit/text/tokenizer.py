"""The CLIP byte-pair tokenizer that dino.txt's text encoder reads: strings to [N, 77] token ids.

It reproduces Meta's `dinov3.eval.text.tokenizer` (itself OpenAI CLIP's `SimpleTokenizer`) id for id:
text is repaired with ftfy, HTML entities are unescaped twice, whitespace runs become one space and
everything is lowercased; words are split with CLIP's Unicode pattern, mapped byte by byte to printable
characters and merged by rank with the 48,894 merges of `bpe_simple_vocab_16e6.txt.gz` (shipped in this
package, MIT-licensed by OpenAI). Each row is [start, tokens..., end, 0...]; a text longer than the
context is cut and its last kept token replaced by the end token, as Meta does.
"""

from __future__ import annotations

import functools
import gzip
import html
from collections.abc import Sequence
from importlib import resources

import torch

from ..optional import require

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: Merges used by CLIP: the vocabulary holds 256 bytes, 256 word-final bytes, the merges and 2 specials.
NUM_MERGES = 49152 - 256 - 2
START, END = "<|startoftext|>", "<|endoftext|>"
CONTEXT_LENGTH = 77
#: CLIP's word pattern (Unicode letters, single digits, runs of other symbols, English contractions).
WORD_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _text_deps():
    """ftfy and regex, with an install hint when missing (the `text` extra)."""
    return require("ftfy", "the dino.txt tokenizer"), require("regex", "the dino.txt tokenizer")


@functools.cache
def byte_alphabet() -> dict[int, str]:
    """Each byte as one printable character: printable Latin-1 bytes stand for themselves, the others
    (control bytes, space, soft hyphen...) take the code points from 256 upwards in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


def clean(text: str, ftfy, regex) -> str:
    """Meta's normalisation: ftfy repair, HTML unescaped twice, whitespace collapsed, lowercased."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return regex.sub(r"\s+", " ", text).strip().lower()


def merge_pair(word: list[str], pair: tuple[str, str]) -> list[str]:
    """`word` with every non-overlapping occurrence of `pair`, scanned left to right, fused into one symbol."""
    merged, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            merged.append(word[i] + word[i + 1])
            i += 2
        else:
            merged.append(word[i])
            i += 1
    return merged


class TextTokenizer:
    """CLIP BPE tokenizer with Meta's cleaning; `tokenizer(["a cat", "a dog"])` gives a [2, 77] LongTensor."""

    def __init__(self, vocab_path: str | None = None, context_length: int = CONTEXT_LENGTH) -> None:
        self._ftfy, self._regex = _text_deps()
        if vocab_path is None:
            raw = resources.files(__package__).joinpath(VOCAB_FILE).read_bytes()
        else:
            with open(vocab_path, "rb") as handle:
                raw = handle.read()
        lines = gzip.decompress(raw).decode("utf-8").split("\n")[1 : NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        if len(merges) != NUM_MERGES or any(len(m) != 2 for m in merges):
            raise ValueError(f"{vocab_path or VOCAB_FILE} is not CLIP's BPE merges file ({len(merges)} merges)")
        alphabet = list(byte_alphabet().values())
        symbols = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [START, END]
        self.encoder = {symbol: index for index, symbol in enumerate(symbols)}
        self.decoder = dict(enumerate(symbols))
        self.ranks = {merge: rank for rank, merge in enumerate(merges)}
        self.context_length = context_length
        self._words = self._regex.compile(WORD_PATTERN, self._regex.IGNORECASE)
        self._bpe_cache: dict[str, tuple[str, ...]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    @property
    def start_token_id(self) -> int:
        return self.encoder[START]

    @property
    def end_token_id(self) -> int:
        return self.encoder[END]

    def bpe(self, word: str) -> tuple[str, ...]:
        """The symbols of one byte-mapped word: merge the lowest-ranked adjacent pair until none is known."""
        if word in (START, END):
            return (word,)
        cached = self._bpe_cache.get(word)
        if cached is not None:
            return cached
        symbols = [*word[:-1], word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda pair: self.ranks.get(pair, NUM_MERGES))
            if best not in self.ranks:
                break
            symbols = merge_pair(symbols, best)
        self._bpe_cache[word] = result = tuple(symbols)
        return result

    def encode(self, text: str) -> list[int]:
        """Token ids of one text, without the start and end tokens."""
        alphabet = byte_alphabet()
        ids = []
        for word in self._words.findall(clean(text, self._ftfy, self._regex)):
            mapped = "".join(alphabet[b] for b in word.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(mapped))
        return ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """[len(texts), context_length] int64 ids: start, tokens, end, zero padding; too long texts are cut
        and end with the end token."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        if length < 2:
            raise ValueError(f"context_length must leave room for the start and end tokens, got {length}")
        out = torch.zeros(len(texts), length, dtype=torch.long)
        for row, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__} at index {row}")
            ids = [self.start_token_id, *self.encode(text)][: length - 1] + [self.end_token_id]
            out[row, : len(ids)] = torch.tensor(ids)
        return out

    tokenize = __call__  # Meta's name

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        """The (cleaned, lowercased) text of one row of ids; stops at the end token, drops the start token."""
        ids = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        if self.end_token_id in ids:
            ids = ids[: ids.index(self.end_token_id)]
        to_byte = {c: b for b, c in byte_alphabet().items()}
        data = bytearray()
        for symbol in (self.decoder[i] for i in ids if i != self.start_token_id):
            word_end = symbol.endswith("</w>")
            data.extend(to_byte[c] for c in symbol.removesuffix("</w>"))
            data.extend(b" " if word_end else b"")
        return data.decode("utf-8", errors="replace").strip()


@functools.cache
def default_tokenizer() -> TextTokenizer:
    """The shared tokenizer over the packaged vocabulary (built once: reading the merges takes ~0.2 s)."""
    return TextTokenizer()

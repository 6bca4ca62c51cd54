"""The dino.txt tokenizer against open_clip's SimpleTokenizer (the same OpenAI CLIP BPE, ftfy cleaning and
lowercasing that Meta's `dinov3.eval.text.tokenizer` uses), id for id."""

from __future__ import annotations

import hashlib
from importlib import resources

import pytest
import torch

from dinov3kit.text import CONTEXT_LENGTH, TextTokenizer, default_tokenizer
from dinov3kit.text.tokenizer import VOCAB_FILE, merge_pair

open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")

#: sha256 of OpenAI CLIP's bpe_simple_vocab_16e6.txt.gz (the file Meta's hub loader downloads).
CLIP_VOCAB_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"

STRINGS = [
    "a photo of a cat.",
    "",
    "   ",
    "Hello, World!!! ... ?!",
    "naïve café Ünïcödé straße",
    "emoji 🐱🚗👍🏽 🇫🇷 ❤️",
    "日本語のテキスト 中文 한국어 العربية",
    "“curly quotes” ‘single’ — em dash … ellipsis",
    "&amp;lt;b&amp;gt; html &quot;entities&quot; &#39;x&#39;",
    "mojibake: Ã©tÃ© dÃ©jÃ ",
    "tabs\tand\nnewlines\r\n end\u00a0nbsp\u2009thin",
    "x²³ ½ Ⅻ 123456 3.14 1,000",
    "don't it's we're they've I'm you'll he'd",
    "ＦＵＬＬＷＩＤＴＨ ﬁ ligature",
    "UPPER lower MiXeD",
    "#hashtag @user http://x.com/a?b=c&d=e",
    " ".join(["longword"] * 100),
    "a red car " * 40,
]


@pytest.fixture(scope="module")
def ours() -> TextTokenizer:
    return default_tokenizer()


@pytest.fixture(scope="module")
def oracle():
    return open_clip_tokenizer.SimpleTokenizer(context_length=CONTEXT_LENGTH)


def test_ids_match_open_clip(ours, oracle):
    ids = ours(STRINGS)
    expected = oracle(STRINGS)
    assert ids.dtype == torch.long and ids.shape == (len(STRINGS), CONTEXT_LENGTH)
    for text, row, want in zip(STRINGS, ids, expected):
        assert torch.equal(row, want), text


def test_vocabulary_is_clips(ours, oracle):
    data = resources.files("dinov3kit.text").joinpath(VOCAB_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == CLIP_VOCAB_SHA256
    assert resources.files("dinov3kit.text").joinpath("LICENSE-bpe_simple_vocab_16e6.txt").read_text().count("MIT License")
    specials = {"<|startoftext|>", "<|endoftext|>", "<start_of_text>", "<end_of_text>"}  # open_clip renames them
    plain = lambda encoder: {k: v for k, v in encoder.items() if k not in specials}  # noqa: E731
    assert ours.vocab_size == 49408 and plain(ours.encoder) == plain(oracle.encoder)
    assert (ours.start_token_id, ours.end_token_id) == (49406, 49407)


def test_rows_layout_and_truncation(ours):
    empty, long = ours(["", "a red car " * 40])
    assert empty[:2].tolist() == [49406, 49407] and not empty[2:].any()
    assert long[0] == 49406 and long[-1] == 49407 and (long != 0).all()
    assert long[:-1].tolist() == ours(["a red car " * 40], context_length=200)[0, :76].tolist()
    assert ours("a cat").shape == (1, CONTEXT_LENGTH)  # one string, one row
    assert ours(["a cat"], context_length=4)[0].tolist() == [49406, *ours.encode("a cat"), 49407][:3] + [49407]


def test_special_tokens_written_in_text_are_special(ours):
    """Meta (as OpenAI CLIP) lets "<|endoftext|>" in a text become the special token; open_clip does not."""
    ids = ours("<|startoftext|> inside <|endoftext|>")[0]
    assert ids[:5].tolist() == [49406, 49406, ours.encoder["inside</w>"], 49407, 49407]


def test_decode_round_trip(ours):
    assert ours.decode(ours("A Photo of   a CAT!")[0]) == "a photo of a cat !"
    assert ours.decode(ours("émoji 🐱")[0]) == "émoji 🐱"


def test_merge_pair_is_left_to_right():
    assert merge_pair(["a", "a", "a"], ("a", "a")) == ["aa", "a"]
    assert merge_pair(["a", "b", "a", "b"], ("a", "b")) == ["ab", "ab"]


def test_bad_input(ours, tmp_path):
    with pytest.raises(TypeError, match="index 1"):
        ours(["ok", 3])
    with pytest.raises(ValueError, match="context_length"):
        ours("x", context_length=1)
    bad = tmp_path / "vocab.txt.gz"
    import gzip

    bad.write_bytes(gzip.compress(b"#version\na b\n"))
    with pytest.raises(ValueError, match="not CLIP's BPE merges"):
        TextTokenizer(str(bad))

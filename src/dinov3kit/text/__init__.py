"""Text side of dino.txt: the CLIP BPE tokenizer (strings to token ids)."""

from .tokenizer import CONTEXT_LENGTH, TextTokenizer, default_tokenizer

__all__ = ["CONTEXT_LENGTH", "TextTokenizer", "default_tokenizer"]

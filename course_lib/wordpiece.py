"""BERT's tokenizer from scratch: clean and split the text (the "basic" tokenizer), cut each word
into the longest vocabulary pieces (WordPiece, greedy longest match first, ``##`` for pieces inside a
word), then add ``[CLS]``/``[SEP]``, pad or truncate, and build the attention mask.

It reproduces the Hugging Face ``BertTokenizer`` for uncased models (tested on the bundled vocabulary).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch


def load_vocab(path: str | Path) -> dict[str, int]:
    """``vocab.txt``: one token per line; the line number is the id."""
    path = Path(path)
    if path.is_dir():
        path = path / "vocab.txt"
    if not path.is_file():
        raise FileNotFoundError(f"no vocabulary at {path} (expected a vocab.txt, one token per line)")
    lines = path.read_text(encoding="utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return {token: index for index, token in enumerate(lines)}


def _is_punctuation(char: str) -> bool:
    # BERT counts every non-alphanumeric ASCII symbol as punctuation (so "$" and "^" split too).
    code = ord(char)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F
    )


def basic_tokenize(text: str, lowercase: bool = True) -> list[str]:
    """Split text into words and punctuation: drop control characters, put spaces around CJK
    characters, lowercase and strip accents (é → e), then split on whitespace and punctuation."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    cleaned = []
    for char in text:
        code = ord(char)
        if code == 0 or code == 0xFFFD or (unicodedata.category(char).startswith("C") and char not in "\t\n\r"):
            continue
        if char in " \t\n\r" or unicodedata.category(char) == "Zs":
            cleaned.append(" ")
        elif _is_cjk(code):
            cleaned.append(f" {char} ")
        else:
            cleaned.append(char)
    words = []
    for word in "".join(cleaned).split():
        if lowercase:
            word = "".join(c for c in unicodedata.normalize("NFD", word.lower()) if unicodedata.category(c) != "Mn")
        current = ""
        for char in word:
            if _is_punctuation(char):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


def wordpiece(word: str, vocab: dict[str, int], unk_token: str = "[UNK]", max_chars: int = 100) -> list[str]:
    """Cut one word into vocabulary pieces, longest match first: "tokenization" → ["token",
    "##ization"]. A word that cannot be covered (or is longer than ``max_chars``) is ``[UNK]``."""
    if len(word) > max_chars:
        return [unk_token]
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            piece = word[start:end] if start == 0 else "##" + word[start:end]
            if piece in vocab:
                break
            end -= 1
        if end == start:  # not even one character matched
            return [unk_token]
        pieces.append(piece)
        start = end
    return pieces


@dataclass(frozen=True)
class Encoding:
    """A batch ready for BERT: (B, T) tensors, padding marked by ``attention_mask == 0``."""

    input_ids: torch.Tensor
    token_type_ids: torch.Tensor
    attention_mask: torch.Tensor
    tokens: list[list[str]]


class WordPieceTokenizer:
    """Text → BERT inputs with a ``vocab.txt``: basic split, WordPiece, special tokens, padding."""

    def __init__(self, vocab: dict[str, int] | str | Path, lowercase: bool = True) -> None:
        self.vocab = vocab if isinstance(vocab, dict) else load_vocab(vocab)
        missing = [t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]") if t not in self.vocab]
        if missing:
            raise ValueError(f"vocab lacks the special tokens {missing}")
        self.lowercase = lowercase
        self.id_to_token = {index: token for token, index in self.vocab.items()}

    def tokenize(self, text: str) -> list[str]:
        return [piece for word in basic_tokenize(text, self.lowercase) for piece in wordpiece(word, self.vocab)]

    def convert_tokens_to_ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.vocab.get(t, self.vocab["[UNK]"]) for t in tokens]

    def __call__(self, texts: str | Sequence[str], max_length: int = 512, padding: bool = True) -> Encoding:
        """Encode one text or a batch: ``[CLS] pieces [SEP]``, each truncated to ``max_length``
        tokens and (with ``padding``) padded with ``[PAD]`` to the longest in the batch."""
        if isinstance(texts, str):
            texts = [texts]
        if not texts:
            raise ValueError("texts must not be empty")
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 to hold [CLS] and [SEP], got {max_length}")
        batch = [["[CLS]", *self.tokenize(t)[: max_length - 2], "[SEP]"] for t in texts]
        longest = max(len(tokens) for tokens in batch)
        if not padding and len({len(tokens) for tokens in batch}) > 1:
            raise ValueError("texts of different lengths need padding=True")
        ids = [self.convert_tokens_to_ids(tokens) + [self.vocab["[PAD]"]] * (longest - len(tokens)) for tokens in batch]
        mask = [[1] * len(tokens) + [0] * (longest - len(tokens)) for tokens in batch]
        input_ids = torch.tensor(ids)
        return Encoding(input_ids, torch.zeros_like(input_ids), torch.tensor(mask), batch)

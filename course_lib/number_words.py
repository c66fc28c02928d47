"""A translation task with exact answers: English number words ↔ digits ("three hundred forty two
thousand seven" ↔ "342007"), for chapter 15's small encoder–decoder.

Real translation needs parallel text and days of training; this task keeps what makes translation a
sequence-to-sequence problem — input and output of different lengths, and words ("hundred",
"thousand") that write no digit of their own but decide where the others go and where zeros fill in —
while every answer can be checked exactly. Splits are made by number, so no test number
is ever seen in training.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from course_lib.arguments import require_int

ONES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
        "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen")
TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
LIMIT = 1_000_000  # numbers from 0 to 999,999


def _below_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(TENS[n // 10])
        n %= 10
        if n:
            words.append(ONES[n])
    elif n:
        words.append(ONES[n])
    return words


def to_words(number: int) -> str:
    """0 ≤ number < 1,000,000 in American English words without "and" or hyphens:
    342007 -> "three hundred forty two thousand seven"."""
    number = require_int("number", number, at_least=0)
    if number >= LIMIT:
        raise ValueError(f"number must be below {LIMIT:,}, got {number:,}")
    if number == 0:
        return "zero"
    thousands, rest = divmod(number, 1000)
    words = (_below_thousand(thousands) + ["thousand"] if thousands else []) + _below_thousand(rest)
    return " ".join(words)


def from_words(text: str) -> int:
    """The inverse of :func:`to_words` (it checks a model's word output); ValueError on words it does
    not know or an order no number has."""
    words = text.split()
    if not words:
        raise ValueError("text holds no words")
    if words == ["zero"]:
        return 0
    total, current, seen_thousand = 0, 0, False
    for word in words:
        if word in ONES[1:]:
            current += ONES.index(word)
        elif word in TENS[2:]:
            current += 10 * TENS.index(word)
        elif word == "hundred" and 0 < current < 10:
            current *= 100
        elif word == "thousand" and 0 < current < 1000 and not seen_thousand:
            total, current, seen_thousand = current * 1000, 0, True
        else:
            raise ValueError(f"{text!r} is not a number this task writes (at {word!r})")
    number = total + current
    if to_words(number) != text:
        raise ValueError(f"{text!r} is not how this task writes {number}")
    return number


@dataclass(frozen=True)
class Pair:
    source: str
    target: str


def make_splits(train: int = 20_000, validation: int = 1_000, test: int = 1_000, direction: str = "words-to-digits",
                seed: int = 0) -> dict[str, list[Pair]]:
    """Disjoint sets of numbers drawn uniformly from [0, 1,000,000), each turned into a (source, target)
    pair in ``direction`` ("words-to-digits" or "digits-to-words")."""
    sizes = {"train": require_int("train", train), "validation": require_int("validation", validation),
             "test": require_int("test", test)}
    if direction not in ("words-to-digits", "digits-to-words"):
        raise ValueError(f"direction must be 'words-to-digits' or 'digits-to-words', got {direction!r}")
    numbers = random.Random(seed).sample(range(LIMIT), sum(sizes.values()))
    splits, start = {}, 0
    for name, size in sizes.items():
        chosen = numbers[start:start + size]
        start += size
        pairs = [(to_words(n), str(n)) for n in chosen]
        splits[name] = [Pair(w, d) if direction == "words-to-digits" else Pair(d, w) for w, d in pairs]
    return splits

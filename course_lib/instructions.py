"""Instruction data whose answers code can check, made from the course's movie-review sentences.

No instruction data set can be downloaded here, so chapter 13 builds one: five small tasks
(sentiment, reversing words, counting words, listing numbers, a JSON summary), each phrased in a few
ways, whose correct reply is known exactly. :func:`score` says whether a reply is right and
:func:`follows_format` whether it at least has the asked-for form, so instruction tuning and DPO can be
measured without a judge model. :func:`chitchat_conversations` supplies human small talk (the
``chitchat-dataset`` package) to check that a tuned model can still chat. See ``data/README.md``.
"""

from __future__ import annotations

import functools
import json
import random
import re
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from course_lib import data
from course_lib.arguments import require_int

TASKS = ("sentiment", "reverse", "count", "numbers", "json")
DEFAULT_PER_TASK = {"train": 500, "validation": 100, "test": 60}  # examples of each task per split
MAX_SENTIMENT_WORDS = 30  # longer reviews are skipped: sequences stay short for CPU training
FRAGMENT_WORDS = (4, 8)  # the reverse/count/numbers/json tasks use 4 to 8 words of a sentence
NUMBERS_INSERTED = (1, 3)  # how many integers (1..999) the numbers task inserts
JSON_KEYS = ("first_word", "last_word", "word_count")
MAX_CHAT_CHARS = 300  # chitchat conversations with a longer message (in the kept turns) are skipped

PHRASINGS = {
    "sentiment": (
        "Is this movie review positive or negative? Answer with one word.\n\n{text}",
        "Classify the sentiment of this review as positive or negative. Reply with one word.\n\n{text}",
        "Review: {text}\n\nIs this review positive or negative? One word only.",
    ),
    "reverse": (
        "Reverse the order of the words in this text. Reply with the words only.\n\n{text}",
        "Write these words in reverse order, separated by spaces: {text}",
        "Text: {text}\n\nRepeat the words of the text from last to first.",
    ),
    "count": (
        "How many words are in this text? Answer with a number.\n\n{text}",
        "Count the words in the following text and reply with the number only: {text}",
        "Text: {text}\n\nHow many words does it have? Reply in digits.",
    ),
    "numbers": (
        "List the numbers in this text, in order, separated by commas.\n\n{text}",
        "Which numbers appear in the following text? Give them in order, separated by commas: {text}",
        "Text: {text}\n\nList its numbers in order, comma-separated.",
    ),
    "json": (
        'Return a JSON object with the keys "first_word", "last_word" and "word_count" for this text.\n\n{text}',
        'Text: {text}\n\nReply with a JSON object with the keys "first_word", "last_word" and "word_count".',
    ),
}

_WORD = re.compile(r"[A-Za-z]+(?:['-][A-Za-z]+)*")  # letters, with inner apostrophes or hyphens
_BRACKET = re.compile(r"-[lr][rsc]b-", re.IGNORECASE)
_STRIP = string.punctuation + "\u2018\u2019\u201c\u201d\u2026"
_INTEGER = re.compile(r"\d+")
_INTEGER_LIST = re.compile(r"\d+(?:\s*,\s*\d+)*")


@dataclass(frozen=True)
class Example:
    """One instruction: the task, the movie-review sentence it was made from, the user's message and
    the correct, format-following reply."""

    task: str
    source: str
    prompt: str
    answer: str

    def __post_init__(self) -> None:
        _check_task(self.task)

    def messages(self, with_answer: bool = True) -> list[dict[str, str]]:
        """The chat as role/content dicts (what a chat template takes): the user's message, then the
        answer as the assistant's reply unless ``with_answer`` is False (for generating one)."""
        chat = [{"role": "user", "content": self.prompt}]
        if with_answer:
            chat.append({"role": "assistant", "content": self.answer})
        return chat


def _check_task(task: object) -> str:
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    return task


def words(sentence: str) -> list[str]:
    """The plain words of a sentence: surrounding punctuation stripped; tokens that are then empty or
    not letters (with inner apostrophes or hyphens) dropped, and bracket tokens such as ``-lrb-``,
    so digits and artefacts stay out of the fragments."""
    kept = []
    for token in sentence.split():
        if _BRACKET.search(token):  # Penn Treebank bracket tokens (-lrb-, -RSB-, ...): not words
            continue
        token = token.strip(_STRIP)
        if _WORD.fullmatch(token):
            kept.append(token)
    return kept


def make_example(task: str, sentence: str, label: int, rng: random.Random) -> Example | None:
    """An example of ``task`` made from one sentence (``label``: 1 positive, 0 negative; used by the
    sentiment task), with phrasing and fragment drawn from ``rng``; None when the sentence cannot
    serve (a review over MAX_SENTIMENT_WORDS words, or fewer than 4 plain words for the others)."""
    _check_task(task)
    if label not in (0, 1):
        raise ValueError(f"label must be 0 (negative) or 1 (positive), got {label!r}")
    if not isinstance(sentence, str):
        raise ValueError(f"sentence must be a str, got {type(sentence).__name__}")
    template = rng.choice(PHRASINGS[task])
    if task == "sentiment":
        text = " ".join(sentence.split())
        if not text or len(text.split()) > MAX_SENTIMENT_WORDS:
            return None
        return Example(task, sentence, template.format(text=text), "positive" if label else "negative")
    plain = words(sentence)
    if len(plain) < FRAGMENT_WORDS[0]:
        return None
    size = rng.randint(FRAGMENT_WORDS[0], min(FRAGMENT_WORDS[1], len(plain)))
    start = rng.randint(0, len(plain) - size)
    fragment = plain[start:start + size]
    text = " ".join(fragment)
    if task == "reverse":
        answer = " ".join(reversed(fragment))
    elif task == "count":
        answer = str(len(fragment))
    elif task == "numbers":
        tokens = list(fragment)
        for _ in range(rng.randint(*NUMBERS_INSERTED)):
            tokens.insert(rng.randint(0, len(tokens)), str(rng.randint(1, 999)))
        text = " ".join(tokens)
        answer = ", ".join(t for t in tokens if t.isdigit())
    else:  # json
        answer = json.dumps({"first_word": fragment[0], "last_word": fragment[-1], "word_count": len(fragment)})
    return Example(task, sentence, template.format(text=text), answer)


def _per_task(per_task: Mapping[str, int] | None) -> dict[str, int]:
    sizes = dict(DEFAULT_PER_TASK)
    if per_task is None:
        return sizes
    if not isinstance(per_task, Mapping):
        raise ValueError(f"per_task must be a dict of split -> examples per task, or None, got {per_task!r}")
    for split, size in per_task.items():
        if split not in sizes:
            raise ValueError(f"per_task keys must be among {list(sizes)}, got {split!r}")
        sizes[split] = require_int(f"per_task[{split!r}]", size, at_least=0)
    return sizes


def build_instruction_data(cache: Path | None = None, seed: int = 0,
                           per_task: dict[str, int] | None = None) -> dict[str, list[Example]]:
    """Train, validation and test examples made from the matching movie-review splits of
    :func:`course_lib.data.split_rows`, so no source sentence is in two splits (and within a split,
    each sentence serves one example). ``per_task`` maps a split to the number of examples of each
    task (default ``DEFAULT_PER_TASK``: 500 / 100 / 60, so 2,500 / 500 / 300 in all); the tasks are
    shuffled together, and the same ``seed`` gives the same examples."""
    seed = require_int("seed", seed, at_least=0)
    sizes = _per_task(per_task)
    splits = data.split_rows(data.labelled_rows(data.fetch_sdist(cache)))
    built = {}
    for split, rows in splits.items():
        rng = random.Random(f"instructions:{seed}:{split}")
        order = list(rows)
        rng.shuffle(order)
        used = [False] * len(order)
        examples = []
        for task in TASKS:
            made = 0
            for i, row in enumerate(order):
                if made == sizes[split]:
                    break
                if used[i]:
                    continue
                example = make_example(task, row.text, int(row.rating > 0), rng)
                if example is not None:
                    used[i] = True
                    examples.append(example)
                    made += 1
            if made < sizes[split]:
                raise ValueError(f"per_task[{split!r}] must be at most what the {split} split can give, got "
                                 f"{sizes[split]}: only {made} {task!r} examples could be made")
        rng.shuffle(examples)
        built[split] = examples
    return built


def _normalise(reply: str) -> str:
    """The reply without surrounding whitespace and one trailing period."""
    reply = reply.strip()
    return reply[:-1].rstrip() if reply.endswith(".") else reply


def _fragment_words(example: Example) -> list[str]:
    """The words of the fragment a reverse example asks about (the answer in reverse order)."""
    return example.answer.split()[::-1]


def _json_object(reply: str) -> dict | None:
    try:
        value = json.loads(reply)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def score(example: Example, reply: str) -> bool:
    """The task's verifier: is ``reply`` correct? Surrounding whitespace and one trailing period are
    ignored (and case, for sentiment); a JSON reply must parse to an object with exactly the three
    keys and the right values (word_count an integer)."""
    if not isinstance(reply, str):
        raise ValueError(f"reply must be a str, got {type(reply).__name__}")
    if example.task == "json":
        value = _json_object(reply)
        expected = json.loads(example.answer)
        return (value is not None and set(value) == set(JSON_KEYS) and type(value["word_count"]) is int
                and all(value[key] == expected[key] for key in JSON_KEYS))
    text = _normalise(reply)
    if example.task == "sentiment":
        return text.lower() == example.answer
    if example.task == "reverse":
        return text.split() == example.answer.split()
    if example.task == "count":
        return _INTEGER.fullmatch(text) is not None and int(text) == int(example.answer)
    # numbers
    return (_INTEGER_LIST.fullmatch(text) is not None
            and [int(n) for n in text.split(",")] == [int(n) for n in example.answer.split(",")])


def follows_format(example: Example, reply: str) -> bool:
    """Does ``reply`` have the form the instruction asks for, right or wrong? Sentiment: exactly one of
    the two words; count: an integer; numbers: comma-separated integers; reverse: the fragment's words
    in any order; json: a JSON object with exactly the three keys (and nothing around it)."""
    if not isinstance(reply, str):
        raise ValueError(f"reply must be a str, got {type(reply).__name__}")
    if example.task == "json":
        value = _json_object(reply)
        return value is not None and set(value) == set(JSON_KEYS)
    text = _normalise(reply)
    if example.task == "sentiment":
        return text.lower() in ("positive", "negative")
    if example.task == "reverse":
        return sorted(text.split()) == sorted(_fragment_words(example))
    if example.task == "count":
        return _INTEGER.fullmatch(text) is not None
    return _INTEGER_LIST.fullmatch(text) is not None


def task_table(examples: Iterable[Example]) -> dict[str, int]:
    """How many examples of each task (every task listed, in TASKS order): a table for the notebook."""
    counts = dict.fromkeys(TASKS, 0)
    for example in examples:
        counts[example.task] += 1
    return counts


@functools.lru_cache(maxsize=1)
def _chitchat() -> tuple[tuple[str, ...], ...]:
    """Every conversation of the package as a tuple of turns (a turn: one speaker's consecutive
    messages joined by spaces), in the file's order."""
    import chitchat_dataset

    conversations = []
    for conversation in chitchat_dataset.Dataset().values():
        turns: list[str] = []
        last_sender = None
        for message in conversation["messages"]:
            text = " ".join(" ".join(u["text"].split()) for u in message if u["text"].strip())
            sender = message[0]["sender"] if message else None
            if not text:
                continue
            if sender == last_sender:
                turns[-1] += " " + text
            else:
                turns.append(text)
                last_sender = sender
        conversations.append(tuple(turns))
    return tuple(conversations)


def chitchat_conversations(n: int | None = None, seed: int = 0, max_turns: int = 6) -> list[list[dict[str, str]]]:
    """Human small talk from the ``chitchat-dataset`` package (MIT) as user/assistant chats: the first
    speaker is the user, the speakers alternate, each chat is cut to at most ``max_turns`` messages
    ending with the assistant, and chats with a message over MAX_CHAT_CHARS characters are skipped.
    ``n`` chats (all when None) in an order shuffled by ``seed``: a perplexity check that tuning keeps
    the model's chat ability."""
    n = require_int("n", n, at_least=1, allow_none=True)
    seed = require_int("seed", seed, at_least=0)
    max_turns = require_int("max_turns", max_turns, at_least=2)
    chats = []
    for turns in _chitchat():
        keep = min(len(turns), max_turns)
        kept = turns[:keep - keep % 2]
        if kept and max(len(t) for t in kept) <= MAX_CHAT_CHARS:
            chats.append([{"role": ("user", "assistant")[i % 2], "content": t} for i, t in enumerate(kept)])
    random.Random(seed).shuffle(chats)
    if n is not None and n > len(chats):
        raise ValueError(f"n must be at most {len(chats)} (the usable conversations), got {n}")
    return chats if n is None else chats[:n]


@dataclass(frozen=True)
class Report:
    """How a model's replies to ``examples`` fare: per example, whether it is correct, whether it
    follows the asked format, and its length in characters; rates by task or over all."""

    tasks: tuple[str, ...]
    correct: tuple[bool, ...]
    formatted: tuple[bool, ...]
    lengths: tuple[int, ...]

    def _rate(self, values: tuple[bool, ...], task: str | None) -> float:
        chosen = [v for v, t in zip(values, self.tasks) if task is None or t == task]
        if not chosen:
            raise ValueError(f"task must be one of {sorted(set(self.tasks))} or None, got {task!r}")
        return sum(chosen) / len(chosen)

    def accuracy(self, task: str | None = None) -> float:
        return self._rate(self.correct, task)

    def format_rate(self, task: str | None = None) -> float:
        return self._rate(self.formatted, task)

    @property
    def mean_length(self) -> float:
        return sum(self.lengths) / len(self.lengths)


def report(examples: Sequence[Example], replies: Sequence[str]) -> Report:
    """Score every reply against its example (:func:`score`, :func:`follows_format`)."""
    if len(examples) != len(replies) or not examples:
        raise ValueError(f"examples and replies must be non-empty and equally long, got {len(examples)} and {len(replies)}")
    return Report(tuple(e.task for e in examples), tuple(score(e, r) for e, r in zip(examples, replies)),
                  tuple(follows_format(e, r) for e, r in zip(examples, replies)), tuple(len(r) for r in replies))

"""Byte-level BPE from scratch, the tokenizer family of GPT-2 and SmolLM2: split text into pre-tokens
with a regex, turn each into its UTF-8 bytes, then apply learned merges of adjacent tokens, most
frequent (lowest rank) first. No word is ever unknown: the vocabulary starts from the 256 bytes.

``train_bpe`` learns merges from a corpus; ``ByteBPE.from_tokenizer_json`` loads a Hugging Face
``tokenizer.json`` and reproduces the ids of the ``tokenizers`` library (tested on SmolLM2's). One
known difference: the ``regex`` package may know a newer Unicode than that library's regex engine, so
characters assigned only recently (Unicode 16 and later) can be split differently.
"""

from __future__ import annotations

import heapq
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import regex

from course_lib.arguments import require_int


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from each byte to one printable character: printable latin-1 bytes
    stand for themselves, the other 68 (controls, space, ...) become chr(256 + n). Vocabulary files
    can then show every byte as a visible character: 'Ġ' is a space, 'Ċ' a newline."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {byte: chr(byte) for byte in printable}
    shifted = 0
    for byte in range(256):
        if byte not in mapping:
            mapping[byte] = chr(256 + shifted)
            shifted += 1
    return dict(sorted(mapping.items()))


_BYTE_TO_CHAR = bytes_to_unicode()
_CHAR_TO_BYTE = {char: byte for byte, char in _BYTE_TO_CHAR.items()}

# GPT-2's split: English contractions, letters, numbers and other symbols each with at most one
# leading space, then whitespace (a run before a word leaves its last space to that word).
PRETOKENIZE_PATTERN = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


_NUMBER_CHARACTER = regex.compile(r"(\p{N})")


def pretokenize(text: str, split_digits: bool = False) -> list[str]:
    """Cut text into the pieces BPE works inside (merges never cross them): "I'm here!" →
    ["I", "'m", " here", "!"]. Joined, the pieces give back the text. ``split_digits`` first isolates
    every number character (as the ``Digits(individual_digits=True)`` step of Llama-3's or the
    original SmolLM2's tokenizer does), so "2024" can only ever be four tokens."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not split_digits:
        return PRETOKENIZE_PATTERN.findall(text)
    return [piece for part in _NUMBER_CHARACTER.split(text) if part for piece in PRETOKENIZE_PATTERN.findall(part)]


def merge_pair(ids: list[int], pair: tuple[int, int], new_id: int) -> list[int]:
    """One merge step: a copy of ``ids`` with every occurrence of ``pair`` replaced by ``new_id``,
    scanning left to right so occurrences do not overlap ([a, a, a] with (a, a) → [aa, a])."""
    merged, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            merged.append(new_id)
            i += 2
        else:
            merged.append(ids[i])
            i += 1
    return merged


def pair_counts(words: Mapping[tuple[int, ...], int]) -> Counter[tuple[int, int]]:
    """How often each adjacent pair of ids occurs, each word counted as often as it appears in the
    corpus: {(1, 2, 1, 2): 3} gives (1, 2) → 6 and (2, 1) → 3."""
    counts: Counter[tuple[int, int]] = Counter()
    for word, count in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += count
    return counts


class ByteBPE:
    """A byte-level BPE tokenizer: ``vocab`` (id → bytes, and ``token_to_id`` back), ``merges`` in
    rank order (the first is applied first) and ``special_tokens`` (text → id, matched verbatim)."""

    def __init__(self, vocab: Mapping[int, bytes], merges: Sequence[tuple[bytes, bytes]],
                 special_tokens: Mapping[str, int] | None = None, split_digits: bool = False) -> None:
        self.split_digits = bool(split_digits)
        special_tokens = dict(special_tokens or {})
        for text, index in special_tokens.items():
            if not isinstance(text, str) or not text:
                raise ValueError(f"special_tokens keys must be non-empty str, got {text!r}")
            require_int(f"special_tokens[{text!r}]", index, at_least=0)
            if index in vocab and vocab[index] != text.encode("utf-8"):
                raise ValueError(f"special_tokens[{text!r}] = {index} is already the id of {vocab[index]!r} in vocab")
        self.vocab: dict[int, bytes] = {}
        for index, token in vocab.items():
            require_int("vocab ids", index, at_least=0)
            if not isinstance(token, bytes) or not token:
                raise ValueError(f"vocab values must be non-empty bytes, got {token!r} for id {index}")
            self.vocab[int(index)] = token
        self.special_tokens = special_tokens
        self._special_ids = special_ids = set(special_tokens.values())
        for text, index in special_tokens.items():
            self.vocab[index] = text.encode("utf-8")
        self.token_to_id: dict[bytes, int] = {}
        for index, token in self.vocab.items():
            if index in special_ids:
                continue
            if token in self.token_to_id:
                raise ValueError(f"vocab holds {token!r} twice, as ids {self.token_to_id[token]} and {index}")
            self.token_to_id[token] = index
        self.merges: list[tuple[bytes, bytes]] = []
        self._ranks: dict[tuple[int, int], tuple[int, int]] = {}  # (left id, right id) → (rank, merged id)
        for rank, pair in enumerate(merges):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, bytes) for p in pair)):
                raise ValueError(f"merges[{rank}] must be a pair of bytes, got {pair!r}")
            for part in (pair[0], pair[1], pair[0] + pair[1]):
                if part not in self.token_to_id:
                    raise ValueError(f"merges[{rank}] = {tuple(pair)!r}: {part!r} is not in the vocabulary")
            self.merges.append((pair[0], pair[1]))
            key = (self.token_to_id[pair[0]], self.token_to_id[pair[1]])
            self._ranks.setdefault(key, (rank, self.token_to_id[pair[0] + pair[1]]))
        # A byte missing from the vocabulary is dropped, as the tokenizers library does without an unknown
        # token (SmolLM2 lacks 21 bytes: rare controls and bytes that never occur in UTF-8).
        self._byte_ids = [self.token_to_id.get(bytes([b])) for b in range(256)]
        self._special_pattern = None
        if special_tokens:  # longest first, so the longest special token wins where several start
            alternatives = sorted(special_tokens, key=len, reverse=True)
            self._special_pattern = regex.compile("(" + "|".join(regex.escape(t) for t in alternatives) + ")")
        self._cache: dict[str, list[int]] = {}

    def __len__(self) -> int:
        return len(self.vocab)

    def __repr__(self) -> str:
        return (f"ByteBPE(vocab={len(self.vocab)}, merges={len(self.merges)}, "
                f"special_tokens={len(self.special_tokens)})")

    def _encode_piece(self, piece: str) -> list[int]:
        """The ids of one pre-token: its bytes, then the best-ranked merge present, again and again."""
        cached = self._cache.get(piece)
        if cached is not None:
            return cached
        ids = [self._byte_ids[b] for b in piece.encode("utf-8") if self._byte_ids[b] is not None]
        while len(ids) > 1:
            ranked = [(self._ranks[pair][0], pair) for pair in zip(ids, ids[1:]) if pair in self._ranks]
            if not ranked:
                break
            _, pair = min(ranked)
            ids = merge_pair(ids, pair, self._ranks[pair][1])
        if len(self._cache) >= 100_000:  # keep memory bounded on huge corpora
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Text → ids: special tokens first (each becomes its id), then every remaining stretch is
        pretokenized and each pre-token merged on its own. The same ids as the ``tokenizers``
        library's BPE without dropout."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        stretches = self._special_pattern.split(text) if self._special_pattern else [text]
        ids: list[int] = []
        for position, stretch in enumerate(stretches):
            if position % 2:  # the capturing group puts the matched special tokens at odd positions
                ids.append(self.special_tokens[stretch])
            else:
                for piece in pretokenize(stretch, self.split_digits):
                    ids.extend(self._encode_piece(piece))
        return ids

    def _checked_ids(self, ids: Iterable[int]) -> list[int]:
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # tensors and arrays too
        for position, index in enumerate(ids):
            if isinstance(index, bool) or not isinstance(index, int) or index not in self.vocab:
                raise ValueError(f"ids must be token ids of this vocabulary ({len(self.vocab)} tokens), "
                                 f"got {index!r} at position {position}")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids → text: the tokens' bytes joined, read as UTF-8 (a cut-off character becomes '�')."""
        return b"".join(self.vocab[i] for i in self._checked_ids(ids)).decode("utf-8", errors="replace")

    def token_string(self, index: int) -> str:
        """How the vocabulary file writes one token: its bytes as printable characters ('Ġthe')."""
        token = self.vocab[index]
        if index in self._special_ids:
            return token.decode("utf-8")
        return "".join(_BYTE_TO_CHAR[b] for b in token)

    def tokens(self, text: str) -> list[str]:
        """The tokens of ``text`` as printable strings, for display: "Hello world" → ["Hello", "Ġworld"]."""
        return [self.token_string(i) for i in self.encode(text)]

    @classmethod
    def from_tokenizer_json(cls, path: str | Path) -> ByteBPE:
        """Load a Hugging Face ``tokenizer.json`` (or the folder holding it) whose model is BPE with a
        ByteLevel pre-tokenizer, alone (GPT-2) or after a step isolating digits (the original
        SmolLM2); other kinds are refused, since their ids would differ. Added tokens become special
        tokens.

        The SmolLM2 copy bundled here (converted from GGUF) has no digit step. Its merges never join
        an ASCII digit to anything, so the two agree on ordinary text, but not where a run of 2+
        spaces or newlines precedes a digit ("a  1") or for non-ASCII numerals ("²")."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"no tokenizer at {path} (expected a Hugging Face tokenizer.json)")
        spec = json.loads(path.read_text(encoding="utf-8"))
        model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
        steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
        split_digits = len(steps) == 2 and steps[0] == {"type": "Digits", "individual_digits": True}
        pre = steps[-1] if split_digits else pre

        def refuse(what: str) -> ValueError:
            return ValueError(f"{path}: only byte-level BPE tokenizers (like GPT-2's or SmolLM2's) are "
                              f"supported; {what}")

        if model.get("type") != "BPE":
            raise refuse(f"its model is {model.get('type')!r}, not 'BPE'")
        if pre.get("type") != "ByteLevel" or not pre.get("use_regex", True) or pre.get("add_prefix_space"):
            raise refuse(f"its pre_tokenizer is {pre.get('type')!r} with {json.dumps(pre)[:200]}, "
                         f"not ByteLevel with use_regex=true and add_prefix_space=false")
        if spec.get("normalizer") is not None:
            raise refuse(f"it has a normalizer ({spec['normalizer'].get('type')!r})")
        for option in ("dropout", "continuing_subword_prefix", "end_of_word_suffix", "byte_fallback", "ignore_merges"):
            if model.get(option):
                raise refuse(f"its BPE model sets {option}={model[option]!r}")
        special_tokens = {}
        for added in spec.get("added_tokens", []):
            if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
                raise refuse(f"added token {added['content']!r} uses lstrip/rstrip/single_word")
            special_tokens[added["content"]] = added["id"]
        special_ids = set(special_tokens.values())

        def to_bytes(token: str) -> bytes:
            try:
                return bytes(_CHAR_TO_BYTE[char] for char in token)
            except KeyError as error:
                raise refuse(f"the token {token!r} has {error.args[0]!r}, outside the byte-level alphabet") from None

        vocab = {index: to_bytes(token) for token, index in model["vocab"].items() if index not in special_ids}
        merges = []
        for merge in model["merges"]:
            parts = merge.split(" ") if isinstance(merge, str) else merge
            if len(parts) != 2:
                raise refuse(f"the merge {merge!r} is not a pair")
            merges.append((to_bytes(parts[0]), to_bytes(parts[1])))
        return cls(vocab, merges, special_tokens, split_digits)


def train_bpe(texts: Iterable[str], vocab_size: int, *, progress: bool = False) -> ByteBPE:
    """Learn ``vocab_size - 256`` merges: start from the 256 bytes, count the pre-tokens of ``texts``,
    then repeatedly merge the most frequent adjacent pair (ties: the smallest pair of byte strings,
    compared left part first) until the vocabulary is full or no pair occurs twice.

    Only the words that contain the merged pair are updated, so each merge costs little."""
    vocab_size = require_int("vocab_size", vocab_size, at_least=256)
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be an iterable of str (e.g. a list of sentences), got a single "
                        f"{type(texts).__name__}")
    word_counts: Counter[str] = Counter()
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts must hold str, got {type(text).__name__} at position {position}")
        word_counts.update(pretokenize(text))
    words = [list(word.encode("utf-8")) for word in word_counts]  # distinct strings → distinct byte lists
    freqs = list(word_counts.values())
    vocab = {b: bytes([b]) for b in range(256)}
    token_to_id = {token: index for index, token in vocab.items()}
    counts = pair_counts({tuple(word): freq for word, freq in zip(words, freqs)})
    where: defaultdict[tuple[int, int], set[int]] = defaultdict(set)  # pair → words that (may) hold it
    for position, word in enumerate(words):
        for pair in zip(word, word[1:]):
            where[pair].add(position)
    # A heap of (-count, left bytes, right bytes, pair): the top is the best pair. Entries go stale
    # when a count changes; the fresh one is pushed then, and stale ones are skipped when popped.
    heap = [(-count, vocab[a], vocab[b], (a, b)) for (a, b), count in counts.items()]
    heapq.heapify(heap)
    merges: list[tuple[bytes, bytes]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=vocab_size - 256, desc="BPE merges", unit="merge", leave=False, disable=not progress)
    while len(vocab) < vocab_size and heap:
        negative, left, right, pair = heapq.heappop(heap)
        if counts.get(pair) != -negative:
            continue
        if -negative < 2:
            break
        merges.append((left, right))
        new_id = token_to_id.get(left + right)  # the same bytes reached by another merge keep their id
        if new_id is None:
            new_id = token_to_id[left + right] = len(vocab)
            vocab[new_id] = left + right
            bar.update()
        changed = set()
        for position in where.pop(pair, ()):
            word = words[position]
            merged = merge_pair(word, pair, new_id)
            if len(merged) == len(word):
                continue  # a stale entry: an earlier merge already took this occurrence
            for old in zip(word, word[1:]):
                counts[old] -= freqs[position]
                changed.add(old)
            for new in zip(merged, merged[1:]):
                counts[new] += freqs[position]
                changed.add(new)
                where[new].add(position)
            words[position] = merged
        for key in changed:
            if counts[key] > 0:
                heapq.heappush(heap, (-counts[key], vocab[key[0]], vocab[key[1]], key))
            else:
                del counts[key]
    bar.close()
    return ByteBPE(vocab, merges)

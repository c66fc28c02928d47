"""course_lib.bpe: byte-level BPE against the tokenizers library on SmolLM2's tokenizer.json, and
training from scratch on the course's corpus."""

import json
import random
from collections import Counter

import pytest
from tokenizers import Tokenizer, pre_tokenizers

from course_lib import smollm
from course_lib.bpe import (
    PRETOKENIZE_PATTERN, ByteBPE, bytes_to_unicode, merge_pair, pair_counts, pretokenize, train_bpe,
)
from course_lib.data import load_movie_reviews, unlabelled_texts

HARD_CASES = [
    "",
    " ",
    "Hello world",
    "  leading spaces and trailing spaces   ",
    "tabs\tand\t\tnewlines\n\nand\r\nwindows line ends\n",
    "a     run of spaces, then\n\n\n\nnewlines",
    "\u00a0no-break space, \u3000ideographic space, line\u2028separator",
    "I'm sure you've seen they'd can't we'll she's THEY'RE O'Neill's",
    "3.14159 1,000,000 2024-01-01 0x1F $5.99 10/10 1st 2nd",
    "def square(x):\n    return x ** 2  # comment\n\nprint([square(i) for i in range(10)])",
    "👍 👍🏽 ❤️ 👨‍👩‍👧‍👦 🇺🇳🇯🇵🏳️‍🌈 🙂🙃",
    "你好，世界。日本語のテキストです。안녕하세요",
    "مرحبا بالعالم، هذا اختبار",
    "नमस्ते दुनिया",
    "Crème brûlée, naïve façade, Ångström, Ærø, straße, ﬁne, e\u0301",
    "ÀÁÂÃÄÅ àáâãäå ÇÈÉ ñ ø œ Ω π ∑ ∞ ≠ ≤ √",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n",
    "text<|endoftext|>more <|im_end|> <|im_start <repo_name>x<reponame>y<|im_end|><|im_end|>",
    "!!! ??? ... --- *** ((())) [[]] {{}} ``` '''",
]

# Old, stable Unicode blocks (so every version of the Unicode tables classifies them alike).
BLOCKS = [(0x20, 0x7E), (0xA0, 0x24F), (0x370, 0x3FF), (0x400, 0x4FF), (0x600, 0x6FF), (0x900, 0x97F),
          (0x2000, 0x206F), (0x3040, 0x30FF), (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1F64F)]


def random_strings(count: int, seed: int, code_points: list[tuple[int, int]] | None = None) -> list[str]:
    """Seeded random strings mixing ASCII letters, whitespace and code points from ``code_points``
    (any code point but surrogates when None)."""
    rng = random.Random(seed)
    strings = []
    for _ in range(count):
        chars = []
        for _ in range(rng.randint(0, 30)):
            roll = rng.random()
            if roll < 0.3:
                chars.append(rng.choice("abcdefghij ABC'0123"))
            elif roll < 0.4:
                chars.append(rng.choice([" ", "  ", "\t", "\n", "\r\n"]))
            elif code_points is None:
                code = rng.randrange(0x110000)
                chars.append(chr(code if not 0xD800 <= code < 0xE000 else 0xFFFD))
            else:
                chars.append(chr(rng.randint(*rng.choice(code_points))))
        strings.append("".join(chars))
    return strings


@pytest.fixture(scope="module")
def tokenizer_json():
    return smollm.model_folder() / "tokenizer.json"


@pytest.fixture(scope="module")
def smol(tokenizer_json):
    return ByteBPE.from_tokenizer_json(tokenizer_json)


@pytest.fixture(scope="module")
def hf(tokenizer_json):
    return Tokenizer.from_file(str(tokenizer_json))


@pytest.fixture(scope="module")
def reviews():
    return load_movie_reviews()["test"]["text"]


@pytest.fixture(scope="module")
def trained():
    return train_bpe(unlabelled_texts(), 512)


def hf_ids(hf, text):
    return hf.encode(text, add_special_tokens=False).ids


# ---------------------------------------------------------------- the pieces

def test_bytes_to_unicode_is_a_reversible_map_to_visible_characters():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256
    assert all(char.isprintable() and not char.isspace() for char in mapping.values())
    assert mapping[ord(" ")] == "Ġ" and mapping[ord("\n")] == "Ċ" and mapping[ord("A")] == "A"
    assert mapping[ord("é")] == "é" and mapping[0] == chr(256)


def test_pretokenize_splits_like_gpt2():
    assert pretokenize("I'm here!  Ok 42x") == ["I", "'m", " here", "!", " ", " Ok", " 42", "x"]
    assert pretokenize("a\n\nb  ") == ["a", "\n", "\n", "b", "  "]  # a run before a word leaves it one
    assert pretokenize("") == []
    for text in HARD_CASES:
        assert "".join(pretokenize(text)) == text
    assert PRETOKENIZE_PATTERN.findall("it's") == ["it", "'s"]


def test_merge_pair_edge_cases():
    assert merge_pair([97, 97, 97], (97, 97), 256) == [256, 97]  # non-overlapping, left first
    assert merge_pair([97, 97, 97, 97], (97, 97), 256) == [256, 256]
    assert merge_pair([1, 2, 3], (2, 3), 9) == [1, 9]  # at the end
    assert merge_pair([1, 2, 1, 2], (1, 2), 9) == [9, 9]
    assert merge_pair([1, 2, 3], (3, 1), 9) == [1, 2, 3]  # no occurrence
    assert merge_pair([], (1, 2), 9) == []
    assert merge_pair([1], (1, 2), 9) == [1]


def test_pair_counts_weight_pairs_by_word_frequency():
    counts = pair_counts({(1, 2, 1, 2): 3, (2, 1): 1, (5,): 7})
    assert counts == Counter({(1, 2): 6, (2, 1): 4})


# ---------------------------------------------------------------- against the tokenizers library

def test_loads_smollm2_vocabulary(smol, hf):
    assert len(smol) == hf.get_vocab_size() == 49_152
    assert len(smol.merges) == 48_900
    assert smol.special_tokens["<|endoftext|>"] == 0 and smol.special_tokens["<|im_start|>"] == 1
    assert smol.special_tokens["<|im_end|>"] == 2 and len(smol.special_tokens) == 17
    assert smol.merges[0] == (b" ", b"t")


def test_ids_match_tokenizers_on_movie_reviews(smol, hf, reviews):
    texts = reviews[:250]
    assert len(texts) == 250
    mismatched = [text for text in texts if smol.encode(text) != hf_ids(hf, text)]
    assert mismatched == []


@pytest.mark.parametrize("text", HARD_CASES)
def test_ids_and_tokens_match_tokenizers_on_hard_cases(smol, hf, text):
    assert smol.encode(text) == hf_ids(hf, text)
    assert smol.tokens(text) == hf.encode(text, add_special_tokens=False).tokens
    assert smol.decode(smol.encode(text)) == text


def test_ids_match_tokenizers_on_random_strings(smol, hf):
    for text in random_strings(300, seed=0, code_points=BLOCKS):
        assert smol.encode(text) == hf_ids(hf, text), repr(text)


def test_special_tokens_are_matched_before_pretokenizing(smol):
    ids = smol.encode("<|im_start|>user\nHi<|im_end|>")
    assert ids[0] == 1 and ids[-1] == 2
    assert smol.tokens("<|im_start|>user") == ["<|im_start|>", "user"]
    assert smol.decode([1, 2, 0]) == "<|im_start|><|im_end|><|endoftext|>"


def test_bytes_missing_from_the_vocabulary_are_dropped_like_tokenizers(smol, hf):
    # SmolLM2 lacks 21 bytes (e.g. 0x04, and 0xC0, 0xFF which never occur in UTF-8).
    assert b"\x04" not in smol.token_to_id
    for text in ["a\x04b", "!\x04!", "..\x04..", "\U00040000x", "\x04\x06"]:
        assert smol.encode(text) == hf_ids(hf, text)
    assert smol.encode("!\x04!") == smol.encode("!!")  # the neighbours still merge


def test_digit_splitting_of_the_original_smollm2_changes_no_ids_on_ordinary_text(smol, hf, tokenizer_json):
    """The original SmolLM2 tokenizer isolates digits before ByteLevel; its merges never touch an
    ASCII digit, so ids agree, except after a run of whitespace or on non-ASCII numerals."""
    split = Tokenizer.from_file(str(tokenizer_json))
    split.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    sentences = ["I paid $1,234.56 in 2023 for 3 tickets.", "Call 555-0199 or +44 20 7946 0958!",
                 "Version 3.11.7 (build 42) at 10:30pm, 99% sure, 1st of 12", "pi=3.14159265358979",
                 "room101, x2, 2x, 0.5e-10, 1e6", "It scored 7/10 and grossed $100,000,000."]
    for text in sentences:
        assert hf_ids(split, text) == hf_ids(hf, text) == smol.encode(text)
    for text in ["a  1", "x\n\n2", "a ²"]:  # the documented exceptions
        assert hf_ids(split, text) != hf_ids(hf, text) == smol.encode(text)


def test_the_original_digit_splitting_tokenizer_is_read_and_matched(tmp_path, tokenizer_json, reviews):
    """A tokenizer.json with SmolLM2's original pre-tokenizer (digits isolated, then ByteLevel), as an
    online learner downloads it: ours reads it and gives the tokenizers library's ids, exceptions included."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    original = tmp_path / "tokenizer.json"
    original.write_text(json.dumps(spec), encoding="utf-8")
    ours, theirs = ByteBPE.from_tokenizer_json(original), Tokenizer.from_file(str(original))
    assert ours.split_digits
    for text in ["a  1", "x\n\n2", "a ²", "In 2024, 3.5% of 1,000 (Ⅻ ½ ٣)"] + list(reviews[:100]):
        assert ours.encode(text) == hf_ids(theirs, text), repr(text)
    assert pretokenize("a  12", split_digits=True) == ["a", "  ", "1", "2"]  # the spaces no longer lean on a digit


# ---------------------------------------------------------------- round trips

def test_round_trip_of_arbitrary_unicode_with_a_full_byte_vocabulary(trained):
    for text in HARD_CASES + random_strings(300, seed=1):
        assert trained.decode(trained.encode(text)) == text, repr(text)


def test_round_trip_on_smollm2_where_every_byte_is_in_its_vocabulary(smol):
    wide = BLOCKS + [(0x80, 0x7FF), (0x800, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x3FFFF), (0xC0000, 0x10FFFF)]
    texts = [t for t in random_strings(300, seed=2, code_points=wide)
             if all(bytes([b]) in smol.token_to_id for b in t.encode())]
    assert len(texts) > 100
    for text in texts:
        assert smol.decode(smol.encode(text)) == text, repr(text)


def test_decode_replaces_a_cut_character(smol):
    ids = smol.encode("🙂")
    assert len(ids) > 1 and smol.decode(ids[:1]) == "\ufffd"


# ---------------------------------------------------------------- training

def test_training_on_a_tiny_corpus_merges_the_hand_counted_pairs():
    # Pre-tokens: "low" x2, " low", " lower", " lowest". (l,o) and (o,w) occur 5 times each: the tie goes
    # to the smaller pair of byte strings, (b"l", b"o"). Then (lo,w) 5, (" ",low) 3, (" low",e) 2; every
    # other pair occurs once, so training stops there even though the vocabulary could grow.
    bpe = train_bpe(["low lower lowest", "low low"], 1000)
    assert bpe.merges == [(b"l", b"o"), (b"lo", b"w"), (b" ", b"low"), (b" low", b"e")]
    assert len(bpe) == 256 + 4
    assert bpe.tokens(" lowest") == ["Ġlowe", "s", "t"]


def test_first_merge_is_the_most_frequent_pair(trained):
    counts = Counter()
    for word in pretokenize(" ".join(unlabelled_texts())):
        counts.update(zip(word.encode(), word.encode()[1:]))
    (a, b), _ = counts.most_common(1)[0]
    assert trained.merges[0] == (bytes([a]), bytes([b]))


def test_vocabulary_grows_by_one_token_per_merge(trained):
    assert len(trained) == 512 and len(trained.merges) == 256
    for rank, (left, right) in enumerate(trained.merges):
        assert trained.vocab[256 + rank] == left + right
        assert trained.token_to_id[left + right] == 256 + rank


def test_training_ignores_text_order():
    texts = list(unlabelled_texts(sources=("movie reviews",)))[:2000]
    shuffled = texts[:]
    random.Random(0).shuffle(shuffled)
    assert train_bpe(texts, 400).merges == train_bpe(shuffled, 400).merges


def test_trained_tokenizer_compresses_training_and_held_out_text(trained, reviews):
    training_text = next(iter(unlabelled_texts()))
    assert len(trained.encode(training_text)) < len(training_text.encode())
    n_bytes = sum(len(text.encode()) for text in reviews)
    n_tokens = sum(len(trained.encode(text)) for text in reviews)
    print(f"vocab 512 on held-out movie reviews: {n_bytes / n_tokens:.2f} bytes per token")
    assert n_bytes / n_tokens > 1.5


def test_progress_bar_option_runs():
    assert len(train_bpe(["ab ab ab"], 260, progress=True).merges) == 2


# ---------------------------------------------------------------- bad input

def test_bad_arguments_are_refused_with_clear_messages(smol, tmp_path):
    with pytest.raises(ValueError, match="vocab_size must be an int >= 256, got 100"):
        train_bpe(["abc"], 100)
    with pytest.raises(TypeError, match="texts must be an iterable of str"):
        train_bpe("a single text", 300)
    with pytest.raises(TypeError, match="texts must hold str, got int at position 1"):
        train_bpe(["ok", 5], 300)
    with pytest.raises(TypeError, match="text must be a str, got int"):
        smol.encode(5)
    with pytest.raises(TypeError, match="text must be a str, got NoneType"):
        pretokenize(None)
    with pytest.raises(ValueError, match="ids must be token ids .* got 99999 at position 1"):
        smol.decode([1, 99_999])
    byte_vocab = {b: bytes([b]) for b in range(256)}
    with pytest.raises(ValueError, match=r"merges\[1\] = \(b'ab', b'c'\): b'abc' is not in the vocabulary"):
        ByteBPE({**byte_vocab, 256: b"ab"}, [(b"a", b"b"), (b"ab", b"c")])
    with pytest.raises(ValueError, match=r"merges\[0\] must be a pair of bytes, got \('a', 'b'\)"):
        ByteBPE({**byte_vocab, 256: b"ab"}, [("a", "b")])
    with pytest.raises(ValueError, match="special_tokens\\['<s>'\\] = 97 is already the id of b'a'"):
        ByteBPE(byte_vocab, [], {"<s>": 97})
    with pytest.raises(FileNotFoundError, match="no tokenizer at"):
        ByteBPE.from_tokenizer_json(tmp_path / "missing.json")


def tiny_tokenizer_json(folder, merges, **changes):
    """A minimal byte-level BPE tokenizer.json: the 256 bytes plus "ab"."""
    vocab = {char: byte for byte, char in bytes_to_unicode().items()} | {"ab": 256}
    spec = {"normalizer": None, "added_tokens": [],
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
            "post_processor": None, "decoder": None, "truncation": None, "padding": None, "version": "1.0",
            "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                      "merges": merges}}
    for key, value in changes.items():
        spec[key] = value
    path = folder / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def test_both_merge_formats_load_alike(tmp_path):
    listed = ByteBPE.from_tokenizer_json(tiny_tokenizer_json(tmp_path, [["a", "b"]]))
    spaced = ByteBPE.from_tokenizer_json(tiny_tokenizer_json(tmp_path, ["a b"]))
    assert listed.merges == spaced.merges == [(b"a", b"b")]
    assert spaced.encode("abc") == [256, ord("c")]
    assert Tokenizer.from_file(str(tiny_tokenizer_json(tmp_path, ["a b"]))).encode("abc").ids == [256, ord("c")]


@pytest.mark.parametrize("change, message", [
    ({"model": {"type": "WordPiece", "vocab": {}}}, "its model is 'WordPiece', not 'BPE'"),
    ({"pre_tokenizer": {"type": "Metaspace"}}, "its pre_tokenizer is 'Metaspace'"),
    ({"pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True}}, "add_prefix_space=false"),
    ({"normalizer": {"type": "NFC"}}, "it has a normalizer"),
])
def test_other_tokenizer_kinds_are_refused(tmp_path, change, message):
    with pytest.raises(ValueError, match=f"only byte-level BPE tokenizers .*{message}"):
        ByteBPE.from_tokenizer_json(tiny_tokenizer_json(tmp_path, ["a b"], **change))

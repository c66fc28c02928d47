"""course_lib.wordpiece against the Hugging Face tokenizer of the bundled model."""

import pytest
import torch

from course_lib.pretrained import bundled_model_path, load_tokenizer
from course_lib.wordpiece import WordPieceTokenizer, basic_tokenize, load_vocab, wordpiece

TEXTS = [
    "Héllo, wörld! Tokenization of unbelievably-rare words: 中文 xyzzyq.",
    "The movie was GREAT!!! 10/10 $5.99 (really) [sic] {x} ^_^ ~ok~ `code`",
    "naïve café résumé — ok… “quotes” ‘single’",
    "tabs\tand\nnewlines  and   spaces\u00a0nbsp\u200bzero-width",
    "emoji 😀 and symbols ©®™ §¶ and control\x00chars\x07",
    "a" * 120,
    "Ünïcödé Ωmega straße ﬁne Ⅻ ½",
    "",
    "   ",
    "can't won't it's O'Neill e-mail U.S.A. 3.14 1,000,000",
]


@pytest.fixture(scope="module")
def tokenizers():
    return WordPieceTokenizer(bundled_model_path()), load_tokenizer()


@pytest.mark.parametrize("text", TEXTS)
def test_token_ids_match_hugging_face(tokenizers, text):
    ours, hf = tokenizers
    assert ours(text).input_ids[0].tolist() == hf(text)["input_ids"]
    assert ours.tokenize(text) == hf.tokenize(text)


@pytest.mark.parametrize("max_length", [2, 5, 16, 512])
def test_batches_pad_and_truncate_like_hugging_face(tokenizers, max_length):
    ours, hf = tokenizers
    mine = ours(TEXTS, max_length=max_length)
    theirs = hf(TEXTS, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    assert torch.equal(mine.input_ids, theirs["input_ids"])
    assert torch.equal(mine.attention_mask, theirs["attention_mask"])
    assert torch.equal(mine.token_type_ids, theirs["token_type_ids"])


def test_wordpiece_is_greedy_longest_match_first():
    vocab = {"un": 0, "##aff": 1, "##able": 2, "unaff": 3, "##a": 4, "[UNK]": 5}
    assert wordpiece("unaffable", vocab) == ["unaff", "##able"]  # longest first piece, not "un"
    assert wordpiece("unaffx", vocab) == ["[UNK]"]  # one uncoverable part: the whole word is unknown
    assert wordpiece("un" * 60, vocab) == ["[UNK]"]  # longer than 100 characters


def test_basic_tokenize_splits_punctuation_and_strips_accents():
    assert basic_tokenize("Don't stop—Café!") == ["don", "'", "t", "stop", "—", "cafe", "!"]
    assert basic_tokenize("Don't", lowercase=False) == ["Don", "'", "t"]


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(TypeError, match="text must be a str, got int"):
        basic_tokenize(3)
    with pytest.raises(FileNotFoundError, match="no vocabulary at"):
        load_vocab(tmp_path)
    with pytest.raises(ValueError, match=r"vocab lacks the special tokens \['\[CLS\]', '\[SEP\]'\]"):
        WordPieceTokenizer({"[PAD]": 0, "[UNK]": 1})
    tokenizer = WordPieceTokenizer(bundled_model_path())
    with pytest.raises(ValueError, match="max_length must be >= 2"):
        tokenizer("hi", max_length=1)
    with pytest.raises(ValueError, match="need padding=True"):
        tokenizer(["a", "a b c"], padding=False)

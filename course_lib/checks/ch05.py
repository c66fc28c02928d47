"""Checks of chapter 05 (BERT)."""

from __future__ import annotations

import torch

from course_lib.checks.verdict import Check, CheckFailed, call, expect_tensor, expect_unchanged, generator
from course_lib.plain import Unsupported

_VOCAB: dict[str, int] | None = None


def _vocab() -> dict[str, int]:
    """The bundled model's vocabulary (about 30 000 tokens), loaded once per process: the probe
    and the judge each load their own, so the vocabulary never crosses the wall."""
    global _VOCAB
    if _VOCAB is None:
        from course_lib.pretrained import bundled_model_path
        from course_lib.wordpiece import load_vocab

        _VOCAB = load_vocab(bundled_model_path())
    return _VOCAB


class WordPiece(Check):
    """``wordpiece(word, vocab)`` cuts a word into the longest vocabulary pieces from the left,
    ``##`` before every piece but the first; ``["[UNK]"]`` if some part matches nothing.
    Catches: the shortest match first, a whole-word lookup without cutting, a tuple or anything
    else that is not a list of strings."""

    exercise = "5.1"

    def cases(self) -> list:
        return ["the", "tokenization", "unbelievably", "xyzzyq", "transformers", "a", "☃x", "##"]

    def probe(self, wordpiece, word):
        # A fresh copy for every call, so a function that changes the vocabulary cannot change the
        # later cases.
        return wordpiece(word, dict(_vocab()))

    def judge(self, word, got):
        from course_lib.wordpiece import wordpiece as reference

        expected = reference(word, _vocab())
        # A list subclass arrives as a list and counts (it compares equal to a list); a tuple does
        # not, as in the old check (``got != expected``).
        if not (type(got) is list and all(type(piece) is str for piece in got) and got == expected):
            shown = f"a {got.type_name}" if isinstance(got, Unsupported) else repr(got)
            raise CheckFailed(f"for {word!r}: got {shown} ≠ expected {expected!r}")


_EMBEDDINGS_CONFIG = dict(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=16, max_position_embeddings=12)


def _embeddings(weights: dict[str, torch.Tensor]) -> torch.nn.Module:
    """A small ``BertEmbeddings`` in evaluation mode (no dropout) holding ``weights``."""
    from course_lib.bert import BertConfig, BertEmbeddings

    module = BertEmbeddings(BertConfig(**_EMBEDDINGS_CONFIG)).eval()
    module.load_state_dict(weights)
    return module


class BertEmbed(Check):
    """``embed(embeddings, input_ids, token_type_ids)``: word + position + token-type embeddings,
    summed, then the module's LayerNorm (evaluation mode: no dropout). The module's weights travel
    in the case, so the probe's module and the judge's are the same. Catches: a missing LayerNorm
    (its weight and bias are not 1 and 0), no position embeddings, changed inputs."""

    exercise = "5.2"

    def cases(self) -> list:
        from course_lib.bert import BertConfig, BertEmbeddings

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(52)
            module = BertEmbeddings(BertConfig(**_EMBEDDINGS_CONFIG)).eval()
            with torch.no_grad():
                module.LayerNorm.weight.uniform_(0.5, 1.5)
                module.LayerNorm.bias.uniform_(-0.5, 0.5)
        weights = {name: t.detach().clone() for name, t in module.state_dict().items()}
        g = generator(52)
        cases = []
        for b, t in ((1, 1), (2, 5), (3, 12)):
            ids = torch.randint(0, 50, (b, t), generator=g)
            types = torch.randint(0, 2, (b, t), generator=g)
            cases.append((weights, ids, types))
        return cases

    def probe(self, embed, case):
        weights, ids, types = case
        module = _embeddings(weights)
        with torch.no_grad():
            return call(embed, module, ids, types)

    def judge(self, case, got):
        weights, ids, types = case
        with torch.no_grad():
            expected = _embeddings(weights)(ids, types)
        out = expect_unchanged((None, ids, types), got)
        expect_tensor(out, expected, f"input_ids of shape {tuple(ids.shape)}")


class MeanPool(Check):
    """``mean_pool(hidden, attention_mask)``: (B, T, H), (B, T) of 1/0 -> (B, H), the average of
    each sequence's real-token vectors. Catches: a mean over every position (padding included),
    a sum without dividing by the number of real tokens."""

    exercise = "5.3"

    def cases(self) -> list:
        g = generator(53)
        cases = []
        for b, t, h in ((1, 1, 4), (2, 5, 3), (4, 7, 8)):
            hidden = torch.randn(b, t, h, generator=g)
            lengths = torch.randint(1, t + 1, (b,), generator=g)
            mask = (torch.arange(t)[None] < lengths[:, None]).long()
            mask[0] = 1  # one full-length sequence
            if b > 1:
                mask[-1, 1:] = 0  # and one that is a single token followed by padding
            cases.append((hidden, mask))
        return cases


    def judge(self, case, got):
        from course_lib.bert import mean_pool as reference

        hidden, mask = case
        expect_tensor(expect_unchanged(case, got), reference(hidden, mask),
                      f"hidden of shape {tuple(hidden.shape)} with padding")


CHECKS = {c.exercise: c for c in (WordPiece(), BertEmbed(), MeanPool())}

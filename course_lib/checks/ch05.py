"""Checks of chapter 05 (BERT)."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

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


# The skeleton's attribute names -> layer 0's names in the bundled checkpoint
BERT_LAYER_NAMES = {"query": "attention.self.query", "key": "attention.self.key", "value": "attention.self.value",
                    "attn_out": "attention.output.dense", "attn_norm": "attention.output.LayerNorm",
                    "ffn_in": "intermediate.dense", "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}
_SENTENCES = (["The movie was great.", "A dull, lifeless script."], ["Tokenization splits unbelievably long words."])


@functools.lru_cache(maxsize=1)
def _layer0() -> dict[str, torch.Tensor]:
    """Layer 0 of the bundled all-MiniLM-L6-v2, under the skeleton's names."""
    from safetensors.torch import load_file

    from course_lib.pretrained import bundled_model_path

    state = load_file(bundled_model_path() / "model.safetensors")
    return {f"{ours}.{kind}": state[f"encoder.layer.0.{theirs}.{kind}"]
            for ours, theirs in BERT_LAYER_NAMES.items() for kind in ("weight", "bias")}


@functools.lru_cache(maxsize=len(_SENTENCES))
def _transformers_layer0(sentences: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """transformers' BertModel on ``sentences``: the input of layer 0 (the embeddings), the padding
    mask and layer 0's output."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    from course_lib.pretrained import bundled_model_path, load_tokenizer

    folder = bundled_model_path()
    tokenizer, model = load_tokenizer(), BertModel(BertConfig.from_pretrained(folder), add_pooling_layer=False)
    missing = model.load_state_dict(load_file(folder / "model.safetensors"), strict=False).missing_keys
    if missing:  # only the pooler's weights may be left over, never one the encoder needs
        raise RuntimeError(f"the bundled checkpoint lacks {missing[:3]}")
    model.eval()
    batch = tokenizer(list(sentences), padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch, output_hidden_states=True).hidden_states
    return hidden[0], batch["attention_mask"], hidden[1]


def _bert_layer_variant(x: torch.Tensor, mask: torch.Tensor, post_norm: bool = True, gelu: str = "none",
                        use_mask: bool = True, scale: bool = True, heads: int = 12) -> torch.Tensor:
    """Layer 0 written out from its weights, with one step optionally wrong."""
    w = _layer0()
    lin = lambda name, y: F.linear(y, w[f"{name}.weight"], w[f"{name}.bias"])  # noqa: E731
    norm = lambda name, y: F.layer_norm(y, y.shape[-1:], w[f"{name}.weight"], w[f"{name}.bias"], 1e-12)  # noqa: E731
    b, t, d = x.shape
    split = lambda y: y.view(b, t, heads, d // heads).transpose(1, 2)  # noqa: E731
    y = norm("attn_norm", x) if not post_norm else x
    q, k, v = split(lin("query", y)), split(lin("key", y)), split(lin("value", y))
    scores = q @ k.transpose(-2, -1) / ((d // heads) ** 0.5 if scale else 1.0)
    if use_mask:
        scores = scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf"))
    attended = lin("attn_out", (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, d))
    if post_norm:
        h = norm("attn_norm", x + attended)
        return norm("ffn_norm", h + lin("ffn_out", F.gelu(lin("ffn_in", h), approximate=gelu)))
    h = x + attended
    return h + lin("ffn_out", F.gelu(lin("ffn_in", norm("ffn_norm", h)), approximate=gelu))


class BertLayerModule(Check):
    """``MyBertLayer(hidden, heads, intermediate, eps)``: ``forward(x, attention_mask)`` = BERT's
    post-norm encoder layer, h = LayerNorm(x + attention(x)), out = LayerNorm(h + FFN(h)) with exact
    (erf) GELU, padding keys masked out; loaded with layer 0 of the bundled all-MiniLM-L6-v2 it must
    equal transformers' layer 0 to 1e-5. Catches: pre-norm, the tanh approximation of GELU, the
    padding mask ignored, scores not divided by √d_head."""

    exercise = "5.4"

    def cases(self) -> list:
        cases = []
        for sentences in _SENTENCES:
            x, mask, _ = _transformers_layer0(tuple(sentences))
            cases.append([list(sentences), x, mask])
        return cases

    def probe(self, layer_class, case):
        _, x, mask = case
        layer = layer_class(384, 12, 1536, 1e-12)
        with torch.no_grad():
            for name, value in _layer0().items():
                module, kind = name.split(".")
                getattr(getattr(layer, module), kind).copy_(value)
            return layer.eval()(x, mask)

    def judge(self, case, got):
        sentences, x, mask = case
        _, _, expected = _transformers_layer0(tuple(sentences))
        name = f"{len(sentences)} sentence(s), x {tuple(x.shape)}" + (" with padding" if (mask == 0).any() else "")
        with torch.no_grad():
            mistakes = {"the LayerNorms come before the sublayers (pre-norm); BERT is post-norm: "
                        "LayerNorm(x + sublayer(x))": _bert_layer_variant(x, mask, post_norm=False),
                        "GELU is the tanh approximation; BERT uses the exact (erf) GELU, F.gelu's default":
                            _bert_layer_variant(x, mask, gelu="tanh"),
                        "the scores are not divided by √d_head": _bert_layer_variant(x, mask, scale=False)}
            if (mask == 0).any():
                mistakes["the padding mask is ignored (padding keys must get no attention)"] = \
                    _bert_layer_variant(x, mask, use_mask=False)
        expect_tensor(got, expected, name, atol=1e-5, rtol=1e-5, mistakes=mistakes)


CHECKS = {c.exercise: c for c in (WordPiece(), BertEmbed(), MeanPool(), BertLayerModule())}

"""Checks of chapter 06 (pretraining)."""

from __future__ import annotations

import torch

from course_lib.checks.verdict import (
    UNREADABLE,
    Check,
    CheckFailed,
    call,
    expect_tensor,
    expect_unchanged,
    generator,
    seeded,
    shape,
)
from course_lib.plain import type_name


class NextTokenLoss(Check):
    """``next_token_loss(logits, idx)``: the logits at position t predict token t+1, so compare
    logits[:, :-1] with idx[:, 1:] (cross-entropy, mean over all predicted positions).
    Catches: no shift (every position predicts itself), the shift the wrong way round, a Python
    float instead of a tensor."""

    exercise = "6.1"

    def cases(self) -> list:
        g = generator(61)
        cases = []
        for b, t, v in ((1, 2, 3), (2, 5, 7), (3, 9, 11)):
            logits = torch.randn(b, t, v, generator=g) * 2
            idx = torch.randint(0, v, (b, t), generator=g)
            cases.append((logits, idx))
        return cases


    def judge(self, case, got):
        from course_lib.gpt import causal_lm_loss

        logits, idx = case
        expected = causal_lm_loss(logits, idx)
        expect_tensor(expect_unchanged(case, got), expected, f"logits of shape {tuple(logits.shape)}")


class TopKFilter(Check):
    """``top_k_filter(logits, k)``: (B, V) logits with every entry below the k-th largest of its
    row set to -inf; the k largest keep their values. Catches: dropping the k-th largest too
    (``<=``), filling with 0 instead of -inf, changing the logits in place."""

    exercise = "6.2"

    def cases(self) -> list:
        g = generator(62)
        return [(torch.randn(b, v, generator=g), k) for b, v, k in ((1, 5, 1), (3, 10, 3), (2, 7, 7))]


    def judge(self, case, got):
        logits, k = case
        kth = torch.topk(logits, k, dim=-1).values[:, -1:]
        expected = logits.masked_fill(logits < kth, float("-inf"))
        expect_tensor(expect_unchanged(case, got), expected, f"logits of shape {tuple(logits.shape)}, k={k}")


def _maskable() -> torch.Tensor:
    """400 rows of 100 tokens: [CLS] and [SEP] at the ends, and the first 200 rows padded after 60."""
    maskable = torch.ones(400, 100, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False
    maskable[:200, 60:] = False
    return maskable


class SelectForMasking(Check):
    """``select(maskable, probability, generator)``: a bool tensor like ``maskable``, True for
    positions chosen independently with ``probability``, never where ``maskable`` is False. The
    probe calls it twice, each time with a fresh generator seeded 63; the judge does the statistics.
    Catches: choosing special tokens or padding, ignoring ``probability``, a float tensor, the
    same number chosen in every row (not independent), changing ``maskable`` in place, ignoring
    ``generator`` (the global generator instead: two calls with equally seeded generators differ)."""

    exercise = "6.3"

    def cases(self) -> list:
        return [(_maskable(), probability, 63) for probability in (0.15, 0.4)]

    def probe(self, select, case):
        maskable, probability, seed = case  # twice, each time with a fresh generator of the same seed
        return [call(select, maskable, probability, generator(seed)) for _ in range(2)]

    def judge(self, case, got):
        maskable, probability, _ = case
        if type(got) is not list or len(got) != 2:
            raise CheckFailed(UNREADABLE)
        chosen, again = (expect_unchanged(case, g) for g in got)
        if not isinstance(chosen, torch.Tensor) or chosen.dtype != torch.bool or chosen.shape != maskable.shape:
            found = f"{chosen.dtype} {tuple(chosen.shape)}" if isinstance(chosen, torch.Tensor) else type_name(chosen)
            raise CheckFailed(f"expected a bool tensor of shape {tuple(maskable.shape)}, got {found}")
        if (chosen & ~maskable).any():
            raise CheckFailed("a position that is not maskable ([CLS], [SEP], padding) was chosen")
        rate = chosen.sum().item() / maskable.sum().item()
        if abs(rate - probability) > 0.02:
            raise CheckFailed(f"with probability={probability}, the fraction chosen is not close to it")
        rows = chosen[200:].float().mean(dim=1)
        if rows.std() < 0.01:
            raise CheckFailed("every row has the same number chosen: choose each position independently")
        if not (isinstance(again, torch.Tensor) and again.shape == chosen.shape and torch.equal(again, chosen)):
            raise CheckFailed("two generators with the same seed gave different choices: draw the random "
                              "numbers from the `generator` argument (torch.rand(..., generator=generator))")


_GPT_SIZES = {"vocab_size": 20, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16}


def _reference_gpt():
    from course_lib.gpt import GPT, GPTConfig

    return seeded(64, lambda: GPT(GPTConfig(**_GPT_SIZES))).eval()


def _gpt_variant(model, idx: torch.Tensor, positions: bool = True, final_norm: bool = True) -> torch.Tensor:
    x = model.wte(idx) + (model.wpe(torch.arange(idx.shape[1])) if positions else 0)
    for block in model.blocks:
        x = block(x)
    return model.lm_head(model.ln_f(x) if final_norm else x)


class GPTModule(Check):
    """``MyGPT``'s ``forward(idx)`` (token + position embeddings, the blocks, final LayerNorm, the tied
    head) and ``generate(idx, max_new_tokens, temperature=1.0, top_k=None, generator=None)``
    (context cropped to ``block_size``, the last position's logits, temperature 0 = greedy, top-k
    filtering, ``torch.multinomial`` with the generator), with the weights of ``course_lib.gpt.GPT``.
    Catches: no position embeddings, no final LayerNorm, the next token taken from the first
    position's logits, top-k ignored or keeping the least likely tokens, the context not cropped."""

    exercise = "6.4"

    def cases(self) -> list:
        g = generator(64)
        prompt = torch.randint(0, 20, (2, 5), generator=g)
        return [["forward", torch.randint(0, 20, (2, 8), generator=g), 0],
                ["forward", torch.randint(0, 20, (1, 3), generator=g), 0],
                ["greedy", prompt, 10], ["top_k=1", prompt, 10], ["top_k=3", prompt, 10]]

    def probe(self, gpt_class, case):
        from course_lib.gpt import GPTConfig

        kind, idx, new = case
        model = gpt_class(GPTConfig(**_GPT_SIZES))
        model.load_state_dict(_reference_gpt().state_dict())
        model.eval()
        with torch.no_grad():
            if kind == "forward":
                return model(idx)
            if kind == "greedy":
                return model.generate(idx.clone(), new, temperature=0.0)
            k = int(kind.split("=")[1])
            return [model.generate(idx.clone(), new, top_k=k, generator=generator(seed)) for seed in (1, 1, 2)]

    def judge(self, case, got):
        kind, idx, new = case
        model = _reference_gpt()
        name = f"{kind} on idx {shape(idx)}" + (f", {new} new tokens, block_size {_GPT_SIZES['block_size']}" if new else "")
        with torch.no_grad():
            if kind == "forward":
                mistakes = {"the position embeddings are left out": _gpt_variant(model, idx, positions=False),
                            "the final LayerNorm (ln_f) is left out": _gpt_variant(model, idx, final_norm=False)}
                expect_tensor(got, model(idx), name, mistakes=mistakes)
                return
            greedy = model.generate(idx, new, temperature=0.0)
            if kind in ("greedy", "top_k=1"):
                out = got if kind == "greedy" else (got[0] if type(got) is list and got else got)
                first = idx.clone()
                for _ in range(new):  # the mistake: the next token from the first position's logits
                    first = torch.cat([first, model(first[:, -8:])[:, 0].argmax(-1, keepdim=True)], 1)
                expect_tensor(out, greedy, name + ("" if kind == "greedy" else " (top_k=1 is greedy)"), atol=0, rtol=0,
                              mistakes={"the next token comes from the first position's logits, not the last (-1)": first})
                return
            if type(got) is not list or len(got) != 3:
                raise CheckFailed(UNREADABLE)
            for out in got:
                expect_tensor(out, greedy, name, atol=float("inf"), rtol=0)  # type, shape and dtype only
                if not torch.equal(out[:, :idx.shape[1]], idx):
                    raise CheckFailed(f"{name}: the output must start with the prompt, unchanged")
            if not torch.equal(got[0], got[1]):
                raise CheckFailed(f"{name}: two generators seeded alike gave different tokens; draw with "
                                  "torch.multinomial(probabilities, 1, generator=generator)")
            k = int(kind.split("=")[1])
            for out in got:
                for t in range(idx.shape[1], out.shape[1]):
                    logits = model(out[:, max(0, t - 8):t])[:, -1]
                    allowed = logits.topk(k, dim=-1).indices
                    if not (allowed == out[:, t:t + 1]).any(-1).all():
                        raise CheckFailed(f"{name}: token {t} is not among the {k} most likely; keep the top_k largest "
                                          "logits and set the others to -inf before the softmax")


CHECKS = {c.exercise: c for c in (NextTokenLoss(), TopKFilter(), SelectForMasking(), GPTModule())}

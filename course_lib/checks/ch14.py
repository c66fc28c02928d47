"""Checks of chapter 14 (vision): convolution via unfold, patchify, the ViT forward pass.

The references are written out here (``F.conv2d`` for 14.1; a reshape–permute for 14.2; the forward
pass for 14.3 on a seeded ``course_lib.vit.ViT``), each with the slips a learner makes, so the
failure can name the slip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from course_lib.checks.verdict import (CheckFailed, Check, expect_fields, expect_tensor, expect_unchanged, generator,
                                       seeded, shape)

# ---------------------------------------------------------------------------------------------
# 14.1 conv2d via unfold


def _conv_shape(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> tuple[int, ...]:
    (b, _, h, w), (o, _, kh, kw) = x.shape, weight.shape
    return b, o, (h + 2 * padding - kh) // stride + 1, (w + 2 * padding - kw) // stride + 1


class Conv2dUnfold(Check):
    """``conv2d(x, weight, bias, stride, padding)`` equal to ``F.conv2d`` (cross-correlation, one
    group, no dilation) for (B, C, H, W) inputs, square or not. Catches: the kernel flipped (a true
    convolution), the output size computed without the padding or the stride, the bias left out,
    the kernel flattened in another order than unfold's rows (channel, row, column), inputs changed
    in place."""

    exercise = "14.1"

    def cases(self) -> list:
        g = generator(141)
        cases = []
        for b, c, h, w, o, k, stride, padding, bias in ((2, 1, 5, 5, 2, 3, 1, 0, True), (1, 3, 6, 7, 4, 3, 1, 1, True),
                                                        (2, 2, 7, 6, 3, (2, 3), 2, 1, False),
                                                        (1, 3, 9, 8, 2, 3, 2, 2, True), (3, 4, 4, 4, 5, 1, 1, 0, True)):
            kh, kw = (k, k) if isinstance(k, int) else k
            cases.append((torch.randn(b, c, h, w, generator=g), torch.randn(o, c, kh, kw, generator=g),
                          torch.randn(o, generator=g) if bias else None, stride, padding))
        return cases

    def judge(self, case, got):
        x, weight, bias, stride, padding = case
        name = (f"x {shape(x)}, weight {shape(weight)}, bias {'None' if bias is None else shape(bias)}, "
                f"stride={stride}, padding={padding}")
        out = expect_unchanged(case, got)
        expected = F.conv2d(x, weight, bias, stride=stride, padding=padding)
        if isinstance(out, torch.Tensor) and out.shape != expected.shape:
            b, o = expected.shape[:2]
            hints = {_conv_shape(x, weight, stride, 0): "the output size leaves out the padding: "
                                                        "(H + 2·padding − kH) // stride + 1",
                     _conv_shape(x, weight, 1, padding): "the output size leaves out the stride"}
            hint = hints.get(tuple(out.shape))
            if hint and tuple(out.shape) != tuple(expected.shape):
                raise CheckFailed(f"{name}: output shape {shape(out)} ≠ expected {shape(expected)}; {hint}")
        c = x.shape[1]
        flat_other_order = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], -1)  # (row, column, channel)
        cols = F.unfold(x, weight.shape[-2:], padding=padding, stride=stride)
        other = (flat_other_order @ cols).reshape(expected.shape)
        mistakes = {"the kernel is flipped (that is a true convolution; F.conv2d and CNNs use cross-correlation)":
                    F.conv2d(x, weight.flip(-2, -1), bias, stride=stride, padding=padding)}
        if bias is not None:
            mistakes["the bias is not added (one value per output channel)"] = F.conv2d(x, weight, None, stride=stride,
                                                                                      padding=padding)
            other = other + bias.view(1, -1, 1, 1)
        if c > 1:
            mistakes["the kernel is flattened in another order than unfold's rows (channel, then row, then column): "
                     "use weight.reshape(out_channels, -1)"] = other
        expect_tensor(out, expected, name, atol=1e-4, rtol=1e-4, mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# 14.2 patchify


def _patchify(images: torch.Tensor, p: int, mistake: str = "") -> torch.Tensor:
    b, c, h, w = images.shape
    if mistake == "plain reshape":
        return images.reshape(b, (h // p) * (w // p), c * p * p)
    grid = images.reshape(b, c, h // p, p, w // p, p)
    order = {"": (0, 2, 4, 1, 3, 5), "columns first": (0, 4, 2, 1, 3, 5), "channel last": (0, 2, 4, 3, 5, 1),
             "transposed patch": (0, 2, 4, 1, 5, 3)}[mistake]
    return grid.permute(*order).reshape(b, (h // p) * (w // p), c * p * p)


class Patchify(Check):
    """``patchify(images, patch_size)``: (B, C, H, W) -> (B, N, C·P·P), patches in reading order
    (along the top row first), each flattened channel, then row, then column. Catches: patches taken
    column by column, the channel last inside a patch, rows and columns swapped inside a patch, a
    plain reshape without the permute (which cuts rows, not squares), inputs changed in place."""

    exercise = "14.2"

    def cases(self) -> list:
        g = generator(142)
        return [(torch.randn(b, c, h, w, generator=g), p)
                for b, c, h, w, p in ((1, 1, 4, 4, 2), (2, 3, 6, 4, 2), (1, 2, 6, 9, 3), (2, 1, 28, 28, 7),
                                      (1, 3, 8, 12, 4))]

    def judge(self, case, got):
        images, p = case
        name = f"images {shape(images)}, patch_size={p}"
        out = expect_unchanged(case, got)
        mistakes = {"the patches go down the columns first: read them row by row, left to right":
                    _patchify(images, p, "columns first"),
                    "the channel is the last axis inside a patch: flatten channel, then row, then column":
                    _patchify(images, p, "channel last"),
                    "rows and columns are swapped inside a patch": _patchify(images, p, "transposed patch"),
                    "the image is reshaped without a permute: that cuts strips of rows, not P×P squares":
                    _patchify(images, p, "plain reshape")}
        expect_tensor(out, _patchify(images, p), name, atol=0, rtol=0, mistakes=mistakes)


# ---------------------------------------------------------------------------------------------
# 14.3 the ViT forward pass


def _vit(config: dict):
    from course_lib.vit import ViT

    return seeded(143 + config["depth"] + config["image_size"], lambda: ViT(**config)).eval()


def _forward(model, images: torch.Tensor, mistake: str = "") -> torch.Tensor:
    x = model.patch_embed(images)
    cls = model.cls_token.expand(images.shape[0], -1, -1)
    if mistake == "no class token":
        x = x + model.pos_embed[:, 1:]
    elif mistake == "class token last":
        x = torch.cat([x, cls], dim=1) + model.pos_embed
    else:
        x = torch.cat([cls, x], dim=1)
        if mistake != "no positions":
            x = x + model.pos_embed
    for block in model.blocks:
        x = block(x)[0]
    if mistake != "no norm":
        x = model.norm(x)
    pooled = {"no class token": x.mean(dim=1), "mean": x.mean(dim=1), "class token last": x[:, -1],
              "last token": x[:, -1]}.get(mistake, x[:, 0])
    return model.head(pooled)


class VitForward(Check):
    """``vit_forward(model, images)`` -> logits (B, classes) of a ``course_lib.vit.ViT``: patch
    embedding, the class token in front, position embeddings added, the blocks, the final LayerNorm,
    the head on the class token. Catches: no class token (mean of the patches instead), no position
    embeddings, the class token put last, the head on the mean of all tokens or on the last token,
    the final LayerNorm left out, the parameters changed."""

    exercise = "14.3"

    def cases(self) -> list:
        g = generator(143)
        configs = ({"image_size": 8, "patch_size": 4, "in_channels": 1, "num_classes": 3, "dim": 8, "depth": 1,
                    "heads": 2, "mlp_dim": 16},
                   {"image_size": 12, "patch_size": 3, "in_channels": 3, "num_classes": 5, "dim": 12, "depth": 2,
                    "heads": 3, "mlp_dim": 24},
                   {"image_size": 6, "patch_size": 2, "in_channels": 2, "num_classes": 4, "dim": 8, "depth": 2,
                    "heads": 4, "mlp_dim": 8})
        return [(config, torch.randn(b, config["in_channels"], config["image_size"], config["image_size"], generator=g))
                for config, b in zip(configs, (2, 3, 1))]

    def probe(self, vit_forward, case):
        config, images = case
        model = _vit(config)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with torch.no_grad():
            out = vit_forward(model, images.clone())
        changed = sorted(k for k, v in model.state_dict().items() if not torch.equal(v, before[k]))
        return {"out": out, "changed": changed}

    def judge(self, case, got):
        config, images = case
        out, changed = expect_fields(got, "out", "changed")
        name = (f"images {shape(images)}, patch_size={config['patch_size']}, dim={config['dim']}, "
                f"depth={config['depth']}")
        if changed:
            raise CheckFailed(f"{name}: the model's parameters were changed ({changed[:3]}); only read them")
        model = _vit(config)
        with torch.no_grad():
            expected = _forward(model, images)
            hints = {"no class token": "there is no class token: the head reads the mean of the patches; put "
                                       "model.cls_token in front of the patches and read position 0",
                     "no positions": "the position embeddings are not added: add model.pos_embed after the "
                                     "class token is put in front",
                     "class token last": "the class token is put after the patches: it goes first (position 0)",
                     "mean": "the head reads the mean of all tokens: read the class token, x[:, 0]",
                     "last token": "the head reads the last token: read the class token, x[:, 0]",
                     "no norm": "the final LayerNorm (model.norm) is left out before the head"}
            mistakes = {hint: _forward(model, images, mistake) for mistake, hint in hints.items()}
        expect_tensor(out, expected, name, atol=1e-5, rtol=1e-4, mistakes=mistakes)


CHECKS = {c.exercise: c for c in (Conv2dUnfold(), Patchify(), VitForward())}

"""Solutions and plausible wrong answers of chapter 14's exercises (conv2d via unfold, patchify, the
ViT forward pass), written apart from the notebook's and course_lib's code; ``test_grading`` runs
them with the other exercises'. Each entry: exercise id -> (check, solution, [(wrong answer,
expected part of its message)], untouched stub)."""

import torch
import torch.nn.functional as F

from course_lib import grading


def _stub(*args, **kwargs):
    raise NotImplementedError("Exercise")


# ----------------------------------------------------------------------------------------------
# 14.1: conv2d from unfold, written with explicit output sizes and a matrix product per image


def _conv(x, weight, bias, stride, padding, mistake=None):
    b, c, h, w = x.shape
    o, _, kh, kw = weight.shape
    pad = 0 if mistake == "size without padding" else padding
    out_h = (h + 2 * pad - kh) // stride + 1
    out_w = (w + 2 * pad - kw) // stride + 1
    if mistake == "size without padding":
        x = x[:, :, :h - 0, :w - 0]
        cols = F.unfold(x, (kh, kw), stride=stride)
    elif mistake == "stride ignored":
        out_h, out_w = h + 2 * padding - kh + 1, w + 2 * padding - kw + 1
        cols = F.unfold(x, (kh, kw), padding=padding)
    else:
        cols = F.unfold(x, (kh, kw), padding=padding, stride=stride)
    kernel = weight.flip(-1, -2) if mistake == "flipped" else weight
    flat = kernel.permute(0, 2, 3, 1).reshape(o, -1) if mistake == "order" else kernel.reshape(o, -1)
    out = torch.stack([flat @ cols[i] for i in range(b)]).reshape(b, o, out_h, out_w)
    if bias is not None and mistake != "no bias":
        out = out + bias[None, :, None, None]
    return out


def _conv_in_place(x, weight, bias, stride, padding):
    out = _conv(x, weight, bias, stride, padding)
    x.zero_()
    return out


# ----------------------------------------------------------------------------------------------
# 14.2: patchify with explicit loops over the grid (slow, and independent of the check's permute)


def _patchify(images, p, mistake=None):
    b, c, h, w = images.shape
    if mistake == "plain reshape":
        return images.reshape(b, (h // p) * (w // p), c * p * p)
    rows, cols = range(h // p), range(w // p)
    order = [(r, q) for q in cols for r in rows] if mistake == "columns first" else [(r, q) for r in rows for q in cols]
    patches = []
    for r, q in order:
        patch = images[:, :, r * p:(r + 1) * p, q * p:(q + 1) * p]  # (B, C, P, P)
        if mistake == "channel last":
            patch = patch.permute(0, 2, 3, 1)
        elif mistake == "transposed":
            patch = patch.transpose(2, 3)
        patches.append(patch.reshape(b, -1))
    return torch.stack(patches, dim=1)


# ----------------------------------------------------------------------------------------------
# 14.3: the ViT forward pass, with the class token written as its own tensor


def _vit(model, images, mistake=None):
    patches = model.patch_embed(images)
    b = images.shape[0]
    cls = model.cls_token.repeat(b, 1, 1)
    if mistake == "no cls":
        tokens = patches + model.pos_embed[:, 1:, :]
    elif mistake == "cls last":
        tokens = torch.cat((patches, cls), 1) + model.pos_embed
    elif mistake == "no positions":
        tokens = torch.cat((cls, patches), 1)
    else:
        tokens = torch.cat((cls, patches), 1) + model.pos_embed
    for block in model.blocks:
        tokens, _ = block(tokens)
    if mistake != "no norm":
        tokens = model.norm(tokens)
    if mistake in ("no cls", "mean"):
        pooled = tokens.mean(1)
    elif mistake in ("cls last", "last"):
        pooled = tokens[:, -1]
    else:
        pooled = tokens[:, 0]
    return model.head(pooled)


def _vit_trains(model, images):
    out = _vit(model, images)
    with torch.no_grad():
        model.head.bias.add_(1.0)
    return out


CH14 = {
    "14.1": (
        grading.check_conv2d_unfold,
        _conv,
        [(lambda *a: _conv(*a, mistake="flipped"), "the kernel is flipped"),
         (lambda *a: _conv(*a, mistake="no bias"), "the bias is not added"),
         (lambda *a: _conv(*a, mistake="order"), "the kernel is flattened in another order"),
         (lambda *a: _conv(*a, mistake="size without padding"), "the output size leaves out the padding"),
         (lambda *a: _conv(*a, mistake="stride ignored"), "the output size leaves out the stride"),
         (lambda x, w, b, s, p: F.conv2d(x, w, b, stride=s, padding=p).double(), "output dtype torch.float64"),
         (_conv_in_place, "argument 1 was modified in place")],
        _stub,
    ),
    "14.2": (
        grading.check_patchify,
        _patchify,
        [(lambda x, p: _patchify(x, p, "columns first"), "the patches go down the columns first"),
         (lambda x, p: _patchify(x, p, "channel last"), "the channel is the last axis inside a patch"),
         (lambda x, p: _patchify(x, p, "transposed"), "rows and columns are swapped inside a patch"),
         (lambda x, p: _patchify(x, p, "plain reshape"), "reshaped without a permute"),
         (lambda x, p: _patchify(x, p).reshape(x.shape[0], -1, x.shape[1], p, p), "output shape")],
        _stub,
    ),
    "14.3": (
        grading.check_vit_forward,
        _vit,
        [(lambda m, x: _vit(m, x, "no cls"), "there is no class token"),
         (lambda m, x: _vit(m, x, "no positions"), "the position embeddings are not added"),
         (lambda m, x: _vit(m, x, "cls last"), "the class token is put after the patches"),
         (lambda m, x: _vit(m, x, "mean"), "the head reads the mean of all tokens"),
         (lambda m, x: _vit(m, x, "last"), "the head reads the last token"),
         (lambda m, x: _vit(m, x, "no norm"), "the final LayerNorm (model.norm) is left out"),
         (_vit_trains, "the model's parameters were changed")],
        _stub,
    ),
}

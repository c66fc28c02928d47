"""course_lib.vit: patch order, the patch embedding as a strided convolution, and the Vision Transformer's
attention maps, class token and position embeddings."""

import pytest
import torch
import torch.nn.functional as F

from course_lib import vit as V

TOL = dict(atol=1e-5, rtol=1e-5)  # float32, sums in a different order


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _coded_image(c, h, w):
    """Pixel value 10000·channel + 100·row + column, so every value names its position."""
    ch, row, col = torch.meshgrid(torch.arange(c), torch.arange(h), torch.arange(w), indexing="ij")
    return (10000 * ch + 100 * row + col).float()[None]


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    config = dict(image_size=12, patch_size=4, in_channels=2, num_classes=5, dim=16, depth=2, heads=4, mlp_dim=32)
    return V.ViT(**(config | kwargs)).eval()


def test_patchify_order_is_reading_order_then_channel_row_column():
    p = 2
    patches = V.patchify(_coded_image(3, 4, 6), p)  # a 2×3 grid of 2×2 patches
    assert patches.shape == (1, 6, 3 * p * p)

    def patch(top, left):
        return torch.tensor([10000.0 * c + 100 * (top + r) + (left + k) for c in range(3) for r in range(p)
                             for k in range(p)])

    torch.testing.assert_close(patches[0, 0], patch(0, 0), atol=0, rtol=0)  # top left
    torch.testing.assert_close(patches[0, 1], patch(0, 2), atol=0, rtol=0)  # right of it
    torch.testing.assert_close(patches[0, 2], patch(0, 4), atol=0, rtol=0)
    torch.testing.assert_close(patches[0, 3], patch(2, 0), atol=0, rtol=0)  # next row, left edge
    torch.testing.assert_close(patches[0, 5], patch(2, 4), atol=0, rtol=0)  # bottom right
    assert patches[0, 0, :4].tolist() == [0.0, 1.0, 100.0, 101.0]  # channel 0: row 0 then row 1


@pytest.mark.parametrize("shape, p", [((2, 3, 8, 8), 4), ((1, 1, 12, 8), 4), ((3, 2, 6, 9), 3), ((1, 3, 5, 5), 1),
                                      ((2, 1, 6, 6), 6)])
def test_patchify_equals_unfold(shape, p):
    x = _randn(*shape)
    torch.testing.assert_close(V.patchify(x, p), F.unfold(x, p, stride=p).transpose(1, 2), atol=0, rtol=0)


def test_patchify_errors():
    with pytest.raises(ValueError, match="patch_size"):
        V.patchify(torch.zeros(1, 1, 8, 10), 4)
    with pytest.raises(ValueError, match="patch_size"):
        V.patchify(torch.zeros(1, 1, 8, 8), 0)
    with pytest.raises(ValueError, match="images must be"):
        V.patchify(torch.zeros(1, 8, 8), 4)


@pytest.mark.parametrize("c, p, size", [(1, 4, 28), (3, 2, 6), (3, 4, 8)])
def test_patch_embedding_equals_its_convolution(c, p, size):
    torch.manual_seed(0)
    embed = V.PatchEmbedding(c, p, 12)
    x = _randn(2, c, size, size, seed=1)
    out = embed.as_conv()(x)  # (B, d, h, w)
    assert out.shape == (2, 12, size // p, size // p)
    torch.testing.assert_close(embed(x), out.flatten(2).transpose(1, 2), **TOL)
    with pytest.raises(ValueError, match=f"{c} channels"):
        embed(_randn(2, c + 1, size, size))


def test_vit_output_shape_and_attention_maps():
    model = _model()
    x = _randn(3, 2, 12, 12)
    logits, maps = model(x, return_attention=True)
    assert logits.shape == (3, 5)
    assert len(maps) == 2
    for m in maps:
        assert m.shape == (3, 4, 1 + 9, 1 + 9)
        assert (m >= 0).all()
        torch.testing.assert_close(m.sum(-1), torch.ones(3, 4, 10), **TOL)
    torch.testing.assert_close(model(x), logits, **TOL)  # the fused path gives the same logits
    assert model(x, return_attention=False).shape == (3, 5)


def test_vit_images_are_independent_in_a_batch():
    model, x = _model(), _randn(3, 2, 12, 12)
    torch.testing.assert_close(model(x[1:2]), model(x)[1:2], **TOL)


def test_cls_token_and_position_embeddings_are_used():
    x = _randn(2, 2, 12, 12)
    for name in ("cls_token", "pos_embed"):
        model = _model()
        before = model(x)
        with torch.no_grad():
            getattr(model, name).add_(_randn(*getattr(model, name).shape, seed=5))
        assert not torch.allclose(model(x), before, atol=1e-3), name


def _permute_patches(x, p, order):
    """The image with its p×p patches rearranged: patch order[i] of x goes to place i."""
    b, c, h, w = x.shape
    patches = V.patchify(x, p)[:, order]
    return F.fold(patches.transpose(1, 2), (h, w), p, stride=p)


def test_patch_order_matters_only_through_the_position_embeddings():
    x = _randn(2, 2, 12, 12)
    order = torch.tensor([4, 0, 8, 2, 7, 1, 3, 6, 5])
    shuffled = _permute_patches(x, 4, order)
    torch.testing.assert_close(V.patchify(shuffled, 4), V.patchify(x, 4)[:, order], atol=0, rtol=0)

    model = _model()
    assert not torch.allclose(model(shuffled), model(x), atol=1e-4)  # learned positions see the difference
    with torch.no_grad():
        model.pos_embed.zero_()
    torch.testing.assert_close(model(shuffled), model(x), **TOL)  # without them: a bag of patches

    # the same at the level of the token sequence: permuting the patch tokens permutes the outputs
    tokens = model.tokens(x)
    permuted = torch.cat([tokens[:, :1], tokens[:, 1:][:, order]], dim=1)
    a, b = tokens, permuted
    for block in model.blocks:
        a, b = block(a)[0], block(b)[0]
    torch.testing.assert_close(b[:, 0], a[:, 0], **TOL)
    torch.testing.assert_close(b[:, 1:], a[:, 1:][:, order], **TOL)


def test_tokens_are_class_token_then_patches_plus_positions():
    model = _model()
    x = _randn(2, 2, 12, 12)
    tokens = model.tokens(x)
    assert tokens.shape == (2, 10, 16)
    torch.testing.assert_close(tokens[:, 0], (model.cls_token + model.pos_embed[:, 0]).expand(2, 1, 16)[:, 0])
    torch.testing.assert_close(tokens[:, 1:], model.patch_embed(x) + model.pos_embed[:, 1:])


def test_cls_attention_averages_the_class_row_over_heads():
    model = _model(depth=3)
    logits, maps = model(_randn(2, 2, 12, 12), return_attention=True)
    attention = V.cls_attention(maps, 3)
    assert attention.shape == (3, 2, 3, 3)
    torch.testing.assert_close(attention[1, 0].flatten(), maps[1][0, :, 0, 1:].mean(0))
    # the class token's weights on the patches plus on itself sum to one
    torch.testing.assert_close(attention.sum((-2, -1)) + torch.stack([m[:, :, 0, 0].mean(1) for m in maps]),
                               torch.ones(3, 2), **TOL)


def test_cls_attention_errors():
    model = _model()
    x = _randn(1, 2, 12, 12)
    with pytest.raises(ValueError, match="return_attention"):
        V.cls_attention([None, None], 3)
    with pytest.raises(ValueError, match="return_attention"):
        V.cls_attention([], 3)
    _, maps = model(x, return_attention=True)
    with pytest.raises(ValueError, match="grid"):
        V.cls_attention(maps, 4)


def test_vit_errors():
    with pytest.raises(ValueError, match="patch_size"):
        V.ViT(image_size=28, patch_size=5)
    model = _model()
    with pytest.raises(ValueError, match="images must be"):
        model(torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match="images must be"):
        model(torch.zeros(1, 2, 12, 8))
    with pytest.raises(ValueError, match="images must be"):
        model(torch.zeros(2, 12, 12))
    with pytest.raises(ValueError, match="2 channels"):
        model(torch.zeros(1, 3, 12, 12))


def test_vit_names_its_own_arguments_when_heads_do_not_divide_dim():
    with pytest.raises(ValueError, match=r"heads must divide dim=48, got heads=5"):
        V.ViT(dim=48, heads=5)

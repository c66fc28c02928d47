"""course_lib.efficientnet: the pretrained EfficientNet-Lite0 (weights, class names, preprocessing, two
real photos), its features, and the linear probe on frozen features."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from course_lib import efficientnet as E

TOL = dict(atol=1e-5, rtol=1e-5)  # float32, the same numbers through a different path


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return E.load_efficientnet_lite0()


@pytest.fixture(scope="module")
def photo_logits(model):
    photos = E.photos()
    with torch.no_grad():
        return model(E.preprocess([photos["coffee"], photos["chelsea"]]))


def test_weights_load_with_every_key(model):
    state = torch.load(E.weights_file(), map_location="cpu", weights_only=True)
    assert set(state) == set(model.state_dict())
    for name, value in state.items():
        torch.testing.assert_close(model.state_dict()[name], value, atol=0, rtol=0)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008
    assert not model.training
    assert model._fc.out_features == 1000 and model._fc.in_features == 1280


def test_imagenet_classes():
    names = E.imagenet_classes()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "tench" and names[967] == "espresso"
    assert names[281] == "tabby" and names[285] == "Egyptian cat"
    assert all(name == name.strip() and name for name in names)


@pytest.mark.parametrize("shape", [(300, 451, 3), (451, 300, 3), (200, 200), (256, 256, 3), (500, 260)])
def test_resize_center_crop_shapes(shape):
    image = np.random.default_rng(0).integers(0, 256, size=shape, dtype=np.uint8)
    out = E.resize_center_crop(image)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    if len(shape) == 2:  # grey: the same value in R, G and B
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert E.resize_center_crop(Image.fromarray(image), size=32, resize=40).shape == (32, 32, 3)


def test_resize_center_crop_keeps_the_centre():
    # a 256×512 landscape: resizing changes nothing, the crop is the middle 224 columns and rows
    image = np.zeros((256, 512, 3), dtype=np.uint8)
    image[:, 144:368] = 200  # the central 224 columns
    out = E.resize_center_crop(image)
    assert (out == 200).all()
    image[:, 143] = 200  # one column more is outside the crop
    image[:, 144] = 0
    assert (E.resize_center_crop(image)[:, 0] == 0).all()


def test_resize_center_crop_errors():
    with pytest.raises(ValueError, match="uint8"):
        E.resize_center_crop(np.zeros((300, 300, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="uint8"):
        E.resize_center_crop(np.zeros((2, 300, 300, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="resize"):
        E.resize_center_crop(np.zeros((300, 300, 3), dtype=np.uint8), size=224, resize=200)
    with pytest.raises(ValueError, match="size"):
        E.resize_center_crop(np.zeros((300, 300, 3), dtype=np.uint8), size=0)


def test_to_model_input():
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    pixels[0, 0] = (0, 255, 128)
    x = E.to_model_input(pixels)
    assert x.shape == (3, 5, 6) and x.dtype == torch.float32
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([-1.0, 1.0, 128 / 127.5 - 1]))
    assert x.min() >= -1 and x.max() <= 1
    torch.testing.assert_close(x[1], torch.from_numpy(pixels[..., 1]).float() / 127.5 - 1)
    batch = E.to_model_input(np.stack([pixels, pixels[::-1]]))
    assert batch.shape == (2, 3, 5, 6)
    torch.testing.assert_close(batch[0], x)
    torch.testing.assert_close(batch[1], E.to_model_input(pixels[::-1]))  # a negative-stride view works


def test_coffee_is_espresso_and_chelsea_is_a_cat(photo_logits):
    coffee, cat = E.top_k(photo_logits, 5)
    assert coffee[0][0] == "espresso" and coffee[0][1] > 0.5
    assert {"tabby", "tiger cat", "Egyptian cat"} & {name for name, _ in cat}
    assert all(a[1] >= b[1] for a, b in zip(cat, cat[1:]))  # most probable first
    assert photo_logits.argmax(-1)[0].item() == 967


def test_features_are_what_the_classifier_reads(model):
    x = E.preprocess([E.photos()["coffee"]], size=128, resize=144)
    x = torch.cat([x, x.flip(-1)])
    f = E.features(model, x)
    assert f.shape == (2, 1280) and not f.requires_grad
    with torch.no_grad():
        torch.testing.assert_close(model._fc(f), model(x), **TOL)
        assert not torch.allclose(f[0], f[1])


def test_grey_features(model):
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    f = E.grey_features(model, images, size=64, batch_size=2)  # two batches
    assert f.shape == (3, 1280)
    x = F.interpolate(images.float()[:, None] / 127.5 - 1, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(f, E.features(model, x.expand(-1, 3, -1, -1)), **TOL)
    with pytest.raises(ValueError, match="uint8"):
        E.grey_features(model, images.float())
    with pytest.raises(ValueError, match="uint8"):
        E.grey_features(model, images[:, None])


def _separable(seed=0, n=60):
    """Three classes on 6 features with very different offsets and scales, separable by construction."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(3).repeat(n // 3)
    centres = torch.tensor([[3.0, 0, 0, 0, 0, 0], [0, 3.0, 0, 0, 0, 0], [0, 0, 3.0, 0, 0, 0]])
    z = centres[labels] + 0.3 * torch.randn(n, 6, generator=g)
    # (offsets large next to the spread would cost float32 digits in the folded bias: kept moderate)
    scale, offset = torch.tensor([0.05, 20.0, 1.0, 5.0, 0.5, 8.0]), torch.tensor([2.0, -3.0, 0, 7.0, 10.0, 1.0])
    return z * scale + offset, labels


def test_linear_probe_separates_a_separable_problem():
    x, labels = _separable()
    probe = E.linear_probe(x, labels, 3)
    assert probe.weight.shape == (3, 6) and not probe.weight.requires_grad
    assert (probe(x).argmax(-1) == labels).float().mean().item() == 1.0
    test_x, test_labels = _separable(seed=1)
    assert (probe(test_x).argmax(-1) == test_labels).float().mean().item() >= 0.95


def test_linear_probe_folds_the_standardisation_in():
    x, labels = _separable()
    probe = E.linear_probe(x, labels, 3, weight_decay=1e-2, steps=50)
    # the reference: the same regression fitted on standardised features, kept unfolded
    mean, std = x.mean(0), x.std(0) + 1e-6
    z = (x - mean) / std
    reference = torch.nn.Linear(6, 3)
    torch.nn.init.zeros_(reference.weight)
    torch.nn.init.zeros_(reference.bias)
    optimizer = torch.optim.LBFGS(reference.parameters(), max_iter=50, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(reference(z), labels) + 1e-2 * reference.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    new_x = _separable(seed=2)[0]
    with torch.no_grad():
        expected = reference((new_x - mean) / std)
        assert expected.abs().max() > 1  # a fitted layer, not zeros
        torch.testing.assert_close(probe(new_x), expected, atol=1e-4, rtol=1e-4)


def test_grey_features_and_inputs_refuse_what_would_silently_go_wrong():
    from course_lib import efficientnet as E

    with pytest.raises(ValueError, match="size must be a multiple of 32"):
        E.grey_features(None, torch.zeros(2, 28, 28, dtype=torch.uint8), size=100)
    with pytest.raises(ValueError, match="pixels must be a uint8"):
        E.to_model_input(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match="images must be a uint8"):
        E.grey_features(None, np.zeros((2, 28, 28), dtype=np.uint8))
    with pytest.raises(ValueError, match="N >= 2"):
        E.linear_probe(torch.zeros(1, 5), torch.zeros(1, dtype=torch.long), num_classes=2)

"""course_lib.gradcam against Grad-CAM computed by hand with torch.autograd.grad on a split SmallCNN."""

import pytest
import torch
import torch.nn.functional as F

from course_lib.conv import SmallCNN
from course_lib.gradcam import grad_cam

TOL = dict(atol=1e-5, rtol=1e-5)


def _model(seed=0):
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=1, num_classes=5, channels=(4, 8), image_size=16)
    with torch.no_grad():  # non-trivial batch-norm statistics, so eval mode differs from training mode
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _images(seed=1, n=4):
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))


def _manual_cam(model, x, targets=None):
    """Grad-CAM on the output of model.stages, written out: features, logits = head(features),
    gradient of the chosen logits w.r.t. the features by autograd.grad."""
    model.eval()
    features = model.stages(x)
    logits = model.head(features)
    chosen = logits.argmax(-1) if targets is None else torch.as_tensor(targets)
    gradient, = torch.autograd.grad(logits[torch.arange(len(x)), chosen].sum(), features)
    weights = gradient.mean(dim=(2, 3))  # (B, K)
    cam = torch.relu(torch.einsum("bk,bkhw->bhw", weights, features))
    cam = F.interpolate(cam[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return cam / cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None], logits.detach()


def test_matches_a_manual_grad_cam():
    model, x = _model(), _images()
    cam, logits = grad_cam(model, model.stages[-1], x)
    expected_cam, expected_logits = _manual_cam(model, x)
    assert cam.shape == (4, 16, 16)
    torch.testing.assert_close(logits, expected_logits, **TOL)
    torch.testing.assert_close(cam, expected_cam, **TOL)
    assert not torch.allclose(cam[0], cam[1])


@pytest.mark.parametrize("index", [-4, -3, -2])  # the last stage's conv, batch norm, ReLU(inplace=True)
def test_layers_inside_the_last_stage(index):
    model, x = _model(), _images()
    layer = model.stages[index]
    cam, _ = grad_cam(model, layer, x)
    # by hand: run the stages up to and including the layer, then the rest
    model.eval()
    head = model.stages[:len(model.stages) + index + 1]
    rest = torch.nn.Sequential(*model.stages[len(model.stages) + index + 1:], model.head)
    features = head(x)
    logits = rest(features.clone())  # clone: the ReLU after the batch norm works in place
    gradient, = torch.autograd.grad(logits[torch.arange(4), logits.argmax(-1)].sum(), features)
    expected = torch.relu((gradient.mean((2, 3), keepdim=True) * features).sum(1, keepdim=True))
    expected = F.interpolate(expected, size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    expected = expected / expected.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    torch.testing.assert_close(cam, expected, **TOL)


def test_maps_are_in_0_1_with_peak_1():
    model, x = _model(), _images(n=6)
    cam, _ = grad_cam(model, model.stages[-1], x)
    assert (cam >= 0).all() and (cam <= 1 + 1e-6).all()
    peaks = cam.flatten(1).amax(1)
    nonzero = peaks > 0
    assert nonzero.any()
    torch.testing.assert_close(peaks[nonzero], torch.ones(int(nonzero.sum())))


def test_explicit_targets():
    model, x = _model(), _images()
    default, logits = grad_cam(model, model.stages[-1], x)
    predicted = logits.argmax(-1)
    same, _ = grad_cam(model, model.stages[-1], x, targets=predicted.tolist())
    torch.testing.assert_close(same, default, atol=0, rtol=0)
    other = ((predicted + 1) % 5).tolist()
    cam, _ = grad_cam(model, model.stages[-1], x, targets=torch.tensor(other))
    torch.testing.assert_close(cam, _manual_cam(model, x, other)[0], **TOL)
    assert not torch.allclose(cam, default)


def test_leaves_the_model_as_it_was():
    model, x = _model(), _images()
    model.train()
    layer = model.stages[-1]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cam, logits = grad_cam(model, layer, x)
    assert model.training  # training mode restored
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():  # eval mode inside: batch-norm statistics not updated
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(logits, model(x), **TOL)  # logits from eval mode
    assert not logits.requires_grad and not cam.requires_grad
    grad_cam(model, layer, x)
    assert not model.training  # and eval mode stays eval mode
    assert not x.requires_grad


def test_works_with_frozen_weights_and_under_no_grad():
    model, x = _model(), _images()
    expected, _ = grad_cam(model, model.stages[-1], x)
    model.requires_grad_(False)
    with torch.no_grad():
        cam, _ = grad_cam(model, model.stages[-1], x)
    torch.testing.assert_close(cam, expected, atol=0, rtol=0)


def test_errors():
    model, x = _model(), _images()
    stranger = _model(seed=1).stages[-1]
    with pytest.raises(ValueError, match="one of model's modules"):
        grad_cam(model, stranger, x)
    with pytest.raises(ValueError, match="targets"):
        grad_cam(model, model.stages[-1], x, targets=[0, 1, 2, 5])  # 5 classes: 0..4
    with pytest.raises(ValueError, match="targets"):
        grad_cam(model, model.stages[-1], x, targets=[0, 1, -1, 2])
    with pytest.raises(ValueError, match="targets"):
        grad_cam(model, model.stages[-1], x, targets=[0, 1])  # 4 images
    with pytest.raises(ValueError, match="images must be"):
        grad_cam(model, model.stages[-1], x[0])
    assert not model.stages[-1]._forward_hooks  # removed after an error too
    assert model.training

"""The attention explorer: controls in JupyterLab, a static figure when headless."""

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch

from course_lib import widgets

matplotlib.use("Agg")


def _attend(text):
    n = len(text)
    weights = torch.softmax(torch.randn(3, n, n, generator=torch.Generator().manual_seed(n)), dim=-1)
    return list(text), [weights, weights.flip(-1)]  # 2 layers of 3 heads


def test_headless_draws_every_layer_and_head(monkeypatch):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    plt.close("all")
    assert widgets.attention_explorer(_attend, ["abcd", "xyz"]) is None
    figure = plt.gcf()
    assert len(figure.axes) == 6
    assert figure.axes[4].get_title() == "layer 1, head 1"
    plt.close("all")


def test_interactive_explorer_has_the_controls(monkeypatch):
    monkeypatch.setenv("COURSE_HEADLESS", "0")
    box = widgets.attention_explorer(_attend, ["abcd", "xyz"])
    sentence, layer, head = box.children[0].children
    assert list(sentence.options) == ["abcd", "xyz"]
    assert (layer.min, layer.max, head.min, head.max) == (0, 1, 0, 2)
    assert box.children[1].__class__.__name__ == "Output"


def test_a_wrong_attend_function_is_a_clear_error():
    with pytest.raises(ValueError, match=r"a list of \(n_heads, 3, 3\) tensors, got shapes \[\(2, 3\)\]"):
        widgets.attention_explorer(lambda s: (list(s), [torch.zeros(2, 3)]), ["abc"], interactive=False)
    with pytest.raises(ValueError, match="sentences must not be empty"):
        widgets.attention_explorer(_attend, [])


def test_quantization_explorer_static_and_interactive(monkeypatch):
    weight = torch.randn(8, 80, generator=torch.Generator().manual_seed(0))
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    plt.close("all")
    assert widgets.quantization_explorer(weight) is None
    left, right = plt.gcf().axes
    assert left.get_title() == "4 bits, per channel, symmetric"  # opens where the steps show
    per_tensor, per_channel = (line.get_ydata() for line in right.get_lines()[:2])
    assert all(c >= t for c, t in zip(per_channel, per_tensor))
    plt.close("all")
    monkeypatch.setenv("COURSE_HEADLESS", "0")
    bits, channel, symmetric = widgets.quantization_explorer(weight).children[0].children
    assert (bits.min, bits.max, bits.value, channel.value, symmetric.value) == (2, 8, 4, True, True)
    assert widgets.quantization_explorer(weight, bits=3).children[0].children[0].value == 3
    for wrong in (1, 9, 4.0, True):
        with pytest.raises(ValueError, match=f"bits must be an int from 2 to 8, got {wrong!r}"):
            widgets.quantization_explorer(weight, bits=wrong)
    with pytest.raises(ValueError, match=r"weight must be a 2-D tensor \(out, in\)"):
        widgets.quantization_explorer(torch.zeros(3))

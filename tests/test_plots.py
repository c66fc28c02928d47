"""course_lib.plots: the figures chapter 12 adds draw what they promise (one bar per token, the most
probable on top, one line per series on a log axis) and refuse bad arguments with a message naming
the argument."""

import math

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.axes import Axes

from course_lib import plots

matplotlib.use("Agg")
pytestmark = pytest.mark.filterwarnings("error")  # a missing glyph or a layout warning fails the test

TOKENS = [" the", " Paris", "\n", ",", "\t"]
PROBS = [0.12, 0.41, 0.08, 0.05, 0.01]
SPEEDS = {"ours, KV cache": [95.0, 93.0, 88.0], "ours, no cache": [80.0, 40.0, 12.0],
          "transformers, KV cache": [70.0, 69.0, 66.0], "transformers, no cache": [60.0, 33.0, 10.0]}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.mark.parametrize("token, shown", [(" Paris", "␣Paris"), ("\n", "\\n"), ("\n\n", "\\n\\n"), ("\t", "\\t"),
                                          ("a b", "a␣b"), ("\x00", "\\x00"), ("café", "café"), ("", "''")])
def test_tokens_show_their_whitespace(token, shown):
    assert plots._show_token(token) == shown


@pytest.mark.parametrize("probs", [PROBS, torch.tensor(PROBS), torch.tensor(PROBS, dtype=torch.bfloat16)])
def test_next_token_probs_draws_one_bar_per_token_the_most_probable_on_top(probs):
    ax = plots.plot_next_token_probs(TOKENS, probs)
    assert isinstance(ax, Axes)
    (bars,) = ax.containers
    assert len(bars) == len(TOKENS)
    ax.figure.canvas.draw()
    labels = [t.get_text() for t in ax.get_yticklabels()]
    assert labels == ["␣Paris", "␣the", "\\n", ",", "\\t"]
    widths = [bar.get_width() for bar in bars]
    assert widths == sorted(widths, reverse=True)
    assert ax.yaxis_inverted()  # bar 0, the largest, at the top
    values = [f"{w:.3f}" for w in widths]
    assert [t.get_text() for t in ax.texts] == values and values[0] == "0.410"
    assert ax.get_title() == "the 5 most probable next tokens"
    assert ax.get_xlabel() == "probability"


def test_next_token_probs_draws_on_a_given_axes_with_a_title():
    fig, ax = plt.subplots()
    assert plots.plot_next_token_probs(["a"], [1.0], ax=ax, title="after 'The capital of France is'") is ax
    assert ax.get_title() == "after 'The capital of France is'"


@pytest.mark.parametrize("tokens, probs, name", [
    (TOKENS[:3], PROBS, "same length"),
    (TOKENS, [*PROBS[:4], 1.5], "probs"),
    (TOKENS, [*PROBS[:4], -0.1], "probs"),
    (TOKENS, [*PROBS[:4], math.nan], "probs"),
    (TOKENS, [0.5, 0.5, 0.5, 0.0, 0.0], "probs"),  # sums to 1.5: not one distribution
    (["a", "b"], torch.ones(2, 1) / 2, "probs"),
    ("ab", [0.5, 0.5], "tokens"),
    ([1, 2], [0.5, 0.5], "tokens"),
    ([], [], "must not be empty"),
])
def test_next_token_probs_refuses_bad_arguments(tokens, probs, name):
    with pytest.raises(ValueError, match=name):
        plots.plot_next_token_probs(tokens, probs)
    assert not plt.get_fignums()


def test_generation_speed_draws_one_line_per_series_on_a_log_axis():
    lengths = [16, 128, 1024]
    ax = plots.plot_generation_speed(lengths, SPEEDS)
    assert isinstance(ax, Axes)
    lines = ax.get_lines()
    assert [line.get_label() for line in lines] == list(SPEEDS)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == list(SPEEDS)
    for line, speeds in zip(lines, SPEEDS.values()):
        assert list(line.get_xdata()) == lengths and list(line.get_ydata()) == speeds
        assert line.get_marker() not in (None, "None", "")
    assert ax.get_xscale() == "log"
    assert "new tokens" in ax.get_xlabel() and "tokens / s" in ax.get_ylabel()
    ours_cache, ours_none, theirs_cache, theirs_none = lines
    assert ours_cache.get_color() == ours_none.get_color() != theirs_cache.get_color() == theirs_none.get_color()
    assert [line.get_linestyle() for line in lines] == ["-", "--", "-", "--"]  # "no cache" dashed


def test_generation_speed_accepts_tensors_and_a_given_axes():
    fig, ax = plt.subplots()
    assert plots.plot_generation_speed([8, 64], {"ours": torch.tensor([10.0, 9.0])}, ax=ax) is ax
    assert len(ax.get_lines()) == 1


@pytest.mark.parametrize("lengths, series, name", [
    ([16, 128], {"ours": [1.0, 2.0, 3.0]}, "series"),
    ([16, 128], {"ours": [1.0, 0.0]}, "series"),
    ([16, 128], {"ours": [1.0, math.nan]}, "series"),
    ([16, 128], {}, "series"),
    ([16, 0], {"ours": [1.0, 2.0]}, r"lengths\[1\]"),
    ([16, 12.5], {"ours": [1.0, 2.0]}, r"lengths\[1\]"),
    ([], {"ours": []}, "lengths"),
])
def test_generation_speed_refuses_bad_arguments(lengths, series, name):
    with pytest.raises(ValueError, match=name):
        plots.plot_generation_speed(lengths, series)
    assert not plt.get_fignums()

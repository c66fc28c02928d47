"""course_lib.diagrams: every diagram draws what it promises, keeps its text legible (inside the
figure, not on top of other text, inside its box) and refuses bad arguments with a message naming
the argument."""

import math
from itertools import combinations

import matplotlib
import matplotlib.pyplot as plt
import pytest
import torch
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Circle, FancyBboxPatch
from matplotlib.text import Text

from course_lib import diagrams

matplotlib.use("Agg")
pytestmark = pytest.mark.filterwarnings("error")  # a missing glyph or a layout warning fails the test

WORDS = [("tokenization", ["token", "##ization"]), ("the", ["the"]),
         ("unbelievably", ["un", "##bel", "##iev", "##ably"])]
CASES = {
    "course_map": diagrams.course_map,
    "transformer_block pre": lambda: diagrams.transformer_block("pre"),
    "transformer_block post": lambda: diagrams.transformer_block("post"),
    "transformer_blocks": diagrams.transformer_blocks,
    "attention_shapes": diagrams.attention_shapes,
    "attention_shapes with sizes": lambda: diagrams.attention_shapes(2, 8, 768, 12),
    "attention_masks": diagrams.attention_masks,
    "token_splits": lambda: diagrams.token_splits(WORDS),
    "gpt_architecture": diagrams.gpt_architecture,
    "lora_update": diagrams.lora_update,
    "lora_update with sizes": lambda: diagrams.lora_update(768, 3072, 8),
    "quantization_grid": diagrams.quantization_grid,
    "quantization_grid 8 bits": lambda: diagrams.quantization_grid(8, 2.5),
    "deployment_pipeline": diagrams.deployment_pipeline,
    "ddp_vs_fsdp": diagrams.ddp_vs_fsdp,
    "ddp_vs_fsdp 8 ranks": lambda: diagrams.ddp_vs_fsdp(8),
    "mlp_diagram": diagrams.mlp_diagram,
    "grouped_query_attention": diagrams.grouped_query_attention,
    "grouped_query_attention 32/8": lambda: diagrams.grouped_query_attention(32, 8),
    "grouped_query_attention 32/32": lambda: diagrams.grouped_query_attention(32, 32),
    "grouped_query_attention 7/1": lambda: diagrams.grouped_query_attention(7, 1),
    "grouped_query_attention 1/1": lambda: diagrams.grouped_query_attention(1, 1),
    "rotary_rotation": diagrams.rotary_rotation,
    "rotary_rotation small": lambda: diagrams.rotary_rotation(16, 10000.0, 16, (0, 3, 7)),
}


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def _drawn(fig: Figure) -> list[Text]:
    """The non-empty texts matplotlib draws (tick labels only on axes that show their axis)."""
    found = []
    for ax in fig.axes:
        found += [*ax.texts, ax.title]
        if ax.axison:
            for axis in (ax.xaxis, ax.yaxis):
                found += [axis.label, *axis.get_ticklabels()]
    found += fig.texts
    return [t for t in found if t.get_visible() and t.get_text().strip()]


def _labels(fig: Figure) -> list[str]:
    """Every text in the figure, whitespace (line breaks) collapsed to single spaces."""
    return [" ".join(t.get_text().split()) for t in fig.findobj(Text) if t.get_text().strip()]


def _assert_labels(fig: Figure, *expected: str) -> None:
    labels = _labels(fig)
    for label in expected:
        assert any(label in text for text in labels), f"no text contains {label!r}; texts: {labels}"


def _y(ax, label: str) -> list[float]:
    """The heights (data units) of the texts on ``ax`` that are exactly ``label``."""
    return [t.get_position()[1] for t in ax.texts if t.get_text() == label]


@pytest.mark.parametrize("make", CASES.values(), ids=CASES.keys())
def test_every_diagram_is_a_figure_with_legible_text(make):
    fig = make()
    assert isinstance(fig, Figure) and fig.axes
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [(t.get_text(), t.get_window_extent(renderer)) for t in _drawn(fig)]
    frame = fig.bbox
    for text, box in texts:  # nothing cut off
        inside = frame.x0 - 1 <= box.x0 and box.x1 <= frame.x1 + 1 and frame.y0 - 1 <= box.y0 and box.y1 <= frame.y1 + 1
        assert inside, f"{text!r} is cut off: {box.bounds} outside {frame.bounds}"
    for (text_a, a), (text_b, b) in combinations(texts, 2):  # no text on top of another
        overlap_x = min(a.x1, b.x1) - max(a.x0, b.x0)
        overlap_y = min(a.y1, b.y1) - max(a.y0, b.y0)
        assert overlap_x <= 1 or overlap_y <= 1, f"{text_a!r} overlaps {text_b!r}"
    boxes = [p.get_window_extent(renderer) for p in fig.findobj(FancyBboxPatch) if p.axes is not None]
    for text, t in texts:  # a label that sits in a box fits in it
        cx, cy = (t.x0 + t.x1) / 2, (t.y0 + t.y1) / 2
        around = [b for b in boxes if b.x0 < cx < b.x1 and b.y0 < cy < b.y1 and b.width < 0.9 * frame.width]
        assert not around or any(b.x0 - 1 <= t.x0 and t.x1 <= b.x1 + 1 and b.y0 - 1 <= t.y0 and t.y1 <= b.y1 + 1
                                 for b in around), f"{text!r} spills out of its box"


def test_course_map_shows_every_chapter_what_it_builds_and_the_bands():
    fig = diagrams.course_map()
    _assert_labels(fig, *(f"{n:02d} " for n in range(16)), "foundations", "the transformer", "adapt and ship",
                   "beyond", "you build: an autograd engine", "you build: LoRALinear", "you build: DDP by hand",
                   "(SmolLM2)", "(SFT, DPO)", "05 → 07", "you build: a Llama decoder + KV cache",
                   "you build: SFT labels + the DPO loss", "(CNN, ViT)", "you build: conv2d + a ViT", "(Whisper)",
                   "you build: a mel filterbank")
    assert _labels(fig).count("coming") == 0  # every chapter is written


def test_pre_norm_puts_the_layernorm_before_attention_and_post_norm_after_the_addition():
    def layernorm_above_attention(norm):
        (ax,) = diagrams.transformer_block(norm).axes
        (attention,) = _y(ax, "multi-head attention")
        assert len(_y(ax, "LayerNorm")) == 2 and len(_y(ax, "⊕")) == 2
        return max(_y(ax, "LayerNorm")) > attention  # the input is at the top

    assert layernorm_above_attention("pre")
    assert not layernorm_above_attention("post")
    (ax,) = diagrams.transformer_block("post").axes
    assert min(_y(ax, "⊕")) > min(_y(ax, "LayerNorm"))  # post-norm ends with a LayerNorm after the last ⊕
    _assert_labels(diagrams.transformer_block("pre"), "MLP: Linear → GELU → Linear", "dropout", "residual")


def test_transformer_blocks_draws_both_side_by_side():
    fig = diagrams.transformer_blocks()
    assert [ax.get_title() for ax in fig.axes] == ["pre-norm (GPT-2, our block)", "post-norm (BERT, 2017 Transformer)"]
    pre, post = fig.axes
    assert max(_y(pre, "LayerNorm")) > _y(pre, "multi-head attention")[0]
    assert max(_y(post, "LayerNorm")) < _y(post, "multi-head attention")[0]


def test_transformer_block_refuses_an_unknown_norm():
    with pytest.raises(ValueError, match=r"norm must be 'pre' or 'post', got 'mid'"):
        diagrams.transformer_block("mid")
    assert not plt.get_fignums()  # refused before a figure was made


def test_attention_shapes_prints_the_symbols_or_the_sizes():
    _assert_labels(diagrams.attention_shapes(), "(B, T, D)", "(B, H, T, D/H)", "(B, H, T, T)", "√(D/H)",
                   "softmax over keys", "each row sums to 1", "weights @ V", "merge heads", "output projection")
    _assert_labels(diagrams.attention_shapes(2, 8, 768, 12), "(2, 8, 768)", "(2, 12, 8, 64)", "(2, 12, 8, 8)", "√64")
    _assert_labels(diagrams.attention_shapes(tokens="L"), "(B, H, L, L)")


@pytest.mark.parametrize("kwargs, name", [(dict(d_model=10, heads=3), "d_model"), (dict(batch=0), "batch"),
                                          (dict(heads=""), "heads"), (dict(tokens=True), "tokens")])
def test_attention_shapes_refuses_bad_dimensions(kwargs, name):
    with pytest.raises(ValueError, match=name):
        diagrams.attention_shapes(**kwargs)


@pytest.mark.parametrize("n", [2, 6, 9])
def test_attention_masks_are_bidirectional_causal_and_padding(n):
    fig = diagrams.attention_masks(n)
    masks = {ax.get_title().split(":")[0].split("\n")[0]: torch.tensor(ax.findobj(AxesImage)[0].get_array().data)
             for ax in fig.axes}
    assert list(masks) == ["BERT", "GPT", "padding mask"]
    torch.testing.assert_close(masks["BERT"], torch.ones(n, n, dtype=torch.float64))
    torch.testing.assert_close(masks["GPT"], torch.ones(n, n, dtype=torch.float64).tril())
    padding = torch.ones(n, n, dtype=torch.float64)
    padding[:, -1 if n == 2 else -2:] = 0  # the default: 2 padded keys (1 where there are only 2 tokens)
    torch.testing.assert_close(masks["padding mask"], padding)
    for ax in fig.axes:
        assert ax.get_xlabel() == "key (attended to)" and ax.get_ylabel() == "query (attending)"


def test_attention_masks_without_padding_has_two_panels():
    assert len(diagrams.attention_masks(4, padding=0).axes) == 2


@pytest.mark.parametrize("kwargs, name", [(dict(n=1), "n"), (dict(n=2.5), "n"), (dict(n=6, padding=6), "padding"),
                                          (dict(padding=-1), "padding")])
def test_attention_masks_refuses_bad_sizes(kwargs, name):
    with pytest.raises(ValueError, match=name):
        diagrams.attention_masks(**kwargs)


def test_token_splits_draws_every_word_and_every_piece():
    words = [*WORDS, ("tokens", ["token", "##s"])]  # "token" twice: once per word
    labels = _labels(diagrams.token_splits(words, title="WordPiece"))
    for word, pieces in words:
        assert word in labels
        for piece in set(pieces):
            expected = sum(p == piece for _, ps in words for p in ps) + sum(w == piece for w, _ in words)
            assert labels.count(piece) == expected, piece  # ("the" is a word and a piece)
    assert "2 tokens" in labels and "1 token" in labels and "4 tokens" in labels and "WordPiece" in labels


def test_token_splits_draws_other_tokenizers_markers():
    pieces = ["Ġhello", "▁wor", "ld"]  # GPT-2's and SentencePiece's word-start markers: no glyph may be missing
    fig = diagrams.token_splits([(" hello", pieces[:1]), ("world", pieces[1:])])
    fig.canvas.draw()
    _assert_labels(fig, *pieces)


@pytest.mark.parametrize("words, error, message", [
    ("tokenization", TypeError, "words must be a sequence"),
    ([], ValueError, "words must contain at least one"),
    ([("token",)], TypeError, r"words\[0\] must be a \(word, pieces\) pair"),
    ([(3, ["3"])], TypeError, r"words\[0\]: the word must be a string"),
    ([("a", ["a"]), ("the", "the")], TypeError, r"words\[1\]: the pieces of 'the' must be a list of strings"),
    ([("the", [])], ValueError, r"words\[0\]: the pieces of 'the' must be a non-empty list"),
    ([("the", ["th", 3])], TypeError, r"words\[0\]: the pieces of 'the' must all be non-empty strings"),
])
def test_token_splits_refuses_malformed_words(words, error, message):
    with pytest.raises(error, match=message):
        diagrams.token_splits(words)


def test_gpt_architecture_labels_the_stack_and_the_tied_weights():
    fig = diagrams.gpt_architecture()
    _assert_labels(fig, "token ids", "token embedding", "position embedding", "N × causal Transformer block",
                   "pre-norm", "final LayerNorm", "LM head", "logits", "(B, T, vocab)", "tied weights",
                   "next-token loss", "sampling")
    (ax,) = fig.axes
    dashed = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert len(dashed) == 1  # the tied-weights connector


def test_lora_update_labels_the_parts_and_counts_the_trainable_parameters():
    _assert_labels(diagrams.lora_update(), "frozen", "random init", "zeros at init", "× α/r",
                   "h = W x + (α/r)·B A x", "trainable: r·(d_in + d_out) = r·(d + k)")
    _assert_labels(diagrams.lora_update(768, 3072, 8), "8·(768 + 3072) = 30,720", "768·3072 = 2,359,296",
                   "(8 × 768)", "(3072 × 8)")


def test_lora_update_refuses_a_rank_above_the_dimensions():
    with pytest.raises(ValueError, match=r"r must be <= min\(d_in, d_out\)"):
        diagrams.lora_update(16, 64, 32)
    with pytest.raises(ValueError, match="d_in"):
        diagrams.lora_update(d_in=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantization_grid_has_2_to_the_bits_minus_1_symmetric_points(bits):
    fig = diagrams.quantization_grid(bits, x_max=2.0)
    (grid,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "grid points"]
    points = torch.tensor(grid.get_xdata(), dtype=torch.float64)
    q_max = 2 ** (bits - 1) - 1
    assert len(points) == 2**bits - 1
    torch.testing.assert_close(points, torch.arange(-q_max, q_max + 1, dtype=torch.float64) * 2.0 / q_max)
    _assert_labels(fig, "clipped", f"2 / {q_max}")


def test_quantization_grid_with_3_bits_has_7_points_and_rounds_to_nearest():
    fig = diagrams.quantization_grid()
    (grid,) = [line for line in fig.axes[0].get_lines() if line.get_label() == "grid points"]
    assert len(grid.get_xdata()) == 7
    _assert_labels(fig, "x = 0.85 → 3·s = 1", "x = -0.4 → -1·s = -0.3333", "x = 1.25 → clipped: 3·s = 1")


@pytest.mark.parametrize("kwargs, name", [(dict(bits=1), "bits"), (dict(bits=9), "bits"), (dict(bits=3.0), "bits"),
                                          (dict(bits=True), "bits"), (dict(x_max=0), "x_max"),
                                          (dict(x_max=math.nan), "x_max"), (dict(x_max="1"), "x_max")])
def test_quantization_grid_refuses_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        diagrams.quantization_grid(**kwargs)


def test_deployment_pipeline_goes_from_export_to_a_load_test():
    _assert_labels(diagrams.deployment_pipeline(), "trained model (PyTorch)", "torch.export (.pt2)", "ONNX (.onnx)",
                   "ONNX Runtime", "ONNX Runtime int8", "FastAPI service", "/predict", "pydantic request schema",
                   "422 on bad input", "p50 / p95 / p99")


@pytest.mark.parametrize("world", [2, 4])
def test_ddp_vs_fsdp_shows_the_collectives_and_the_memory_per_rank(world):
    fig = diagrams.ddp_vs_fsdp(world)
    assert len(fig.axes) == 2
    assert fig.axes[0].get_title().startswith("DDP") and fig.axes[1].get_title().startswith("FSDP")
    _assert_labels(fig, "all-reduce", "all-gather parameters", "reduce-scatter", f"rank {world - 1}",
                   "16 bytes per parameter on every rank", f"16 / {world} = {16 // world} bytes per parameter",
                   "AdamW step (identical)", f"AdamW step on shard {world - 1}")


@pytest.mark.parametrize("world", [0, 9, 2.0, "2"])
def test_ddp_vs_fsdp_refuses_a_bad_world_size(world):
    with pytest.raises(ValueError, match="world"):
        diagrams.ddp_vs_fsdp(world)


@pytest.mark.parametrize("sizes, circles, dots", [((64, 128, 10), 7 + 7 + 7, 3), ((3, 5, 2), 10, 0),
                                                  ((784, 8, 4, 10), 7 + 8 + 4 + 7, 2)])
def test_mlp_diagram_draws_at_most_8_neurons_per_layer(sizes, circles, dots):
    fig = diagrams.mlp_diagram(sizes)
    (ax,) = fig.axes
    assert len([p for p in ax.patches if isinstance(p, Circle)]) == circles
    assert _labels(fig).count("⋮") == dots
    _assert_labels(fig, f"{sizes[0]} inputs", f"{sizes[-1]} outputs", f"Linear {sizes[0]} → {sizes[1]}",
                   "zero_grad → forward → loss → backward → step", "model.eval() for validation",
                   f"= {sum(a * b + b for a, b in zip(sizes, sizes[1:])):,}")
    assert _labels(fig).count("ReLU") == len(sizes) - 2


@pytest.mark.parametrize("sizes, name", [((64,), "sizes"), ((64, 0), r"sizes\[1\]"), ("64", "sizes"),
                                         ((1, 2, 3, 4, 5, 6), "sizes")])
def test_mlp_diagram_refuses_bad_sizes(sizes, name):
    with pytest.raises(ValueError, match=name):
        diagrams.mlp_diagram(sizes)


def _head_boxes(fig: Figure, kind: str) -> list[FancyBboxPatch]:
    """The boxes of the query or kv heads (``kind`` "query" or "kv") of grouped_query_attention, by index."""
    boxes = {p.get_gid(): p for p in fig.findobj(FancyBboxPatch) if (p.get_gid() or "").startswith(f"{kind} head ")}
    return [boxes[f"{kind} head {i}"] for i in range(len(boxes))]


@pytest.mark.parametrize("num_heads, num_kv_heads", [(9, 3), (32, 8), (8, 8), (7, 1)])
def test_grouped_query_attention_links_each_query_head_to_the_kv_head_repeat_kv_gives_it(num_heads, num_kv_heads):
    from course_lib.llama import repeat_kv

    fig = diagrams.grouped_query_attention(num_heads, num_kv_heads)
    main = fig.axes[0]
    queries, kvs = _head_boxes(fig, "query"), _head_boxes(fig, "kv")
    assert (len(queries), len(kvs)) == (num_heads, num_kv_heads)
    centre = [[p.get_x() + p.get_width() / 2 for p in boxes] for boxes in (queries, kvs)]
    links = {}  # query head -> the kv head its line ends at
    for line in main.get_lines():
        (x0, x1) = line.get_xdata()
        links[min(range(num_heads), key=lambda i: abs(centre[0][i] - x0))] = min(
            range(num_kv_heads), key=lambda j: abs(centre[1][j] - x1))
    kv_index = torch.arange(num_kv_heads).view(1, num_kv_heads, 1, 1)
    expected = repeat_kv(kv_index, num_heads // num_kv_heads).flatten().tolist()
    assert [links[i] for i in range(num_heads)] == expected
    for i, box in enumerate(queries):  # coloured by group: the same fill as the kv head's group
        assert box.get_facecolor() == queries[expected[i] * (num_heads // num_kv_heads)].get_facecolor()
    saving = num_heads / num_kv_heads
    _assert_labels(fig, f"{num_heads} / {num_kv_heads} = {saving:g}× smaller", "multi-head (MHA)",
                   "KV cache 1× (the baseline)")
    if num_kv_heads != num_heads:
        _assert_labels(fig, "multi-query (MQA)", f"KV cache {num_heads:g}× smaller")


def test_grouped_query_attention_defaults_are_smollm2s_and_compare_the_three_variants():
    fig = diagrams.grouped_query_attention()
    assert len(fig.axes) == 2
    assert "9 query heads share 3 key/value heads" in fig.axes[0].get_title()
    _assert_labels(fig, "Q0", "Q8", "K0, V0", "K2, V2", "repeat_kv(k, 3)", "9 / 3 = 3× smaller",
                   "multi-head (MHA)", "grouped-query (GQA) (left)", "multi-query (MQA)", "KV cache 3× smaller",
                   "KV cache 9× smaller", "query heads 0–2 read kv head 0")


@pytest.mark.parametrize("kwargs, name", [(dict(num_heads=0), "num_heads"), (dict(num_heads=9.0), "num_heads"),
                                          (dict(num_heads=True), "num_heads"), (dict(num_heads=64, num_kv_heads=8),
                                                                                "num_heads"),
                                          (dict(num_kv_heads=0), "num_kv_heads"), (dict(num_kv_heads=2), "num_kv_heads"),
                                          (dict(num_heads=4, num_kv_heads=8), "num_kv_heads")])
def test_grouped_query_attention_refuses_bad_head_counts(kwargs, name):
    with pytest.raises(ValueError, match=name):
        diagrams.grouped_query_attention(**kwargs)
    assert not plt.get_fignums()


def test_rotary_rotation_turns_each_pair_by_position_times_its_frequency():
    from course_lib.llama import rotary_frequencies

    fig = diagrams.rotary_rotation()  # head_dim 64, theta 100000, 8 positions, pairs 0, 8, 31
    assert len(fig.axes) == 4
    frequencies = rotary_frequencies(64, 100000.0).double()
    for ax, pair, speed in zip(fig.axes, (0, 8, 31), ("1 rad", "0.0562 rad", "1.43e-05 rad")):
        assert f"pair {pair}: (x[{pair}], x[{pair + 32}])" in ax.get_title() and speed in ax.get_title()
        (points,) = ax.collections
        xy = torch.tensor(points.get_offsets(), dtype=torch.float64)
        angles = torch.arange(8, dtype=torch.float64) * frequencies[pair]
        torch.testing.assert_close(xy, torch.stack((angles.cos(), angles.sin()), 1), atol=1e-5, rtol=0)
    slow = torch.tensor(fig.axes[2].collections[0].get_offsets())
    assert (slow - slow[0]).abs().max() < 1e-3  # the slowest pair barely moves in 8 positions
    _assert_labels(fig, "0–7", "by position 7: 7 rad", "(401°)")


def test_rotary_rotation_scores_depend_only_on_the_distance():
    ax = diagrams.rotary_rotation().axes[-1]
    series = {line.get_label(): line for line in ax.get_lines() if line.get_label().startswith("m = ")}
    assert list(series) == ["m = 8", "m = 24", "m = 48"]
    by_distance: dict[int, list[float]] = {}
    for m, line in zip((8, 24, 48), series.values()):
        distances = [int(d) for d in line.get_xdata()]
        assert sorted(distances) == list(range(m + 1))  # the keys n = 0..m of a causal query at m
        for d, score in zip(distances, line.get_ydata()):
            by_distance.setdefault(d, []).append(float(score))
    assert len(by_distance[0]) == 3 and len(by_distance[20]) == 2
    for d, scores in by_distance.items():  # every m gives the same q·k at the same distance: one curve
        assert max(scores) - min(scores) < 1e-3 * max(abs(s) for s in scores), (d, scores)
    curve = [by_distance[d][0] for d in sorted(by_distance)]
    assert max(curve) - min(curve) > 1  # and it does change with the distance
    assert "m − n" in ax.get_xlabel()


@pytest.mark.parametrize("kwargs, name", [(dict(head_dim=63), "head_dim"), (dict(head_dim=0), "head_dim"),
                                          (dict(theta=0), "theta"), (dict(theta=math.inf), "theta"),
                                          (dict(theta="1e4"), "theta"), (dict(positions=0), "positions"),
                                          (dict(positions=17), "positions"), (dict(pairs=()), "pairs"),
                                          (dict(pairs="0"), "pairs"), (dict(pairs=(0, 32)), r"pairs\[1\]"),
                                          (dict(pairs=(-1,)), r"pairs\[0\]"), (dict(pairs=(1, 1)), "pairs"),
                                          (dict(pairs=(0, 1, 2, 3)), "pairs")])
def test_rotary_rotation_refuses_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        diagrams.rotary_rotation(**kwargs)
    assert not plt.get_fignums()


def test_the_readme_course_map_is_current():
    """README.md shows docs/course_map.svg; it must be what course_map() draws now."""
    from course_lib.runtime import repo_root

    stored = (repo_root() / "docs" / "course_map.svg").read_bytes()
    assert stored == diagrams.course_map_svg(), (
        "docs/course_map.svg is stale: python -c \"from course_lib import diagrams; "
        "open('docs/course_map.svg', 'wb').write(diagrams.course_map_svg())\"")

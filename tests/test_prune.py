"""course_lib.prune against torch.nn.utils.prune, and structured pruning that shrinks BERT exactly."""


import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from transformers import BertConfig, BertForSequenceClassification

from course_lib import prune

TINY = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, num_labels=2)


def _model(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(TINY).eval()


def _inputs(seed=1):
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    return {"input_ids": torch.randint(0, 100, (3, 12), generator=g), "attention_mask": mask}


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_magnitude_mask_matches_l1_unstructured(amount):
    torch.manual_seed(0)
    layer = nn.Linear(40, 30)
    ours = prune.magnitude_mask(layer.weight, amount)
    torch_prune.l1_unstructured(layer, "weight", amount=amount)
    assert torch.equal(ours, layer.weight_mask)
    assert int((ours == 0).sum()) == round(amount * 1200)


@pytest.mark.parametrize("amount", [0.2, 0.6])
def test_global_masks_match_global_unstructured(amount):
    torch.manual_seed(1)
    layers = [nn.Linear(20, 10), nn.Linear(10, 30)]
    with torch.no_grad():
        layers[1].weight.mul_(0.1)  # a layer of small weights loses more of them under one threshold
    ours = prune.global_magnitude_masks({"a": layers[0].weight, "b": layers[1].weight}, amount)
    torch_prune.global_unstructured([(m, "weight") for m in layers], pruning_method=torch_prune.L1Unstructured, amount=amount)
    assert torch.equal(ours["a"], layers[0].weight_mask) and torch.equal(ours["b"], layers[1].weight_mask)
    assert (ours["b"] == 0).float().mean() > (ours["a"] == 0).float().mean()


@pytest.mark.parametrize("scope", ["layer", "global"])
def test_prune_model_reaches_the_exact_sparsity_and_spares_the_head(scope):
    model = prune.prune_model(_model(), 0.4, scope=scope)
    report = prune.sparsity_report(model, skip=("classifier",))
    total = report[-1]
    assert total["layer"] == "all linear layers"
    if scope == "layer":
        assert all(row["zeros"] == round(0.4 * row["weights"]) for row in report[:-1])
        assert total["zeros"] == sum(row["zeros"] for row in report[:-1])
    else:
        assert total["zeros"] == round(0.4 * total["weights"])
    assert (model.classifier.weight != 0).all()


def test_pruning_with_torch_then_remove_makes_it_permanent():
    model = _model()
    layers = list(prune.linear_weights(model).values())
    for m in layers:
        torch_prune.l1_unstructured(m, "weight", amount=0.5)
        torch_prune.remove(m, "weight")
    assert all(not hasattr(m, "weight_mask") and isinstance(m.weight, nn.Parameter) for m in layers)
    assert prune.sparsity_report(model, skip=("classifier",))[-1]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_ffn_neurons_with_zero_weights_are_removed_without_changing_outputs():
    model, inputs = _model(), _inputs()
    dead = {0: [3, 10, 40], 1: [0, 1, 63]}
    with torch.no_grad():
        for i, neurons in dead.items():
            layer = model.bert.encoder.layer[i]
            layer.intermediate.dense.weight[neurons] = 0
            layer.intermediate.dense.bias[neurons] = 0  # GELU(0) = 0: these neurons contribute nothing
        expected = model(**inputs).logits
    prune.prune_ffn_neurons(model, 3 / 64)
    for layer in model.bert.encoder.layer:
        assert layer.intermediate.dense.weight.shape == (61, 32) and layer.output.dense.weight.shape == (32, 61)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=1e-6)


def test_heads_with_zero_values_are_removed_without_changing_outputs():
    model, inputs = _model(), _inputs()
    size = TINY.hidden_size // TINY.num_attention_heads
    heads = {0: [1], 1: [0, 3]}
    with torch.no_grad():
        for i, chosen in heads.items():
            value = model.bert.encoder.layer[i].attention.self.value
            for h in chosen:
                value.weight[h * size:(h + 1) * size] = 0
                value.bias[h * size:(h + 1) * size] = 0
        expected = model(**inputs).logits
    assert prune.lowest_heads(prune.head_scores(model), 3 / 8) == heads
    prune.prune_heads(model, heads)
    assert model.bert.encoder.layer[0].attention.self.query.weight.shape == (24, 32)
    assert model.bert.encoder.layer[1].attention.output.dense.weight.shape == (32, 16)
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, expected, rtol=0, atol=1e-6)


def test_lowest_heads_never_empties_a_layer():
    scores = [torch.tensor([0.1, 0.2, 0.3, 0.4]), torch.tensor([5.0, 6.0, 7.0, 8.0])]
    assert prune.lowest_heads(scores, 0.5) == {0: [0, 1, 2], 1: [0]}


@pytest.mark.parametrize("call, error, message", [
    (lambda m: prune.prune_model(m, 1.5), ValueError, r"amount must be a fraction in \[0, 1\], got 1.5"),
    (lambda m: prune.prune_model(m, 0.5, scope="row"), ValueError, "scope must be 'layer' or 'global'"),
    (lambda m: prune.prune_heads(m, {0: [0, 1, 2, 3]}), ValueError, "cannot remove all 4 heads of layer 0"),
    (lambda m: prune.prune_heads(m, {5: [0]}), ValueError, "layer index 5 is out of range for 2 layers"),
    (lambda m: prune.prune_heads(m, {0: [4]}), ValueError, r"layer 0 has heads 0..3, got \[4\]"),
    (lambda m: prune.prune_ffn_neurons(nn.Linear(2, 2), 0.5), TypeError, "expected a BERT model, transformers' or course_lib.bert's"),
    (lambda m: prune.sparsity_report(nn.ReLU()), ValueError, "no linear layers"),
])
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call(_model())


def test_structured_pruning_really_shrinks_the_model():
    model = _model()
    before = sum(p.numel() for p in model.parameters())
    pruned = prune.prune_ffn_neurons(model, 0.5)
    after = sum(p.numel() for p in pruned.parameters())
    assert before - after == 2 * (32 * 32 + 32 + 32 * 32)  # per layer: 32 rows + biases in, 32 columns out

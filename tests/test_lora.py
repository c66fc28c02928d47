"""course_lib.lora against peft, and the properties LoRA promises (zero-init identity, exact merge)."""

import copy

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from course_lib import lora

TINY = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=64, num_labels=2)


def _model(seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(TINY).eval()


def _inputs(seed=1, batch=3, length=10):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, TINY.vocab_size, (batch, length), generator=g)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, 6:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _randomise_b(model, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora.lora_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=g) * 0.1)


def test_layer_matches_its_formula_and_starts_as_the_identity():
    torch.manual_seed(0)
    base = nn.Linear(16, 8)
    layer = lora.LoRALinear(copy.deepcopy(base), r=4, alpha=8)
    x = torch.randn(5, 16)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)  # B = 0: exactly the base layer
    with torch.no_grad():
        layer.lora_B.normal_()
    expected = x @ base.weight.T + base.bias + 2.0 * (x @ layer.lora_A.T @ layer.lora_B.T)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert layer.base_layer.weight.requires_grad is False and base.weight.requires_grad  # the copy is frozen, not the original


def test_inject_replaces_only_the_targets_and_keeps_outputs():
    model, inputs = _model(), _inputs()
    before = model(**inputs).logits
    names = lora.inject_lora(model, ["query", "value"], r=4, alpha=8)
    assert names == [f"bert.encoder.layer.{i}.attention.self.{m}" for i in range(2) for m in ("query", "value")]
    torch.testing.assert_close(model(**inputs).logits, before, rtol=0, atol=0)
    regex = lora.inject_lora(_model(), r".*\.intermediate\.dense", r=2)
    assert regex == ["bert.encoder.layer.0.intermediate.dense", "bert.encoder.layer.1.intermediate.dense"]


def test_only_adapter_and_named_head_parameters_train():
    model = _model()
    lora.inject_lora(model, ["query", "value"], r=4)
    lora.mark_only_lora_trainable(model, also=["classifier"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"bert.encoder.layer.{i}.attention.self.{m}.lora_{ab}" for i in range(2)
                         for m in ("query", "value") for ab in "AB"} | {"classifier.weight", "classifier.bias"}
    count, total = lora.parameter_counts(model)
    assert count == 2 * 2 * 4 * (32 + 32) + 32 * 2 + 2
    assert total == sum(p.numel() for p in model.parameters())
    loss = model(**_inputs(), labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    assert all((p.grad is not None) == p.requires_grad for p in model.parameters())


def test_merge_and_unmerge_are_exact_and_unload_gives_plain_linear_layers():
    model, inputs = _model(), _inputs()
    lora.inject_lora(model, ["query", "value", "output.dense"], r=4, alpha=16)
    _randomise_b(model)
    weights = {n: m.base_layer.weight.clone() for n, m in lora.lora_layers(model).items()}
    unmerged = model(**inputs).logits
    lora.merge_lora(model)
    torch.testing.assert_close(model(**inputs).logits, unmerged, rtol=1e-5, atol=1e-5)
    lora.merge_lora(model)  # merging twice must not add the update twice
    torch.testing.assert_close(model(**inputs).logits, unmerged, rtol=1e-5, atol=1e-5)
    lora.unmerge_lora(model)
    for name, layer in lora.lora_layers(model).items():
        torch.testing.assert_close(layer.base_layer.weight, weights[name], rtol=0, atol=1e-6)
    lora.unload_lora(model)
    assert not lora.lora_layers(model)
    assert type(model.bert.encoder.layer[0].attention.self.query) is nn.Linear
    torch.testing.assert_close(model(**inputs).logits, unmerged, rtol=1e-5, atol=1e-5)


def test_parity_with_peft():
    from peft import LoraConfig, get_peft_model

    inputs = _inputs()
    config = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"],
                        modules_to_save=["classifier"])
    theirs = get_peft_model(_model(), config).eval()
    with torch.no_grad():
        for name, p in theirs.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.1)
    ours = _model()
    lora.inject_lora(ours, ["query", "value"], r=8, alpha=16)
    lora.mark_only_lora_trainable(ours, also=["classifier"])
    missing, unexpected = ours.load_state_dict(lora.from_peft_state_dict(theirs.state_dict()), strict=False)
    assert not unexpected and all(".lora_" not in k for k in missing)
    torch.testing.assert_close(ours(**inputs).logits, theirs(**inputs).logits, rtol=0, atol=1e-5)
    assert lora.parameter_counts(ours)[0] == theirs.get_nb_trainable_parameters()[0]
    merged = theirs.merge_and_unload()
    lora.merge_lora(ours)
    torch.testing.assert_close(ours(**inputs).logits, merged(**inputs).logits, rtol=0, atol=1e-5)


def test_adapter_round_trip_through_files(tmp_path):
    model, inputs = _model(), _inputs()
    lora.inject_lora(model, ["query", "value"], r=4, alpha=8)
    lora.mark_only_lora_trainable(model, also=["classifier"])
    _randomise_b(model)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    expected = model(**inputs).logits
    lora.save_adapter(model, tmp_path, ["query", "value"])
    saved = sorted(p.name for p in tmp_path.iterdir())
    assert saved == [lora.ADAPTER_CONFIG, lora.ADAPTER_WEIGHTS]
    assert (tmp_path / lora.ADAPTER_WEIGHTS).stat().st_size < 20_000  # the adapter, not the model
    restored = lora.load_adapter(_model(), tmp_path).eval()
    torch.testing.assert_close(restored(**inputs).logits, expected, rtol=0, atol=0)
    assert lora.parameter_counts(restored) == lora.parameter_counts(model)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda m: lora.inject_lora(m, ["nothing_like_this"]), ValueError, "matches no module; linear layers are named like"),
        (lambda m: lora.inject_lora(m, r"bert\.embeddings\.word_embeddings"), TypeError, "a Embedding; LoRA here wraps nn.Linear only"),
        (lambda m: lora.inject_lora(m, []), TypeError, "target_modules must be"),
        (lambda m: lora.inject_lora(m, ["query"], r=0), ValueError, "r must be an int >= 1, got 0"),
        (lambda m: lora.mark_only_lora_trainable(m), ValueError, "no LoRA layers"),
        (lambda m: lora.LoRALinear(nn.Conv1d(2, 2, 1)), TypeError, "base must be an nn.Linear, got Conv1d"),
    ],
)
def test_bad_input_is_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call(_model())


def test_a_failed_load_leaves_a_clear_message(tmp_path):
    model = _model()
    lora.inject_lora(model, ["query"], r=4)
    lora.mark_only_lora_trainable(model)
    lora.save_adapter(model, tmp_path, ["query"])
    other = BertForSequenceClassification(BertConfig(**{**TINY.to_dict(), "hidden_size": 48})).eval()
    with pytest.raises(ValueError, match="does not fit this model"):
        lora.load_adapter(other, tmp_path)

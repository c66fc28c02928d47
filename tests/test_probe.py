"""The mean-pooled probe against the bundled MiniLM run by transformers, mean-pooled by hand."""

import pytest
import torch

from course_lib import finetune, probe
from course_lib.pretrained import load_tokenizer


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return finetune.load_classifier_model().eval()


def test_logits_are_a_linear_layer_on_the_mean_of_real_tokens(classifier):
    tokenizer = load_tokenizer()
    model = probe.MeanPooledProbe(classifier.bert, classifier.config.hidden_size)
    batch = tokenizer(["A fine film.", "Too long, and far too pleased with itself."], padding=True, return_tensors="pt")
    logits = model(**batch)
    with torch.no_grad():
        hidden = classifier.bert(**batch).last_hidden_state
    # by hand: the first sentence is padded, so its mean must cover its real tokens only
    real = batch["attention_mask"][0].bool()
    expected_first = model.classifier(hidden[0, real].mean(0))
    torch.testing.assert_close(logits[0], expected_first, rtol=1e-5, atol=1e-6)
    # the same sentence alone (no padding) gives the same logits
    alone = tokenizer(["A fine film."], return_tensors="pt")
    torch.testing.assert_close(model(**alone)[0], logits[0], rtol=1e-4, atol=1e-5)


def test_only_the_head_trains_and_dropout_stays_off(classifier):
    tokenizer = load_tokenizer()
    model = probe.MeanPooledProbe(classifier.bert, classifier.config.hidden_size).train()
    assert [name for name, p in model.named_parameters() if p.requires_grad] == ["classifier.weight", "classifier.bias"]
    assert not model.encoder.training and model.classifier.training
    batch = tokenizer(["Not bad at all."], return_tensors="pt")
    torch.testing.assert_close(model(**batch), model(**batch))  # no dropout in the frozen features
    torch.nn.functional.cross_entropy(model(**batch), torch.tensor([1])).backward()
    assert model.classifier.weight.grad is not None
    assert all(p.grad is None for p in model.encoder.parameters())


def test_bad_sizes_are_refused(classifier):
    with pytest.raises(ValueError, match="hidden_size must be an int >= 1, got 0"):
        probe.MeanPooledProbe(classifier.bert, 0)
    with pytest.raises(ValueError, match="num_labels must be an int >= 2, got 1"):
        probe.MeanPooledProbe(classifier.bert, 384, num_labels=1)

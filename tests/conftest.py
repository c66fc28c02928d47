"""Fixtures shared by several test modules."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from course_lib import finetune
from course_lib.pretrained import load_tokenizer


@pytest.fixture(scope="session")
def tiny_classifier(tmp_path_factory):
    """A tiny, untrained classifier saved as chapter 07 saves its model (bundled tokenizer, readable
    label names, training.json): fast to load and to serve."""
    folder = tmp_path_factory.mktemp("classifier")
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2, id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    finetune.save_classifier(BertForSequenceClassification(config).eval(), tokenizer, folder, {"test_accuracy": 0.5})
    return folder

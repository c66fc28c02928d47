"""course_lib.finetune: the classification data pipeline, the metrics, both training routes on a
tiny BERT, and the saved classifier later chapters load."""

import json

import numpy as np
import pytest
import torch
from datasets import Dataset, DatasetDict
from transformers import BertConfig, BertForSequenceClassification, EvalPrediction

from course_lib import finetune
from course_lib.pretrained import load_tokenizer

SENTENCES = ["a gripping , beautifully acted film .", "dull .", "the plot never comes alive , and the jokes fall flat",
             "one of the year 's best", "i wanted my two hours back .", "warm , funny and wise"]
LABELS = [1, 0, 0, 1, 0, 1]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


def _data(n_copies=1):
    rows = {"text": SENTENCES * n_copies, "label": LABELS * n_copies, "rating": [1.0] * 6 * n_copies}
    return DatasetDict(train=Dataset.from_dict(rows), validation=Dataset.from_dict(rows))


def _tiny_model(vocab_size, seed=0):
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(config)


# ---------------------------------------------------------------------------------------------
# Data pipeline


def test_tokenize_keeps_model_inputs_and_labels_unpadded(tokenizer):
    tokenized = finetune.tokenize(_data(), tokenizer, max_length=8)
    split = tokenized["train"]
    assert sorted(split.column_names) == ["attention_mask", "input_ids", "labels", "token_type_ids"]
    assert split["labels"] == LABELS
    lengths = [len(ids) for ids in split["input_ids"]]
    assert lengths[1] == 4 and max(lengths) == 8  # "dull ." unpadded; long sentences truncated
    assert all(ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id for ids in split["input_ids"])
    assert tokenizer.decode(split["input_ids"][1]) == "[CLS] dull. [SEP]"


def test_loaders_pad_each_batch_to_its_longest_sentence(tokenizer):
    loaders = finetune.make_loaders(finetune.tokenize(_data(), tokenizer), tokenizer, batch_size=2, eval_batch_size=3)
    batch = next(iter(loaders["validation"]))
    assert batch["input_ids"].shape == (3, 13) and batch["labels"].tolist() == LABELS[:3]
    assert batch["attention_mask"].sum(1).tolist() == [9, 4, 13]
    assert (batch["input_ids"][1, 4:] == tokenizer.pad_token_id).all()
    first = [b["labels"].tolist() for b in loaders["train"]]
    again = [b["labels"].tolist() for b in finetune.make_loaders(finetune.tokenize(_data(), tokenizer), tokenizer, batch_size=2)["train"]]
    assert first == again and sorted(sum(first, [])) == sorted(LABELS)


@pytest.mark.parametrize("call, message", [
    (lambda t: finetune.tokenize(_data(), t, text_column="sentence"), "no column 'sentence'; its columns are"),
    (lambda t: finetune.tokenize(_data(), t, max_length=1), "max_length must be an int >= 2, got 1"),
    (lambda t: finetune.make_loaders({}, t, batch_size=0), "batch_size must be an int >= 1, got 0"),
])
def test_pipeline_rejects_bad_input(tokenizer, call, message):
    with pytest.raises(ValueError, match=message):
        call(tokenizer)


def test_label_names_are_in_the_model_config():
    model = finetune.load_classifier_model()
    assert model.config.id2label == {0: "negative", 1: "positive"}
    assert model.config.label2id == {"negative": 0, "positive": 1}


# ---------------------------------------------------------------------------------------------
# Metrics


def test_metrics_on_a_hand_made_example():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0], [0.5, 0.2]])  # predicts 0, 1, 0, 0
    labels = torch.tensor([0, 1, 1, 1])
    metrics = finetune.classification_metrics(logits, labels)
    # class 0: P = 1/3, R = 1, F1 = 0.5; class 1: P = 1, R = 1/3, F1 = 0.5
    assert metrics == pytest.approx({"accuracy": 0.5, "f1": 0.5})
    from_trainer = finetune.compute_metrics(EvalPrediction(predictions=logits.numpy(), label_ids=labels.numpy()))
    assert from_trainer == pytest.approx(metrics)
    with pytest.raises(ValueError, match=r"logits must be \(N, C\)"):
        finetune.classification_metrics(torch.zeros(4), labels)


def test_weight_decay_skips_biases_and_layer_norms():
    model = _tiny_model(50)
    groups = finetune.adamw(model, 1e-3, 0.05).param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in groups[0]["params"]}
    skipped = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.05 and groups[1]["weight_decay"] == 0.0
    assert all(n.endswith("bias") or "LayerNorm" in n for n in skipped)
    assert "bert.encoder.layer.0.attention.self.query.weight" in decayed
    assert len(decayed) + len(skipped) == len(names)


def test_confident_errors_and_the_lexicon_baseline():
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.05, 0.95]])
    errors = finetune.confident_errors(["a", "b", "c", "d"], probabilities, torch.tensor([1, 1, 1, 0]), k=5)
    assert errors == [{"text": "d", "label": "negative", "predicted": "positive", "confidence": 0.95},
                      {"text": "a", "label": "positive", "predicted": "negative", "confidence": 0.9},
                      {"text": "c", "label": "positive", "predicted": "negative", "confidence": 0.6}]
    with pytest.raises(ValueError, match="same length"):
        finetune.confident_errors(["a"], probabilities, torch.tensor([1, 1, 1, 0]))
    assert finetune.vader_predict(["a wonderful , moving film", "a terrible , boring mess"]).tolist() == [1, 0]


# ---------------------------------------------------------------------------------------------
# The two training routes on a tiny model


def test_plain_loop_learns_the_tiny_task(tokenizer):
    torch.manual_seed(0)
    loaders = finetune.make_loaders(finetune.tokenize(_data(8), tokenizer), tokenizer, batch_size=8)
    model = _tiny_model(tokenizer.vocab_size)
    history = finetune.fine_tune(model, loaders, epochs=10, lr=3e-3, warmup_ratio=0.1, progress=False)
    assert history.train_loss[-1] < 0.5 * history.train_loss[0]
    assert history.val_accuracy[-1] == 1.0
    assert history.lr[-1] == 0.0  # the schedule decays to zero at the last step


def test_trainer_route_learns_saves_and_reports_metrics(tokenizer, tmp_path):
    from transformers import Trainer, TrainingArguments

    data = finetune.tokenize(_data(8), tokenizer)
    args = TrainingArguments(
        output_dir=str(tmp_path), num_train_epochs=10, per_device_train_batch_size=8, learning_rate=3e-3,
        warmup_steps=0.1, eval_strategy="epoch", save_strategy="epoch", load_best_model_at_end=True,
        metric_for_best_model="accuracy", save_total_limit=1, logging_strategy="epoch", report_to="none",
        use_cpu=True, dataloader_pin_memory=False, disable_tqdm=True, seed=0,
    )
    trainer = Trainer(model=_tiny_model(tokenizer.vocab_size), args=args, train_dataset=data["train"],
                      eval_dataset=data["validation"], processing_class=tokenizer,
                      data_collator=finetune.collator(tokenizer), compute_metrics=finetune.compute_metrics)
    trainer.train()
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert losses[-1] < 0.5 * losses[0]
    metrics = trainer.evaluate()
    assert metrics["eval_accuracy"] == 1.0 and metrics["eval_f1"] == 1.0
    assert list(tmp_path.glob("checkpoint-*/model.safetensors"))
    predictions = trainer.predict(data["validation"])
    assert predictions.predictions.shape == (48, 2) and np.array_equal(predictions.label_ids, LABELS * 8)


def test_old_trainer_arguments_are_rejected():
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="evaluation_strategy"):
        TrainingArguments(output_dir="unused", evaluation_strategy="epoch")


# ---------------------------------------------------------------------------------------------
# The saved classifier


def test_save_and_load_round_trip(tokenizer, tmp_path):
    model = _tiny_model(tokenizer.vocab_size).eval()
    finetune.save_classifier(model, tokenizer, tmp_path, {"test_accuracy": 0.5})
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "tokenizer.json").is_file()
    loaded, loaded_tokenizer, info = finetune.load_classifier(tmp_path, rebuild=False)
    assert info == {"test_accuracy": 0.5} and not loaded.training
    inputs = loaded_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs).logits, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="run chapter 07, or pass rebuild=True"):
        finetune.load_classifier(tmp_path / "missing", rebuild=False)


@pytest.mark.slow
def test_a_missing_classifier_is_rebuilt_and_saved(tmp_path):
    path = finetune.rebuild_classifier(tmp_path / "quick", train_size=64, epochs=1)
    info = json.loads((path / "training.json").read_text())
    assert info["train_size"] == 64 and 0 <= info["test_accuracy"] <= 1
    model, tokenizer, loaded_info = finetune.load_classifier(path)
    assert loaded_info == info and model.config.id2label[1] == "positive"


def test_length_grouped_batches_are_a_reproducible_permutation_with_little_padding():
    g = torch.Generator().manual_seed(0)
    lengths = (torch.randint(5, 60, (1000,), generator=g)).tolist()
    sampler = finetune.LengthGroupedSampler(lengths, batch_size=16, seed=3)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(1000)) and first != second  # a new order each epoch
    assert first == list(finetune.LengthGroupedSampler(lengths, batch_size=16, seed=3))

    def padded_tokens(order):
        batches = torch.tensor([lengths[i] for i in order]).split(16)
        return sum(b.max().item() * len(b) for b in batches)

    shuffled = torch.randperm(1000, generator=g).tolist()
    assert padded_tokens(first) < 0.7 * padded_tokens(shuffled)
    assert padded_tokens(first) < 1.1 * sum(lengths)

"""course_lib.export: torch.export and ONNX exports agree with eager PyTorch on several shapes."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from course_lib import export
from course_lib.pretrained import load_tokenizer

SENTENCES = ["A gripping, beautifully acted film.", "Dull.", "The plot never comes alive, and the jokes fall flat.",
             "One of the year's best.", "I wanted my two hours back."]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


def _batches(tokenizer):
    """Real sentences in several shapes: one, two, all five (padded), and a long one."""
    groups = [SENTENCES[:1], SENTENCES[1:3], SENTENCES, [" ".join(SENTENCES * 3)]]
    return [export.example_inputs(tokenizer, g) for g in groups]


def _eager(model):
    return lambda ids, mask: model(input_ids=ids, attention_mask=mask).logits


def test_torch_export_round_trip_with_dynamic_shapes(model, tokenizer, tmp_path):
    program = export.export_program(model, export.example_inputs(tokenizer, SENTENCES[:3]))
    path = export.save_program(program, tmp_path / "classifier.pt2")
    loaded = export.load_program(path)
    assert export.max_difference(_eager(model), loaded, _batches(tokenizer)) < 1e-5
    assert export.max_difference(_eager(model), program.module(), _batches(tokenizer)) < 1e-5


def test_onnx_export_is_one_file_with_the_tokenizer_and_matches(model, tokenizer, tmp_path):
    path = export.export_onnx(model, tokenizer, tmp_path, export.example_inputs(tokenizer, SENTENCES[:3]))
    assert path.name == export.ONNX_FILE and not list(tmp_path.glob("*.data"))
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "config.json").is_file()
    session = export.onnx_session(path)
    onnx_fn = lambda ids, mask: export.onnx_logits(session, ids, mask)  # noqa: E731
    assert export.max_difference(_eager(model), onnx_fn, _batches(tokenizer)) < 1e-4

    quantized = export.quantize_onnx(tmp_path, tmp_path / "int8")
    assert quantized == tmp_path / "int8" / export.ONNX_FILE and quantized.stat().st_size < path.stat().st_size
    assert (tmp_path / "int8" / "tokenizer.json").is_file() and (tmp_path / "int8" / "config.json").is_file()
    int8 = export.onnx_session(quantized)
    assert export.max_difference(_eager(model), lambda i, m: export.onnx_logits(int8, i, m), _batches(tokenizer)) < 0.1


@pytest.mark.parametrize("call, message", [
    (lambda m, t: export.export_program(m, export.example_inputs(t, SENTENCES[:1])), "at least 2 sentences of 3 tokens"),
    (lambda m, t: export.example_inputs(t, "one string"), "texts must be a non-empty sequence of str"),
    (lambda m, t: export.onnx_session("unused.onnx", threads=0), "threads must be an int >= 1, got 0"),
])
def test_bad_input_is_a_clear_error(model, tokenizer, call, message):
    with pytest.raises(ValueError, match=message):
        call(model, tokenizer)


def test_quantize_onnx_needs_an_exported_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="folder written by export_onnx"):
        export.quantize_onnx(tmp_path, tmp_path / "int8")
    (tmp_path / export.ONNX_FILE).write_bytes(b"")
    with pytest.raises(ValueError, match="different folder"):
        export.quantize_onnx(tmp_path, tmp_path)


def test_exporting_prints_nothing(model, tokenizer, tmp_path, capfd, recwarn):
    export.export_onnx(model, tokenizer, tmp_path / "fp32", export.example_inputs(tokenizer, SENTENCES[:3]))
    export.quantize_onnx(tmp_path / "fp32", tmp_path / "int8")
    out, err = capfd.readouterr()
    assert out == "" and err == "" and not [str(w.message) for w in recwarn]

"""The inference service: every endpoint, every kind of bad input (4xx, and it keeps serving),
concurrent requests, both backends, and the real server process started and stopped."""

import json
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import torch
from fastapi.testclient import TestClient
from transformers import BertConfig, BertForSequenceClassification

from course_lib import export, finetune, serve
from course_lib.pretrained import load_tokenizer


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny classifier saved as chapter 07 saves its model, plus its ONNX export beside it."""
    folder = tmp_path_factory.mktemp("classifier")
    tokenizer = load_tokenizer()
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, num_labels=2, id2label={0: "negative", 1: "positive"},
                        label2id={"negative": 0, "positive": 1})
    model = BertForSequenceClassification(config).eval()
    finetune.save_classifier(model, tokenizer, folder, {"test_accuracy": 0.5})
    export.export_onnx(model, tokenizer, folder / "onnx", export.example_inputs(tokenizer, ["a good film", "a dull one"]))
    return folder


@pytest.fixture(scope="module")
def client(model_dir):
    return TestClient(serve.create_app(serve.load_predictor(model_dir, "torch")))


def test_health_and_metadata(client):
    assert client.get("/health").json() == {"status": "ok"}
    meta = client.get("/metadata").json()
    assert meta["labels"] == ["negative", "positive"] and meta["backend"] == "torch"
    assert meta["model_version"].startswith("model.safetensors:") and meta["max_texts"] == serve.MAX_TEXTS
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_predict_one_text_and_a_list(client):
    one = client.post("/predict", json={"texts": "  A gripping film.  "})
    assert one.status_code == 200
    body = one.json()
    assert len(body["predictions"]) == 1 and body["model_version"] == client.get("/metadata").json()["model_version"]
    prediction = body["predictions"][0]
    assert set(prediction["probabilities"]) == {"negative", "positive"}
    assert sum(prediction["probabilities"].values()) == pytest.approx(1, abs=1e-5)
    assert prediction["label"] == max(prediction["probabilities"], key=prediction["probabilities"].get)
    many = client.post("/predict", json={"texts": ["A gripping film.", "Dull.", "Fine."]}).json()["predictions"]
    assert len(many) == 3 and many[0] == prediction  # the same sentence alone or in a batch


@pytest.mark.parametrize("payload, message", [
    ({"texts": ""}, "at least 1 character"),
    ({"texts": "   "}, "at least 1 character"),
    ({"texts": []}, "at least 1 item"),
    ({"texts": ["fine"] * (serve.MAX_TEXTS + 1)}, f"at most {serve.MAX_TEXTS} items"),
    ({"texts": "x" * (serve.MAX_CHARS + 1)}, f"at most {serve.MAX_CHARS} characters"),
    ({"texts": 42}, "valid string"),
    ({"texts": ["ok", None]}, "valid string"),
    ({"text": "typo in the field name"}, "Field required"),
    ({"texts": "ok", "extra": 1}, "Extra inputs are not permitted"),
])
def test_bad_requests_get_a_clear_4xx_and_the_service_keeps_serving(client, payload, message):
    response = client.post("/predict", json=payload)
    assert response.status_code == 422
    assert message in json.dumps(response.json())
    assert client.post("/predict", json={"texts": "still up"}).status_code == 200


def test_malformed_json_and_wrong_methods(client):
    response = client.post("/predict", content=b'{"texts": "unterminated', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON decode error" in response.text
    assert client.get("/predict").status_code == 405
    assert client.get("/nothing-here").status_code == 404


def test_concurrent_requests_all_answered_correctly(client):
    texts = [f"sentence number {i} is fine" for i in range(24)]
    expected = [client.post("/predict", json={"texts": t}).json()["predictions"][0] for t in texts]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: client.post("/predict", json={"texts": t}), texts))
    assert all(a.status_code == 200 for a in answers)
    for answer, reference in zip(answers, expected):
        assert answer.json()["predictions"][0]["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-5)


def test_onnx_backend_agrees_with_torch(model_dir, client):
    onnx_client = TestClient(serve.create_app(serve.load_predictor(model_dir / "onnx", "onnx")))
    assert onnx_client.get("/metadata").json()["backend"] == "onnx"
    texts = ["A gripping film.", "Dull, overlong and far too pleased with itself."]
    ours = onnx_client.post("/predict", json={"texts": texts}).json()["predictions"]
    reference = client.post("/predict", json={"texts": texts}).json()["predictions"]
    for a, b in zip(ours, reference):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-4)


def test_loading_errors_are_clear(tmp_path, model_dir):
    with pytest.raises(ValueError, match="backend must be one of"):
        serve.load_predictor(model_dir, "tensorrt")
    with pytest.raises(FileNotFoundError, match="is not a model folder"):
        serve.load_predictor(tmp_path, "torch")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_real_server_process_starts_answers_and_stops(model_dir):
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "course_lib", "serve", "--model", str(model_dir), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "the server did not answer /health within 60 s"
            time.sleep(0.2)
        assert httpx.post(f"{url}/predict", json={"texts": "a fine film"}).status_code == 200
        assert httpx.post(f"{url}/predict", json={"texts": ""}).status_code == 422
        assert httpx.get(f"{url}/health").json() == {"status": "ok"}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert server.returncode is not None


def test_cli_refuses_a_folder_without_a_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "course_lib", "serve", "--model", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not a model folder" in result.stderr

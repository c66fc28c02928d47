"""The inference service: every endpoint, every kind of bad input (4xx, and it keeps serving),
concurrent requests, both backends, and the real server process started and stopped."""

import json
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from fastapi.testclient import TestClient
from transformers import BertForSequenceClassification

from course_lib import export, loadtest, serve
from course_lib.pretrained import load_tokenizer


@pytest.fixture(scope="module")
def model_dir(tiny_classifier):
    """The tiny classifier, with its ONNX export beside it."""
    if not (tiny_classifier / "onnx" / export.ONNX_FILE).is_file():
        model = BertForSequenceClassification.from_pretrained(tiny_classifier).eval()
        tokenizer = load_tokenizer(tiny_classifier)
        inputs = export.example_inputs(tokenizer, ["a good film", "a dull one"])
        export.export_onnx(model, tokenizer, tiny_classifier / "onnx", inputs)
    return tiny_classifier


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
    ({"texts": 42}, "texts must be a string or a list of strings, got int"),
    ({"texts": None}, "texts must be a string or a list of strings, got NoneType"),
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


def test_the_real_server_process_starts_answers_and_stops(model_dir):
    port = serve.free_port()
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
    assert server.returncode in (0, -signal.SIGTERM), f"stopped by SIGTERM, it exited with {server.returncode}"


def test_cli_refuses_a_folder_without_a_model(tmp_path):
    result = subprocess.run([sys.executable, "-m", "course_lib", "serve", "--model", str(tmp_path)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "is not a model folder" in result.stderr


def test_service_process_load_test_and_stop(model_dir):
    with serve.ServiceProcess(model_dir, "torch") as service:
        assert service.running() and service.url == f"http://127.0.0.1:{service.port}"
        sequential = loadtest.load_test(service.url, ["a fine film", "a dull film"], requests=20, concurrency=1, warmup=2)
        parallel = loadtest.load_test(service.url, ["a fine film", "a dull film"], requests=24, concurrency=4, warmup=0)
        half_bad = loadtest.load_test(service.url, ["a fine film", ""], requests=10, concurrency=2, warmup=0)
        assert httpx.get(f"{service.url}/health").json() == {"status": "ok"}  # still up after the 422s
    assert not service.running() and service.process.returncode in (0, -signal.SIGTERM)
    assert "Traceback" not in service.log() and "ERROR" not in service.log()  # still readable once stopped
    with pytest.raises(RuntimeError, match="was started before"):
        service.start()
    assert sequential.failures == 0 and len(sequential.latencies) == 20 and sequential.concurrency == 1
    assert parallel.failures == 0 and len(parallel.latencies) == 24 and parallel.throughput > 0
    assert half_bad.failures == 5 and len(half_bad.latencies) == 5
    assert sequential.percentile_ms(50) <= sequential.percentile_ms(95) <= sequential.percentile_ms(99)
    assert sequential.requests == 20


def test_service_process_reports_a_failed_start(tmp_path):
    (tmp_path / "config.json").write_text("{}")  # looks like a model folder, but loading fails
    service = serve.ServiceProcess(tmp_path, "torch")
    with pytest.raises(RuntimeError, match="exited with code .* before answering"):
        service.start()
    assert not service.running()
    with pytest.raises(ValueError, match="backend must be one of"):
        serve.ServiceProcess(tmp_path, "tensorrt")


def test_the_server_exits_when_its_parent_dies(model_dir):
    """A notebook kernel killed mid-chapter must not leave its server behind."""
    script = ("import os, signal, sys\n"
              "from course_lib import serve\n"
              f"service = serve.ServiceProcess({str(model_dir)!r}).start()\n"
              "print(service.pid, flush=True)\n"
              "os.kill(os.getpid(), signal.SIGKILL)\n")
    parent = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    server_pid = int(parent.stdout.split()[0])
    deadline = time.monotonic() + 15
    while _alive(server_pid):
        assert time.monotonic() < deadline, f"server {server_pid} outlived its parent"
        time.sleep(0.2)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"  # a zombie has exited; only its entry is left
    except FileNotFoundError:
        return False


def test_load_result_percentiles():
    result = loadtest.LoadResult("x", tuple(i / 1000 for i in range(1, 101)), failures=2, seconds=2.0, concurrency=1)
    assert result.requests == 102 and result.throughput == 50
    assert result.percentile_ms(50) == pytest.approx(50.5) and result.percentile_ms(99) == pytest.approx(99.01)
    with pytest.raises(ValueError, match="concurrency must be an int >= 1, got 0"):
        loadtest.load_test("http://127.0.0.1:9", ["x"], concurrency=0)


def test_load_table_and_plot():
    import matplotlib

    matplotlib.use("Agg")
    from course_lib.plots import plot_latencies

    results = [loadtest.LoadResult(f"{name} @{c}", tuple(s / 1000 for s in range(1, 11)), 0, seconds, c)
               for name, seconds in (("torch fp32", 1.0), ("onnx int8", 0.25)) for c in (1, 8)]
    table = loadtest.load_table(results).splitlines()
    assert table[0].split()[-1] == "fp32" and "req/s vs torch fp32" in table[0]
    assert table[1].endswith("1.00x") and table[3].endswith("4.00x") and table[4].endswith("4.00x")
    with pytest.raises(ValueError, match="baseline must be one of"):
        loadtest.load_table(results, baseline="tensorrt")
    ax = plot_latencies(results)
    assert [t.get_text() for t in ax.get_yticklabels()] == [r.name for r in results]
    assert ax.get_xscale() == "log" and len(ax.lines) >= 3 * len(results)

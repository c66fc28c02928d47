"""The classifier as an HTTP service: a FastAPI app factory, two inference backends (eager
PyTorch and onnxruntime), and the launcher behind ``python -m course_lib serve``.

Requests are validated by pydantic before the model sees them: bad input gets a 4xx answer that
says what is wrong, and the service keeps serving. ``/predict`` is a plain (sync) endpoint, so
FastAPI runs inference in its thread pool, off the event loop; the number of compute threads is
set once, deliberately, when the service starts.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

MAX_TEXTS = 32
MAX_CHARS = 2000
MAX_TOKENS = 128
BACKENDS = ("torch", "onnx")

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_CHARS)]


class PredictRequest(BaseModel):
    """One text, or a list of 1 to ``MAX_TEXTS`` texts, each 1 to ``MAX_CHARS`` characters after
    stripping spaces. A single string is read as a list of one, so every error names one rule."""

    model_config = ConfigDict(extra="forbid")
    texts: Annotated[list[Text], Field(min_length=1, max_length=MAX_TEXTS,
                                       description=f"one text, or a list of 1 to {MAX_TEXTS} texts")]

    @field_validator("texts", mode="before")
    @classmethod
    def _one_text_is_a_list_of_one(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [value]
        if not isinstance(value, list):
            raise ValueError(f"texts must be a string or a list of strings, got {type(value).__name__}")
        return value


class Prediction(BaseModel):
    label: str
    probabilities: dict[str, float]


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_version: str


class Predictor(ABC):
    """Texts in, class probabilities out, for one backend; ``version`` names the weights."""

    backend = ""

    def __init__(self, folder: str | Path):
        from transformers import AutoTokenizer

        self.folder = Path(folder)
        config = json.loads((self.folder / "config.json").read_text())
        self.labels = tuple(config["id2label"][str(i)] for i in range(len(config["id2label"])))
        self.tokenizer = AutoTokenizer.from_pretrained(self.folder)
        self.version = _version(self.folder)

    def encode(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = self.tokenizer(list(texts), padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt")
        return batch["input_ids"], batch["attention_mask"]

    @abstractmethod
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The backend's forward pass."""

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        return self.logits(*self.encode(texts)).float().softmax(-1)


class TorchPredictor(Predictor):
    """Eager PyTorch on a ``save_pretrained`` folder (chapter 07's classifier)."""

    backend = "torch"

    def __init__(self, folder: str | Path):
        from transformers import BertForSequenceClassification

        from course_lib.pretrained import load_model

        super().__init__(folder)
        self.model = load_model(self.folder, model_class=BertForSequenceClassification).eval()

    @torch.inference_mode()
    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class OnnxPredictor(Predictor):
    """onnxruntime on a folder written by :func:`course_lib.export.export_onnx`."""

    backend = "onnx"

    def __init__(self, folder: str | Path, threads: int = 1, file: str = "model.onnx"):
        from course_lib.export import onnx_session

        super().__init__(folder)
        self.session = onnx_session(self.folder / file, threads)

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from course_lib.export import onnx_logits

        return onnx_logits(self.session, input_ids, attention_mask)


def _version(folder: Path) -> str:
    """The first 12 hex digits of the SHA-256 of the weights file: changes exactly when they do."""
    weights = next((folder / name for name in ("model.safetensors", "model.onnx") if (folder / name).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} holds neither model.safetensors nor model.onnx")
    from course_lib.data import sha256

    return f"{weights.name}:{sha256(weights)[:12]}"


def load_predictor(folder: str | Path, backend: str = "torch", threads: int = 1) -> Predictor:
    """The predictor for ``backend`` (``"torch"`` or ``"onnx"``). ``threads`` sizes the ONNX
    session; PyTorch's threads are process-wide, so :func:`serve` sets them for its own process."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a model folder: it has no config.json")
    return TorchPredictor(folder) if backend == "torch" else OnnxPredictor(folder, threads)


def create_app(predictor: Predictor) -> Any:
    """The FastAPI application: ``POST /predict``, ``GET /health``, ``GET /metadata`` (and the
    OpenAPI docs FastAPI generates at ``/docs``)."""
    from fastapi import FastAPI

    app = FastAPI(title="llm-course sentiment classifier", version=predictor.version,
                  description="Chapter 07's fine-tuned MiniLM: is a movie-review sentence positive or negative?")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metadata")
    def metadata() -> dict[str, Any]:
        return {"labels": list(predictor.labels), "backend": predictor.backend, "model_version": predictor.version,
                "max_texts": MAX_TEXTS, "max_chars": MAX_CHARS, "max_tokens": MAX_TOKENS}

    @app.post("/predict")
    def predict(request: PredictRequest) -> PredictResponse:
        probabilities = predictor(request.texts)
        predictions = [Prediction(label=predictor.labels[int(row.argmax())],
                                  probabilities={label: round(p, 6) for label, p in zip(predictor.labels, row.tolist())})
                       for row in probabilities]
        return PredictResponse(predictions=predictions, model_version=predictor.version)

    return app


def serve(folder: str | Path, backend: str = "torch", host: str = "127.0.0.1", port: int = 8000, threads: int = 1,
          parent_pid: int | None = None) -> None:
    """Load the model and run the service with uvicorn until interrupted (or, with ``parent_pid``,
    until that process is gone: a service started by a notebook must not outlive its kernel)."""
    import uvicorn
    from transformers.utils import logging

    from course_lib.runtime import quiet_import_logs

    quiet_import_logs()  # a server's log should hold requests and errors, not import chatter
    logging.disable_progress_bar()  # this process is the service: its global settings are ours to choose
    torch.set_num_threads(threads)
    app = create_app(load_predictor(folder, backend, threads))
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")


def _exit_with_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(0.5)
    os._exit(0)  # the parent died without stopping us (e.g. a killed kernel): nobody is left to ask


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServiceProcess:
    """``python -m course_lib serve`` as a child process on a free loopback port.

    ``start()`` returns once ``/health`` answers (or raises with the server's log); ``stop()``
    terminates it by its PID. Use it as a context manager; it is also stopped when the Python
    process exits, and the server exits by itself if its parent dies, so no server is left running.
    """

    def __init__(self, folder: str | Path, backend: str = "torch", threads: int = 1, host: str = "127.0.0.1",
                 port: int | None = None, startup_timeout: float = 120.0):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.folder, self.backend, self.threads, self.host = Path(folder), backend, threads, host
        self.port = port if port is not None else free_port(host)
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None
        self._log = tempfile.TemporaryFile(mode="w+")
        self._final_log = ""

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def start(self) -> ServiceProcess:
        if self.process is not None:
            raise RuntimeError(f"this service was started before (PID {self.pid}); make a new ServiceProcess")
        command = self.command()
        environment = {**os.environ, "OMP_NUM_THREADS": str(self.threads)}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=environment)
        atexit.register(self.stop)
        try:
            self._wait_until_healthy()
        except BaseException:  # a failed start, or an interrupt while waiting: leave nothing behind
            self.stop()
            raise
        return self

    def command(self) -> list[str]:
        """The command line that runs the server (a subclass may start another service this way)."""
        return [sys.executable, "-m", "course_lib", "serve", "--model", str(self.folder), "--backend", self.backend,
                "--host", self.host, "--port", str(self.port), "--threads", str(self.threads),
                "--parent-pid", str(os.getpid())]

    def _wait_until_healthy(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with code {self.process.returncode} before answering; "
                                   f"its log:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"the service did not answer /health within {self.startup_timeout:.0f} s; "
                                   f"its log:\n{self.log()}")
            time.sleep(0.2)

    def log(self) -> str:
        """What the server printed so far (uvicorn logs warnings and errors only)."""
        if self._log.closed:
            return self._final_log
        self._log.flush()
        self._log.seek(0)
        return self._log.read()

    def stop(self) -> int | None:
        """Terminate the server (SIGTERM, then SIGKILL after 20 s); its exit code, None if never started."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        atexit.unregister(self.stop)
        if not self._log.closed:
            self._final_log = self.log()
            self._log.close()
        return self.process.returncode

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

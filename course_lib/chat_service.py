"""Chapter 13's chat model as an HTTP service that speaks a subset of OpenAI's chat completions API,
so the official ``openai`` client (or any tool built on it) can talk to it: ``POST
/v1/chat/completions`` (whole answers, or Server-Sent Events as tokens are made), ``GET /v1/models``,
``GET /health``; and the launcher behind ``python -m course_lib serve-chat``.

One model answers one request at a time: :class:`ChatEngine` runs every generation on its single
worker thread, fed by a first-in, first-out queue, so concurrent requests wait their turn (none is
lost) and the event loop stays free to accept them and to stream tokens out.

What the service does with a request's fields (the official client sends only those given):

* handled: ``model`` (any name is accepted; answers carry the served model's name), ``messages``
  (1 to 64, roles ``system``/``user``/``assistant``, content a string, or a list of text parts, of
  at most 4,000 characters), ``max_tokens`` / ``max_completion_tokens``, ``temperature`` (0 is
  greedy), ``top_p``, ``stop``, ``stream``, ``stream_options.include_usage``, ``seed``, ``n`` (1 only);
* refused with 400 and the field named, because the answer could not be what was asked for:
  ``tools``, ``tool_choice``, ``functions``, ``function_call``, ``logit_bias``, ``audio``,
  ``prediction``, ``web_search_options``, and ``logprobs``/``top_logprobs``, penalties,
  ``response_format`` and ``modalities`` when set to anything but their neutral value;
* every other field is ignored (``user``, ``metadata``, ``store``, ``service_tier`` ...).

Every error is a 4xx JSON body in OpenAI's shape, ``{"error": {"message", "type", "param",
"code"}}``, pydantic's validation errors included (400, not FastAPI's 422), and the service keeps
serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator
from torch import nn

from course_lib.arguments import require_int
from course_lib.chat import END, chatml, check_messages
from course_lib.sampling import SamplingConfig
from course_lib.serve import ServiceProcess, _exit_with_parent

MAX_MESSAGES = 64
MAX_CONTENT_CHARS = 4000
MAX_STOP_STRINGS = 4
DEFAULT_MAX_TOKENS = 128
REFUSED_FIELDS = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "audio", "prediction",
                  "web_search_options")
NEUTRAL_VALUES = {  # fields accepted only with a value that asks for nothing this service lacks
    "logprobs": (None, False), "top_logprobs": (None, 0), "frequency_penalty": (None, 0), "presence_penalty": (None, 0),
    "response_format": (None, {"type": "text"}), "modalities": (None, ["text"]),
}


class ChatRequestError(ValueError):
    """A request the service refuses (HTTP 400): the message, and the request field it concerns."""

    def __init__(self, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


@dataclass(frozen=True)
class Completion:
    """One finished answer: its text, why it ended (``"stop"`` or ``"length"``) and the token counts
    (``completion_tokens`` counts every token the model made, the end token included)."""

    text: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass
class _Job:
    prompt_ids: list[int]
    max_tokens: int
    sampling: SamplingConfig
    stop: tuple[str, ...]
    generator: torch.Generator | None
    on_delta: Callable[[str], None] | None
    cancel: threading.Event = field(default_factory=threading.Event)


def _held_back(text: str, stop: Sequence[str]) -> int:
    """How many characters at the end of ``text`` could still be the start of a stop string."""
    for k in range(min(len(text), max((len(s) for s in stop), default=1) - 1), 0, -1):
        if any(s.startswith(text[-k:]) for s in stop):
            return k
    return 0


class ChatEngine:
    """A chat model behind a queue: messages in, an answer out, as a whole or as text deltas.

    Prompts are written in ChatML (:func:`course_lib.chat.chatml`); one longer than
    ``max_prompt_tokens`` tokens is refused, and no answer is longer than ``max_new_tokens``.
    Generation uses :func:`course_lib.generate.stream` and ends at ``<|im_end|>`` or at a stop string
    (``finish_reason`` ``"stop"``; neither appears in the text), or after ``max_tokens``
    (``"length"``). Every generation runs on one worker thread, in the order requests arrived.
    ``threads``, if given, sets PyTorch's compute threads (process-wide).
    """

    def __init__(self, model: nn.Module, tokenizer, model_name: str, max_prompt_tokens: int = 512,
                 max_new_tokens: int = 256, threads: int | None = None):
        self.max_prompt_tokens = require_int("max_prompt_tokens", max_prompt_tokens)
        self.max_new_tokens = require_int("max_new_tokens", max_new_tokens)
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty str, got {model_name!r}")
        limit = getattr(getattr(model, "config", None), "max_positions", None)
        if limit is not None and max_prompt_tokens + max_new_tokens > limit:
            raise ValueError(f"max_prompt_tokens + max_new_tokens = {max_prompt_tokens + max_new_tokens} exceeds the "
                             f"model's context of {limit} positions")
        if threads is not None:
            torch.set_num_threads(require_int("threads", threads))
        self.model, self.tokenizer, self.model_name = model.eval(), tokenizer, model_name
        self.end_id = tokenizer.convert_tokens_to_ids(END)
        self.created = int(time.time())
        self._device = next(model.parameters()).device
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-generation")  # its queue is FIFO

    def encode(self, messages: Sequence[Mapping[str, str]]) -> list[int]:
        """The prompt's token ids: the conversation in ChatML, up to the assistant's opening."""
        try:
            text = chatml(check_messages(messages))
        except ValueError as error:
            raise ChatRequestError(str(error), "messages") from None
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) > self.max_prompt_tokens:
            raise ChatRequestError(f"the prompt is {len(ids)} tokens long; this service takes at most "
                                   f"{self.max_prompt_tokens}: shorten the messages", "messages",
                                   "context_length_exceeded")
        return ids

    def submit(self, messages: Sequence[Mapping[str, str]], max_tokens: int | None = None, temperature: float = 1.0,
               top_p: float | None = None, stop: str | Sequence[str] = (), seed: int | None = None,
               on_delta: Callable[[str], None] | None = None,
               cancel: threading.Event | None = None) -> Future[Completion]:
        """Check the request (:class:`ChatRequestError` at once if it is refused) and queue it; the
        future holds the :class:`Completion`. ``on_delta(text)`` is called, on the worker thread,
        with each new piece of text as soon as it is certain; setting ``cancel`` ends the
        generation early (a client that went away)."""
        max_tokens = self.max_new_tokens if max_tokens is None else max_tokens
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or not 1 <= max_tokens <= self.max_new_tokens:
            raise ChatRequestError(f"max_tokens must be an int from 1 to {self.max_new_tokens}, got {max_tokens!r}",
                                   "max_tokens")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
            raise ChatRequestError(f"temperature must be a number from 0 to 2, got {temperature!r}", "temperature")
        if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
            raise ChatRequestError(f"top_p must be a number in (0, 1], got {top_p!r}", "top_p")
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        if len(stop) > MAX_STOP_STRINGS or not all(isinstance(s, str) and s for s in stop):
            raise ChatRequestError(f"stop must be a non-empty str or a list of at most {MAX_STOP_STRINGS} of them, "
                                   f"got {list(stop)!r}", "stop")
        prompt_ids = self.encode(messages)
        sampling = (SamplingConfig.greedy() if temperature == 0
                    else SamplingConfig(temperature=float(temperature), top_p=top_p))
        generator = None
        if seed is not None:
            generator = torch.Generator(device="cpu")
            generator.manual_seed(seed)
        job = _Job(prompt_ids, max_tokens, sampling, stop, generator, on_delta, cancel or threading.Event())
        return self._worker.submit(self._generate, job)

    def complete(self, messages: Sequence[Mapping[str, str]], **options: Any) -> Completion:
        """The whole answer (waits its turn in the queue); ``options`` as for :meth:`submit`."""
        return self.submit(messages, **options).result()

    def _generate(self, job: _Job) -> Completion:
        from course_lib.generate import stream

        new: list[int] = []
        sent = ""  # the text handed out so far: it never changes afterwards
        finish = "length"

        def send(text: str) -> None:
            nonlocal sent
            if len(text) > len(sent):
                if job.on_delta is not None:
                    job.on_delta(text[len(sent):])
                sent = text

        if job.cancel.is_set():  # the client left while this request waited its turn
            return Completion("", finish, len(job.prompt_ids), 0)
        ids = torch.tensor([job.prompt_ids], device=self._device)
        tokens = stream(self.model, ids, job.max_tokens, job.sampling, eos_token_id=self.end_id,
                        generator=job.generator)
        try:
            for token in tokens:
                new.append(token)
                if token == self.end_id:
                    finish = "stop"
                    break
                text = self.tokenizer.decode(new)
                hits = [i for i in (text.find(s) for s in job.stop) if i >= 0]
                if hits:
                    text, finish = text[:min(hits)], "stop"
                    break
                # hand out only what later tokens cannot change: not a character still missing some of
                # its bytes (decoded as U+FFFD for now), nor what could be the start of a stop string
                stable = text.rstrip("\ufffd")
                stable = stable[:len(stable) - _held_back(stable, job.stop)]
                if stable.startswith(sent):
                    send(stable)
                if job.cancel.is_set():
                    break
            else:
                text = self.tokenizer.decode(new)
            if finish == "stop" and new and new[-1] == self.end_id:
                text = self.tokenizer.decode(new[:-1])
            if text.startswith(sent):
                send(text)
        finally:
            tokens.close()
        return Completion(sent, finish, len(job.prompt_ids), len(new))

    def close(self) -> None:
        """Stop the worker: queued requests are dropped, a running one finishes."""
        self._worker.shutdown(wait=True, cancel_futures=True)


def load_chat_engine(folder: str | Path | None = None, adapter: str | Path | None = None, threads: int | None = 1,
                     model_name: str | None = None, max_prompt_tokens: int = 512,
                     max_new_tokens: int = 256) -> ChatEngine:
    """The course's Llama read from a ``transformers`` folder (default: the bundled
    SmolLM2-135M-Instruct) with its tokenizer (the bundled one if the folder has none), plus a LoRA
    ``adapter`` folder (:func:`course_lib.lora.save_adapter`) merged into the weights if given.
    ``threads`` sets PyTorch's threads for the whole process (None leaves them alone). The API
    reports ``model_name`` (default: the folder's name; the bundled model's for the bundled folder)."""
    from transformers import AutoTokenizer

    from course_lib import smollm
    from course_lib.llama import Llama

    bundled = smollm.model_folder()
    folder = Path(folder) if folder is not None else bundled
    if model_name is None:
        model_name = smollm.BUNDLED if folder.resolve() == bundled.resolve() else folder.name
    model = Llama.from_pretrained(folder)
    if adapter is not None:
        from course_lib import lora

        model = lora.unload_lora(lora.load_adapter(model, adapter))
    model.requires_grad_(False)
    has_tokenizer = (folder / "tokenizer.json").is_file() or (folder / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(folder) if has_tokenizer else smollm.load_tokenizer()
    return ChatEngine(model, tokenizer, model_name, max_prompt_tokens, max_new_tokens, threads)


# ----------------------------------------------------------------------------------------- the API

Content = Annotated[str, StringConstraints(max_length=MAX_CONTENT_CHARS)]


class ChatMessage(BaseModel):
    """One message; other keys (``name``) are ignored."""

    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "user", "assistant"]
    content: Content

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts_joined(cls, value: Any) -> Any:
        if isinstance(value, list):  # [{"type": "text", "text": "..."}, ...], as the client may send
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value):
                raise ValueError("only text content parts ({'type': 'text', 'text': ...}) are supported")
            return "".join(p["text"] for p in value)
        return value


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    """The fields of OpenAI's request body this service acts on; other fields are kept aside and
    checked by :func:`_refused_field`."""

    model_config = ConfigDict(extra="allow")
    model: str
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: Annotated[list[Annotated[str, StringConstraints(min_length=1)]], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    seed: Annotated[int, Field(ge=-(2**63), lt=2**64)] | None = None
    n: int | None = 1

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_is_a_list_of_one(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("n")
    @classmethod
    def _one_choice(cls, value: int | None) -> int | None:
        if value not in (None, 1):
            raise ValueError(f"only n=1 is supported, got {value}")
        return value


def _refused_field(extra: Mapping[str, Any]) -> str | None:
    """The first field of the request that asks for something this service does not do."""
    for name, value in extra.items():
        if name in REFUSED_FIELDS and value is not None:
            return name
        if name in NEUTRAL_VALUES and value not in NEUTRAL_VALUES[name]:
            return name
    return None


def _error(status: int, message: str, param: str | None = None, code: str | None = None,
           kind: str = "invalid_request_error") -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": kind, "param": param, "code": code}})


def _param(location: Sequence[Any]) -> str | None:
    """pydantic's error location ("body", "messages", 0, "role") as "messages[0].role"."""
    parts = [p for p in location if p != "body"]
    if not parts or not isinstance(parts[0], str):
        return None
    text = parts[0]
    for part in parts[1:]:
        text += f"[{part}]" if isinstance(part, int) else f".{part}"
    return text


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_chat_app(engine: ChatEngine) -> Any:
    """The FastAPI application: ``POST /v1/chat/completions``, ``GET /v1/models``, ``GET /health``."""
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import StreamingResponse
    from starlette.exceptions import HTTPException

    app = FastAPI(title="llm-course chat service", version=engine.model_name,
                  description="A subset of OpenAI's chat completions API in front of the course's Llama.")

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Any, error: RequestValidationError) -> Any:
        problems = error.errors()
        messages = []
        for problem in problems:
            param = _param(problem.get("loc", ()))
            if problem.get("type") == "json_invalid":
                messages.append(f"the body is not valid JSON: {problem.get('ctx', {}).get('error', problem['msg'])}")
            else:
                messages.append(f"{param or 'body'}: {problem['msg']}")
        first = _param(problems[0].get("loc", ())) if problems else None
        return _error(400, "; ".join(messages) or "invalid request", first)

    @app.exception_handler(ChatRequestError)
    async def refused_request(request: Any, error: ChatRequestError) -> Any:
        return _error(400, error.message, error.param, error.code)

    @app.exception_handler(HTTPException)
    async def http_error(request: Any, error: HTTPException) -> Any:
        return _error(error.status_code, str(error.detail), code={404: "not_found"}.get(error.status_code))

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": engine.model_name, "object": "model", "created": engine.created,
                                            "owned_by": "llm-course"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: ChatCompletionRequest) -> Any:
        refused = _refused_field(request.model_extra or {})
        if refused is not None:
            raise ChatRequestError(f"{refused} is not supported by this service", refused, "unsupported_parameter")
        max_tokens = request.max_completion_tokens or request.max_tokens
        if max_tokens is not None and max_tokens > engine.max_new_tokens:
            name = "max_completion_tokens" if request.max_completion_tokens else "max_tokens"
            raise ChatRequestError(f"{name} must be at most {engine.max_new_tokens}, got {max_tokens}", name)
        options = dict(max_tokens=max_tokens or min(DEFAULT_MAX_TOKENS, engine.max_new_tokens),
                       temperature=1.0 if request.temperature is None else request.temperature,
                       top_p=request.top_p, stop=request.stop or (), seed=request.seed)
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        answer_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if not request.stream:
            result = await asyncio.wrap_future(engine.submit(messages, **options))
            return {"id": answer_id, "object": "chat.completion", "created": created, "model": engine.model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": result.text},
                                 "logprobs": None, "finish_reason": result.finish_reason}],
                    "usage": _usage(result)}

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()

        def put(item: Any) -> None:  # called on the worker thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is gone (the server shut down): stop generating
                cancel.set()

        future = engine.submit(messages, **options, on_delta=put, cancel=cancel)  # refused here: a plain 400
        future.add_done_callback(lambda _: put(None))
        include_usage = request.stream_options is not None and request.stream_options.include_usage

        def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
            return _sse({"id": answer_id, "object": "chat.completion.chunk", "created": created,
                         "model": engine.model_name,
                         "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]})

        async def events() -> Any:
            try:
                yield chunk({"role": "assistant", "content": ""})
                while (delta := await queue.get()) is not None:
                    yield chunk({"content": delta})
                try:
                    result = future.result()
                except Exception as error:  # headers are sent: the error travels as an event
                    yield _sse({"error": {"message": f"generation failed: {error}", "type": "server_error",
                                          "param": None, "code": None}})
                    return
                yield chunk({}, result.finish_reason)
                if include_usage:
                    yield _sse({"id": answer_id, "object": "chat.completion.chunk", "created": created,
                                "model": engine.model_name, "choices": [], "usage": _usage(result)})
                yield "data: [DONE]\n\n"
            finally:
                cancel.set()  # the client went away (or all is sent): free the model for the next request

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def _usage(result: Completion) -> dict[str, int]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}


# ------------------------------------------------------------------------------------ the process

def serve_chat(folder: str | Path | None = None, adapter: str | Path | None = None, host: str = "127.0.0.1",
               port: int = 8000, threads: int = 1, model_name: str | None = None, max_prompt_tokens: int = 512,
               max_new_tokens: int = 256, parent_pid: int | None = None) -> None:
    """Load the model and run the chat service with uvicorn until interrupted (or, with
    ``parent_pid``, until that process is gone)."""
    import uvicorn
    from transformers.utils import logging

    from course_lib.runtime import quiet_import_logs

    quiet_import_logs()
    logging.disable_progress_bar()
    engine = load_chat_engine(folder, adapter, threads, model_name, max_prompt_tokens, max_new_tokens)
    app = create_chat_app(engine)
    if parent_pid is not None:
        threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_level="warning")


class ChatServiceProcess(ServiceProcess):
    """``python -m course_lib serve-chat`` as a child process on a free loopback port: ``start()``
    returns once ``/health`` answers, ``stop()`` ends it; a context manager, stopped at exit, and
    the server exits by itself if its parent dies. ``url + "/v1"`` is the client's ``base_url``."""

    def __init__(self, folder: str | Path | None = None, adapter: str | Path | None = None, threads: int = 1,
                 host: str = "127.0.0.1", port: int | None = None, model_name: str | None = None,
                 max_prompt_tokens: int = 512, max_new_tokens: int = 256, startup_timeout: float = 120.0):
        from course_lib import smollm

        folder = Path(folder) if folder is not None else smollm.model_folder()
        super().__init__(folder, "torch", threads, host, port, startup_timeout)
        self.adapter, self.model_name = adapter, model_name
        self.max_prompt_tokens = require_int("max_prompt_tokens", max_prompt_tokens)
        self.max_new_tokens = require_int("max_new_tokens", max_new_tokens)

    @property
    def base_url(self) -> str:
        """What ``openai.OpenAI(base_url=...)`` takes."""
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "course_lib", "serve-chat", "--model", str(self.folder), "--host", self.host,
                   "--port", str(self.port), "--threads", str(self.threads),
                   "--max-prompt-tokens", str(self.max_prompt_tokens), "--max-new-tokens", str(self.max_new_tokens),
                   "--parent-pid", str(os.getpid())]
        if self.adapter is not None:
            command += ["--adapter", str(self.adapter)]
        if self.model_name is not None:
            command += ["--name", self.model_name]
        return command

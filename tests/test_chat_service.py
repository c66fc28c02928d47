"""The OpenAI-compatible chat service, through the official ``openai`` client: a tiny random Llama
with the real tokenizer (gibberish, but real tokens and a real protocol) served by uvicorn in a
thread; answers checked against course_lib.generate, streaming against non-streaming, stop strings,
refused requests (400, and it keeps serving), concurrent requests, the launcher, the load test; and
the real SmolLM2-135M against course_lib.chat.reply (slow)."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
import torch
from safetensors.torch import save_file

from course_lib import chat, loadtest, serve, smollm
from course_lib.chat_service import ChatEngine, ChatServiceProcess, create_chat_app, load_chat_engine
from course_lib.generate import generate
from course_lib.llama import Llama

MAX_NEW = 40
HELLO = [{"role": "user", "content": "Hello there, who are you?"}]


@pytest.fixture(scope="module")
def tokenizer():
    return smollm.load_tokenizer()


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    """A tiny random Llama (hidden 32, 2 layers, untied output layer so greedy text varies) saved as
    a transformers folder with the real tokenizer."""
    folder = tmp_path_factory.mktemp("tiny_chat")
    config = {"model_type": "llama", "vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 64,
              "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8,
              "hidden_act": "silu", "rms_norm_eps": 1e-5, "max_position_embeddings": 1024,
              "tie_word_embeddings": False}
    (folder / "config.json").write_text(json.dumps(config))
    torch.manual_seed(0)
    from course_lib.llama import LlamaConfig

    save_file(Llama(LlamaConfig.from_hf(config)).state_dict(), folder / "model.safetensors")
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def engine(tiny_folder, tokenizer):
    engine = ChatEngine(Llama.from_pretrained(tiny_folder), tokenizer, "tiny-llama", max_prompt_tokens=256,
                        max_new_tokens=MAX_NEW)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def base_url(engine):
    import uvicorn

    port = serve.free_port()
    server = uvicorn.Server(uvicorn.Config(create_chat_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/v1"
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0, timeout=60) as client:
        yield client


def ask(client, messages=HELLO, **options):
    return client.chat.completions.create(model="tiny-llama", messages=messages, **options)


def expected_ids(engine, messages, max_tokens):
    """What course_lib.generate makes greedily from the same prompt."""
    ids = torch.tensor([engine.tokenizer.encode(chat.chatml(messages), add_special_tokens=False)])
    return ids.shape[1], generate(engine.model, ids, max_tokens, eos_token_id=engine.end_id)


def test_completion_matches_generate_and_counts_tokens(client, engine, tokenizer):
    answer = ask(client, temperature=0, max_tokens=MAX_NEW)
    prompt_tokens, new = expected_ids(engine, HELLO, MAX_NEW)
    ended = new[-1] == engine.end_id
    choice = answer.choices[0]
    assert isinstance(choice.message.content, str) and choice.message.role == "assistant"
    assert choice.message.content == tokenizer.decode(new[:-1] if ended else new)
    assert choice.finish_reason == ("stop" if ended else "length")
    assert answer.usage.prompt_tokens == prompt_tokens
    assert answer.usage.completion_tokens == len(new)
    assert answer.usage.total_tokens == prompt_tokens + len(new)
    assert answer.id.startswith("chatcmpl-") and answer.object == "chat.completion" and answer.model == "tiny-llama"
    assert ask(client, temperature=0, max_tokens=MAX_NEW).choices[0].message.content == choice.message.content


def test_seeded_sampling_is_reproducible(client):
    first, again, other = (ask(client, temperature=1.0, top_p=0.95, seed=seed, max_tokens=12).choices[0].message.content
                           for seed in (7, 7, 8))
    assert first == again and first != other


def test_streaming_gives_the_same_text_as_a_whole_answer(client):
    whole = ask(client, temperature=0, max_tokens=MAX_NEW).choices[0]
    chunks = list(ask(client, temperature=0, max_tokens=MAX_NEW, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[0].choices[0].delta.content == ""
    assert all(c.object == "chat.completion.chunk" and c.id == chunks[0].id for c in chunks)
    deltas = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert "".join(deltas) == whole.message.content and len(deltas) > 5  # sent as the tokens were made
    assert chunks[-1].choices[0].finish_reason == whole.finish_reason
    assert chunks[-1].choices[0].delta.content is None
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])


def test_a_client_that_leaves_mid_stream_does_not_stop_the_service(client):
    stream = ask(client, temperature=0, max_tokens=MAX_NEW, stream=True)
    next(stream), next(stream)
    stream.close()
    assert ask(client, temperature=0, max_tokens=2, seed=-1).usage.completion_tokens == 2


def test_max_tokens_ends_with_length(client):
    answer = ask(client, temperature=0, max_tokens=3)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 3
    answer = ask(client, temperature=0, max_completion_tokens=2)
    assert answer.choices[0].finish_reason == "length" and answer.usage.completion_tokens == 2


def test_stop_strings_end_the_answer_and_are_left_out(client):
    text = ask(client, temperature=0, max_tokens=MAX_NEW).choices[0].message.content
    middle = len(text) // 2
    stop = text[middle:middle + 4]
    assert len(stop) == 4 and stop.strip(), text
    for stops in (stop, ["never-said-1", stop]):
        answer = ask(client, temperature=0, max_tokens=MAX_NEW, stop=stops)
        assert answer.choices[0].message.content == text[:text.index(stop)]
        assert stop not in answer.choices[0].message.content and answer.choices[0].finish_reason == "stop"
        chunks = list(ask(client, temperature=0, max_tokens=MAX_NEW, stop=stops, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == text[:text.index(stop)]
        assert chunks[-1].choices[0].finish_reason == "stop"


class Scripted(torch.nn.Module):
    """A stand-in model that says the given token ids, one per step."""

    def __init__(self, script, vocab):
        super().__init__()
        self.script, self.vocab, self.calls = script, vocab, 0
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, batch, max_len):
        return None

    def forward(self, ids, cache=None, last_only=False):
        logits = torch.zeros(1, 1, self.vocab)
        logits[0, -1, self.script[min(self.calls, len(self.script) - 1)]] = 1.0
        self.calls += 1
        return logits


def test_text_is_sent_only_when_certain(tokenizer):
    """A character split across two tokens is sent whole, and text that might start a stop string
    waits until it is known not to."""
    pieces = [tokenizer.encode(p, add_special_tokens=False) for p in ("Hi", " caf")]
    split_e = tokenizer.convert_tokens_to_ids(["Ã", "©"])  # the two bytes of "é", one token each
    script = [*pieces[0], *pieces[1], *split_e, *tokenizer.encode(" the", add_special_tokens=False),
              *tokenizer.encode("re!", add_special_tokens=False), tokenizer.convert_tokens_to_ids(chat.END)]
    assert tokenizer.decode(script[:-1]) == "Hi café there!"
    for stop, text, finish in ((["the end"], "Hi café there!", "stop"), (["there"], "Hi café ", "stop"),
                               (["é t"], "Hi caf", "stop"), ([], "Hi café there!", "stop")):
        engine = ChatEngine(Scripted(script, len(tokenizer)), tokenizer, "scripted")
        deltas = []
        result = engine.complete(HELLO, max_tokens=20, temperature=0, stop=stop, on_delta=deltas.append)
        engine.close()
        assert (result.text, result.finish_reason, "".join(deltas)) == (text, finish, text)
        assert all("\ufffd" not in d for d in deltas) and all(d for d in deltas)
        if stop == ["the end"]:  # " the" waited until "re" showed it was not "the end"
            assert not any(d.endswith("the") for d in deltas) and " " in deltas
    engine = ChatEngine(Scripted(script, len(tokenizer)), tokenizer, "scripted")
    cut = len(pieces[0]) + len(pieces[1]) + 1  # the answer ends between the two bytes of "é"
    result = engine.complete(HELLO, max_tokens=cut, temperature=0)
    engine.close()
    assert (result.text, result.finish_reason, result.completion_tokens) == ("Hi caf\ufffd", "length", cut)


def test_one_generation_at_a_time_in_arrival_order(tokenizer):
    class Watched(Scripted):  # records how many forwards run at once, and slows each a little
        active = most = 0

        def forward(self, ids, cache=None, last_only=False):
            Watched.active += 1
            Watched.most = max(Watched.most, Watched.active)
            time.sleep(0.002)
            Watched.active -= 1
            return super().forward(ids, cache, last_only)

    engine = ChatEngine(Watched(tokenizer.encode(" word", add_special_tokens=False), len(tokenizer)), tokenizer, "w")
    finished = []
    futures = [engine.submit(HELLO, max_tokens=10, temperature=0) for _ in range(6)]
    for i, future in enumerate(futures):
        future.add_done_callback(lambda _, i=i: finished.append(i))
    results = [f.result(timeout=30) for f in futures]
    engine.close()
    assert Watched.most == 1 and finished == list(range(6))
    assert all(r.text == " word" * 10 and r.completion_tokens == 10 for r in results)


LONG = [{"role": "user", "content": "hello " * 600}]


@pytest.mark.parametrize("options, param", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "hi"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": "x" * 4001}]}, "messages[0].content"),
    ({"temperature": 5}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": MAX_NEW + 1}, "max_tokens"),
    ({"messages": LONG}, "messages"),
    ({"n": 2}, "n"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"stop": [""]}, "stop[0]"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"logprobs": True}, "logprobs"),
])
def test_bad_requests_get_a_400_naming_the_field_and_the_service_keeps_serving(client, options, param):
    options = {"messages": HELLO, **options}
    with pytest.raises(openai.BadRequestError) as error:
        ask(client, **options)
    assert error.value.status_code == 400 and error.value.param == param
    assert error.value.type == "invalid_request_error" and param.split("[")[0] in error.value.message
    if options["messages"] is LONG:
        assert error.value.code == "context_length_exceeded" and "at most 256" in error.value.message
    with pytest.raises(openai.BadRequestError):  # a stream is refused before it starts
        ask(client, stream=True, **options)
    assert ask(client, max_tokens=1).usage.completion_tokens == 1


def test_fields_it_does_not_act_on_are_ignored(client):
    answer = ask(client, max_tokens=2, user="someone", presence_penalty=0, response_format={"type": "text"},
                 extra_body={"some_future_field": {"x": 1}})
    assert answer.usage.completion_tokens == 2


def test_raw_http_errors_are_in_openais_shape(base_url):
    bad_json = httpx.post(f"{base_url}/chat/completions", content=b'{"model": "x", "messages": [',
                          headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and "not valid JSON" in bad_json.json()["error"]["message"]
    missing = httpx.post(f"{base_url}/chat/completions", json={"messages": HELLO}).json()["error"]
    assert missing == {"message": "model: Field required", "type": "invalid_request_error", "param": "model",
                       "code": None}
    assert httpx.get(f"{base_url}/nothing").json()["error"]["code"] == "not_found"
    assert httpx.get(f"{base_url}/chat/completions").status_code == 405


def test_models_and_health(client, base_url):
    assert [m.id for m in client.models.list()] == ["tiny-llama"]
    assert httpx.get(base_url.removesuffix("/v1") + "/health").json() == {"status": "ok"}


def test_concurrent_requests_are_queued_and_all_answered_in_full(client):
    conversations = [[{"role": "user", "content": c}] for c in ("Hi!", "What is 2+2?", "Cats or dogs?", "A poem.")]
    sequential = [ask(client, messages=m, temperature=0, max_tokens=20).choices[0].message.content
                  for m in conversations]

    def concurrent(i):
        if i % 2:  # half of them streamed
            chunks = ask(client, messages=conversations[i], temperature=0, max_tokens=20, stream=True)
            return "".join(c.choices[0].delta.content or "" for c in chunks)
        return ask(client, messages=conversations[i], temperature=0, max_tokens=20).choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(concurrent, range(4))) == sequential
    assert len(set(sequential)) == 4


def test_streaming_load_test(base_url):
    result = loadtest.chat_load_test(base_url, ["Hi!", "Tell me a story."], concurrency=2, requests=4, max_tokens=5,
                                     warmup=1)
    assert result.failures == 0 and result.requests == 4 and result.tokens == (5, 5, 5, 5)
    assert all(0 < first <= total for first, total in zip(result.first_token, result.total))
    assert result.tokens_per_s > 0 and result.first_token_ms(50) <= result.first_token_ms(95)
    table = loadtest.chat_load_table([result]).splitlines()
    assert "TTFT p95 ms" in table[0] and table[1].split()[:3] == ["2", "4", "0"]
    bad = loadtest.chat_load_test(base_url, ["x" * 5000], requests=2, warmup=0)  # every request refused
    assert bad.failures == 2 and bad.requests == 2
    with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
        loadtest.chat_load_test(base_url, ["x"], concurrency=0)


def test_launcher_starts_and_stops_the_service(tiny_folder):
    with ChatServiceProcess(tiny_folder, model_name="tiny", max_new_tokens=8) as service:
        assert service.running() and service.base_url == f"{service.url}/v1"
        with openai.OpenAI(base_url=service.base_url, api_key="not-needed", max_retries=0) as client:
            answer = client.chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, temperature=0)
        assert answer.model == "tiny" and answer.usage.completion_tokens <= 8
        pid = service.pid
    assert not service.running() and service.process.returncode in (0, -15)
    assert not _alive(pid) and "Traceback" not in service.log()


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_engine_refuses_limits_past_the_context(tiny_folder, tokenizer):
    with pytest.raises(ValueError, match="exceeds the model's context of 1024"):
        ChatEngine(Llama.from_pretrained(tiny_folder), tokenizer, "x", max_prompt_tokens=1000, max_new_tokens=100)


@pytest.mark.slow
def test_real_smollm_answers_as_chat_reply():
    import uvicorn

    engine = load_chat_engine(threads=None)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    expected = chat.reply(engine.model, engine.tokenizer, messages, max_new_tokens=24)
    port = serve.free_port()
    server = uvicorn.Server(uvicorn.Config(create_chat_app(engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            assert thread.is_alive()
            time.sleep(0.05)
        with openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="not-needed", max_retries=0) as client:
            answer = client.chat.completions.create(model=engine.model_name, messages=messages, max_tokens=24,
                                                    temperature=0)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.close()
    assert answer.choices[0].message.content.strip() == expected and "Paris" in expected


def test_benchmark_script_runs_tiny(tiny_folder, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "chat_service.py"
    spec = importlib.util.spec_from_file_location("benchmark_chat_service", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--fast", "--model", str(tiny_folder), "--concurrency", "1", "2"])
    table = capsys.readouterr().out.splitlines()[-3:]
    assert "TTFT p50 ms" in table[0] and [row.split()[:3] for row in table[1:]] == [["1", "2", "0"], ["2", "2", "0"]]
    assert all(r.tokens == (8, 8) for r in results)
    with pytest.raises(SystemExit):
        module.main(["--requests", "0"])

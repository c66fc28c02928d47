"""course_lib.generate on a small random Llama: cached = uncached, stopping rules, sampling, streaming."""

import numpy as np
import pytest
import torch

from course_lib.generate import generate, generate_batch, show_stream, stream
from course_lib.llama import Llama, LlamaConfig
from course_lib.sampling import SamplingConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = Llama(LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=8, max_positions=128))
    for p in net.parameters():  # larger weights: a less uniform next-token distribution
        p.data.normal_(0, 0.5)
    return net.eval()


PROMPT = torch.tensor([[3, 7, 1, 4]])


def test_cached_and_uncached_generation_agree(model):
    assert generate(model, PROMPT, 30) == generate(model, PROMPT, 30, use_cache=False)
    sampled = SamplingConfig(temperature=0.8, top_k=10, top_p=0.9, repetition_penalty=1.2)
    a = generate(model, PROMPT, 30, sampled, generator=torch.Generator().manual_seed(1))
    b = generate(model, PROMPT, 30, sampled, use_cache=False, generator=torch.Generator().manual_seed(1))
    assert a == b


def test_greedy_is_the_argmax_of_the_full_forward(model):
    ids = PROMPT
    for _ in range(10):
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert generate(model, PROMPT, 10) == ids[0, 4:].tolist()


def test_an_end_token_is_yielded_and_stops_the_stream(model):
    free = generate(model, PROMPT, 20)
    end = free[5]
    first = free.index(end)
    assert generate(model, PROMPT, 20, eos_token_id=end) == free[:first + 1]
    assert generate(model, PROMPT, 20, eos_token_id=[999, end]) == free[:first + 1]
    assert generate(model, PROMPT, 20, eos_token_id=np.int64(end)) == free[:first + 1]
    with pytest.raises(ValueError, match="eos_token_id must be a token id"):
        generate(model, PROMPT, 20, eos_token_id="</s>")


def test_a_stop_string_ends_the_stream_after_the_token_that_completes_it(model):
    free = generate(model, PROMPT, 20)
    decode = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731
    stop = f"t{free[6]} t{free[7]}"
    got = generate(model, PROMPT, 20, stop_strings=[stop], decode=decode)
    assert stop in decode(got) and stop not in decode(got[:-1]) and got == free[:len(got)]
    with pytest.raises(ValueError, match="stop_strings need decode"):
        generate(model, PROMPT, 5, stop_strings=["x"])
    with pytest.raises(ValueError, match="stop_strings must be a list of non-empty strings, got 't9'"):
        generate(model, PROMPT, 5, stop_strings="t9", decode=decode)


def test_seeded_sampling_is_reproducible_and_seeds_differ(model):
    config = SamplingConfig(temperature=1.5)
    runs = [generate(model, PROMPT, 25, config, generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert runs[0] == runs[1] and runs[0] != runs[2]


def test_stream_is_lazy_and_leaves_the_training_mode_as_it_was(model):
    model.train()
    tokens = stream(model, PROMPT, 5)
    assert next(tokens) == generate(model, PROMPT, 1)[0]
    tokens.close()
    assert model.training
    model.eval()


@pytest.mark.parametrize("ids, n, message", [
    (torch.tensor([[1, 2], [3, 4]]), 3, r"one non-empty prompt of shape \(1, T\)"),
    (torch.zeros(1, 0, dtype=torch.long), 3, "one non-empty prompt"),
    (PROMPT, -1, "max_new_tokens must be an int >= 0"),
])
def test_bad_arguments_are_refused(model, ids, n, message):
    with pytest.raises(ValueError, match=message):
        generate(model, ids, n)


def test_zero_new_tokens_and_the_whole_context(model):
    assert generate(model, PROMPT, 0) == []
    assert len(generate(model, PROMPT, 128 - 4 + 1)) == 125  # the last token is never fed back
    with pytest.raises(ValueError, match="max_new_tokens=126 after a prompt of 4 tokens would go past"):
        generate(model, PROMPT, 126)


def test_show_stream_prints_the_final_text_when_headless(capsys, monkeypatch):
    monkeypatch.setenv("COURSE_HEADLESS", "1")
    text = show_stream(iter([1, 2, 3]), lambda ids: "".join("abc"[i - 1] for i in ids), prefix="> ")
    assert text == "abc" and capsys.readouterr().out == "> abc\n"


def test_a_batch_of_prompts_of_different_lengths_gives_each_prompt_alone(model):
    prompts = [[3, 7, 1, 4], [9], [5, 6, 7, 8, 9, 10, 11], [2, 2]]
    batch = generate_batch(model, prompts, 20)
    assert batch == [generate(model, torch.tensor([p]), 20) for p in prompts]


def test_a_batch_row_stops_at_its_end_token_and_the_others_go_on(model):
    prompts = [[3, 7, 1, 4], [5, 6, 7]]
    alone = [generate(model, torch.tensor([p]), 20) for p in prompts]
    end = alone[0][5]
    stopped = generate_batch(model, prompts, 20, eos_token_id=end)
    assert stopped == [generate(model, torch.tensor([p]), 20, eos_token_id=end) for p in prompts]
    assert stopped[0][-1] == end and len(stopped[0]) <= 6
    assert generate_batch(model, prompts, 0) == [[], []]


def test_seeded_batch_sampling_is_reproducible_and_bad_prompts_are_refused(model):
    sampled = SamplingConfig(temperature=1.0, top_p=0.9)
    a = generate_batch(model, [[1, 2], [3]], 15, sampled, generator=torch.Generator().manual_seed(3))
    b = generate_batch(model, [[1, 2], [3]], 15, sampled, generator=torch.Generator().manual_seed(3))
    assert a == b and a != generate_batch(model, [[1, 2], [3]], 15)
    with pytest.raises(ValueError, match="prompts"):
        generate_batch(model, [[1], []], 3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate_batch(model, [[1]], -1)


def test_the_repetition_penalty_of_a_batch_row_sees_its_own_tokens_not_the_padding(model):
    prompts = [[3, 7, 1, 4, 9, 9, 2], [5, 6]]
    penalised = SamplingConfig.greedy(repetition_penalty=2.0)
    alone = [generate(model, torch.tensor([p]), 12, penalised) for p in prompts]
    for pad in (0, 9, alone[1][0]):  # a padding id the short row never saw, or one it will generate
        assert generate_batch(model, prompts, 12, penalised, pad_token_id=pad) == alone

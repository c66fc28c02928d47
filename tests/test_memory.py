"""course_lib.memory: parameter counts equal the real models', the training-memory estimate is within
15% of the peak measured by intercepting every tensor allocation, and checkpointing changes memory,
not results."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from course_lib import memory
from course_lib.gpt import GPT, GPTConfig, causal_lm_loss


@pytest.mark.parametrize("config", [GPTConfig(vocab_size=100, block_size=16, n_layer=2, n_head=2, n_embd=32),
                                    GPTConfig(vocab_size=5000, block_size=64, n_layer=3, n_head=4, n_embd=96)])
def test_parameter_count_of_the_course_gpt_is_exact(config):
    assert memory.count_parameters(config) == sum(p.numel() for p in GPT(config).parameters())


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_parameter_count_of_a_llama_is_exact(kv_heads):
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=kv_heads, tie_word_embeddings=False)
    assert memory.shape_of(config).gated and not memory.shape_of(config).tied
    assert memory.count_parameters(config) == sum(p.numel() for p in LlamaForCausalLM(config).parameters())


@pytest.mark.parametrize("name, published", [("BERT-base (110M)", 110e6), ("TinyLlama (1.1B)", 1.1e9),
                                             ("LLaMA-2 (7B)", 6.74e9), ("GPT-3 (175B)", 175e9)])
def test_reference_models_have_their_published_sizes(name, published):
    assert memory.count_parameters(memory.REFERENCE_MODELS[name]) == pytest.approx(published, rel=0.05)


def _training_steps(config, batch, seq, optimizer="adamw", dtype=torch.float32, checkpointing=False):
    def run():
        torch.manual_seed(0)
        model = GPT(config).to(dtype)
        if checkpointing:
            memory.checkpoint_blocks(model.blocks)
        make = {"adamw": lambda p: torch.optim.AdamW(p, lr=1e-3, fused=True),
                "sgd": lambda p: torch.optim.SGD(p, lr=1e-3),
                "sgd_momentum": lambda p: torch.optim.SGD(p, lr=1e-3, momentum=0.9)}[optimizer]
        opt = make(model.parameters())
        x = torch.randint(0, config.vocab_size, (batch, seq))
        for _ in range(2):  # the second step holds the optimizer state
            causal_lm_loss(model(x), x).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    return run


@pytest.mark.parametrize("layers, hidden, vocab, batch, seq, optimizer, dtype, checkpointing", [
    (4, 128, 4000, 8, 128, "adamw", torch.float32, False),     # activations and logits dominate
    (6, 384, 2000, 1, 32, "adamw", torch.float32, False),      # weights and optimizer state dominate
    (2, 128, 16000, 8, 64, "sgd", torch.float32, False),       # a large vocabulary, no optimizer state
    (4, 128, 2000, 8, 128, "sgd_momentum", torch.float32, True),
    (4, 128, 4000, 8, 128, "adamw", torch.bfloat16, False),
])
def test_estimate_is_within_15_percent_of_the_measured_peak(layers, hidden, vocab, batch, seq, optimizer, dtype,
                                                             checkpointing):
    config = GPTConfig(vocab_size=vocab, block_size=seq, n_layer=layers, n_head=4, n_embd=hidden)
    measured = memory.measure_peak(_training_steps(config, batch, seq, optimizer, dtype, checkpointing))
    estimate = memory.estimate_training_memory(config, batch, seq, str(dtype).removeprefix("torch."), optimizer,
                                               checkpointing=checkpointing)
    assert estimate.peak == pytest.approx(measured, rel=0.15)


def test_checkpointing_saves_memory_and_changes_nothing_else():
    config = GPTConfig(vocab_size=500, block_size=64, n_layer=4, n_head=4, n_embd=64)
    torch.manual_seed(0)
    plain = GPT(config)
    wrapped = GPT(config)
    wrapped.load_state_dict(plain.state_dict())
    memory.checkpoint_blocks(wrapped.blocks)
    x = torch.randint(0, 500, (4, 64))
    for model in (plain, wrapped):
        causal_lm_loss(model(x), x).backward()
    for (name, a), b in zip(plain.named_parameters(), wrapped.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
    full = memory.estimate_training_memory(config, 4, 64)
    light = memory.estimate_training_memory(config, 4, 64, checkpointing=True)
    assert light.activations < full.activations and light.recompute > 0


def test_measure_peak_counts_live_tensors_exactly():
    def fn():
        kept = torch.zeros(1000)            # 4,000 bytes, alive to the end
        transient = torch.zeros(2000)       # 8,000 bytes, freed before the next allocation
        del transient
        return kept, torch.zeros(500)       # 2,000 bytes
    assert memory.measure_peak(fn) == 12000
    existing = torch.zeros(10**6)
    assert memory.measure_peak(lambda: existing.add_(1)) == 0  # in place, and made before: nothing new


def test_mixed_precision_costs_16_bytes_per_parameter_with_adamw():
    shape = memory.REFERENCE_MODELS["LLaMA-2 (7B)"]
    estimate = memory.estimate_training_memory(shape, 1, 2048, "mixed", "adamw")
    state = estimate.weights + estimate.gradients + estimate.optimizer
    assert state == 16 * estimate.parameters


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(batch=0), ValueError, "batch must be an int >= 1, got 0"),
    (dict(seq=2.5), ValueError, "seq must be an int >= 1, got 2.5"),
    (dict(dtype="fp8"), ValueError, "dtype must be one of"),
    (dict(optimizer="adam"), ValueError, "optimizer must be one of"),
    (dict(seq=65), ValueError, "longer than the model's 64 positions"),
    (dict(config={"layers": 2}), TypeError, "config must be a GPTConfig"),
])
def test_bad_arguments_are_clear_errors(kwargs, error, message):
    arguments = dict(config=GPTConfig(vocab_size=50, block_size=64), batch=2, seq=16) | kwargs
    with pytest.raises(error, match=message):
        memory.estimate_training_memory(**arguments)


def test_format_bytes():
    assert [memory.format_bytes(n) for n in (0, 1023, 1536, 3 * 2**30, 2**45)] == ["0 B", "1023 B", "1.5 KiB", "3 GiB",
                                                                                 "32 TiB"]
    with pytest.raises(ValueError, match="finite number >= 0"):
        memory.format_bytes(-1)

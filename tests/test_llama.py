"""course_lib.llama against transformers' LlamaForCausalLM: every piece on random inputs, a small
random model end to end, and the real SmolLM2-135M weights on real prompts (fp32)."""

import copy

import pytest
import torch
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM
from transformers.models.llama import modeling_llama as hf

from course_lib import llama
from course_lib.kv_cache import KVCache, cache_bytes
from course_lib.llama import Llama, LlamaConfig

TINY = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=6,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-5,
            rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=True)
PROMPTS = ["The capital of France is", "Once upon a time, there was a little robot who",
           "def fibonacci(n):", "Photosynthesis converts", "I think the movie was"]


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    config = HFConfig(**TINY, attn_implementation="eager")
    reference = LlamaForCausalLM(config).eval()
    ours = Llama.from_state_dict(LlamaConfig.from_hf(config), reference.state_dict())
    return reference, ours


def test_config_is_read_from_a_transformers_config():
    config = LlamaConfig.from_hf(HFConfig(**TINY))
    assert (config.num_layers, config.num_heads, config.num_kv_heads, config.head_dim) == (2, 6, 2, 8)
    with pytest.raises(ValueError, match="num_kv_heads"):
        LlamaConfig(num_heads=9, num_kv_heads=2)
    with pytest.raises(ValueError, match="rope type 'yarn'"):
        LlamaConfig.from_hf(TINY | {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}})
    with pytest.raises(ValueError, match="rope type 'llama3'"):  # a config written before transformers 5
        LlamaConfig.from_hf(TINY | {"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(ValueError, match="lacks num_hidden_layers"):
        LlamaConfig.from_hf({k: v for k, v in TINY.items() if k != "num_hidden_layers"})
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        LlamaConfig.from_hf(TINY | {"hidden_act": "gelu"})


def test_rmsnorm_matches_transformers():
    torch.manual_seed(1)
    ref = hf.LlamaRMSNorm(48, eps=1e-5)
    ref.weight.data.normal_()
    ours = llama.RMSNorm(48, eps=1e-5)
    ours.weight.data.copy_(ref.weight.data)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(3, 7, 48).to(dtype) * 5
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)


def test_rotary_cache_and_rotation_match_transformers():
    config = HFConfig(**TINY)
    rotary = hf.LlamaRotaryEmbedding(config)
    positions = torch.tensor([[0, 1, 2, 5, 90]])
    cos_ref, sin_ref = rotary(torch.zeros(1, dtype=torch.float32), positions)
    cos, sin = llama.RotaryEmbedding(8, 128, 10000.0)(positions[0])
    torch.testing.assert_close(cos, cos_ref[0], rtol=0, atol=0)
    torch.testing.assert_close(sin, sin_ref[0], rtol=0, atol=0)
    q, k = torch.randn(2, 6, 5, 8), torch.randn(2, 2, 5, 8)
    q_ref, k_ref = hf.apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    torch.testing.assert_close(llama.apply_rotary(q, cos, sin), q_ref, rtol=0, atol=0)
    torch.testing.assert_close(llama.apply_rotary(k, cos, sin), k_ref, rtol=0, atol=0)


def test_rotation_keeps_length_and_makes_scores_depend_on_distance_only():
    torch.manual_seed(2)
    rotary = llama.RotaryEmbedding(16, 64)
    q, k = torch.randn(16), torch.randn(16)

    def score(i, j):
        cos, sin = rotary(torch.tensor([i, j]))
        return (llama.apply_rotary(q, cos[0], sin[0]) @ llama.apply_rotary(k, cos[1], sin[1])).item()

    cos, sin = rotary(torch.tensor([7]))
    torch.testing.assert_close(llama.apply_rotary(q, cos[0], sin[0]).norm(), q.norm())
    assert score(3, 1) == pytest.approx(score(40, 38), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    with pytest.raises(ValueError, match="max_positions"):
        rotary(torch.tensor([64]))


def test_repeat_kv_matches_transformers_and_repeat_interleave():
    x = torch.randn(2, 3, 5, 4)
    torch.testing.assert_close(llama.repeat_kv(x, 3), hf.repeat_kv(x, 3), rtol=0, atol=0)
    torch.testing.assert_close(llama.repeat_kv(x, 3), x.repeat_interleave(3, dim=1), rtol=0, atol=0)
    assert llama.repeat_kv(x, 1) is x
    with pytest.raises(ValueError, match="n_rep"):
        llama.repeat_kv(x, 0)


def test_mlp_attention_and_block_match_transformers(tiny):
    reference, ours = tiny
    torch.manual_seed(3)
    x = torch.randn(2, 9, 48)
    positions = torch.arange(9)
    cos, sin = ours.rotary(positions)
    ref_layer, our_layer = reference.model.layers[1], ours.layers[1]
    with torch.no_grad():
        torch.testing.assert_close(our_layer.mlp(x), ref_layer.mlp(x), rtol=1e-5, atol=1e-6)
        ref_attn = ref_layer.self_attn(x, position_embeddings=(cos[None], sin[None]),
                                       attention_mask=_additive_causal(9))[0]
        torch.testing.assert_close(our_layer.self_attn(x, cos, sin), ref_attn, rtol=1e-5, atol=1e-6)
        ref_block = ref_layer(x, attention_mask=_additive_causal(9), position_embeddings=(cos[None], sin[None]))
        torch.testing.assert_close(our_layer(x, cos, sin), ref_block, rtol=1e-5, atol=1e-6)


def _additive_causal(t):
    return torch.full((t, t), float("-inf")).triu(1)[None, None]


def test_small_random_model_matches_transformers_logits(tiny):
    reference, ours = tiny
    ids = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids), reference(ids).logits, rtol=1e-5, atol=1e-5)
    assert ours.lm_head.weight is ours.embed_tokens.weight  # tied, as in the checkpoint


def test_cached_decoding_equals_recomputing_the_whole_sequence(tiny):
    _, ours = tiny
    ids = torch.randint(0, 97, (2, 70), generator=torch.Generator().manual_seed(5))
    cache = ours.new_cache(batch=2, max_len=70)
    with torch.no_grad():
        full = ours(ids)
        steps = [ours(ids[:, :6], cache=cache)]
        steps += [ours(ids[:, t:t + 1], cache=cache) for t in range(6, 70)]  # 64 cached steps
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert cache.length == 70
    with pytest.raises(ValueError, match="max_len=70"):
        ours(ids[:, :1], cache=cache)


def test_left_padding_with_a_cache_gives_the_unpadded_logits(tiny):
    """A batch of two prompts, the shorter padded on the left, prefilled and then decoded together:
    each row equals its prompt run alone."""
    _, ours = tiny
    ids = torch.randint(0, 97, (2, 10), generator=torch.Generator().manual_seed(8))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :4] = 0  # row 1 is a 6-token prompt
    new = torch.randint(0, 97, (2, 3), generator=torch.Generator().manual_seed(9))
    cache = ours.new_cache(batch=2, max_len=13)
    with torch.no_grad():
        steps = [ours(ids, cache=cache, attention_mask=mask)[:, -1:]]
        for t in range(3):
            mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
            steps.append(ours(new[:, t:t + 1], cache=cache, attention_mask=mask))
        alone = ours(torch.cat([ids[1:, 4:], new[1:]], dim=1))[0, 5:]
    torch.testing.assert_close(torch.cat(steps, dim=1)[1], alone, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"attention_mask must have shape \(batch, cached \+ new\) = \(2, 14\)"):
        ours(new[:, :1], cache=cache, attention_mask=mask)


def test_a_bf16_checkpoint_gives_a_bf16_model_equal_to_transformers_in_bf16(tiny):
    reference, _ = tiny
    half_ref = LlamaForCausalLM(reference.config).eval()
    half_ref.load_state_dict(reference.state_dict())
    half_ref = half_ref.to(torch.bfloat16)
    half = Llama.from_state_dict(LlamaConfig.from_hf(reference.config), half_ref.state_dict())
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16} and half.new_cache().keys[0].dtype == torch.bfloat16
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        torch.testing.assert_close(half(ids), half_ref(ids).logits, rtol=0.02, atol=0.02)


def test_the_context_limit_is_checked_before_any_work(tiny):
    _, ours = tiny
    with pytest.raises(ValueError, match="129 positions exceed the context of max_positions=128"):
        ours(torch.zeros(1, 129, dtype=torch.long))
    with pytest.raises(ValueError, match="max_len must be <= max_positions=128"):
        ours.new_cache(max_len=200)
    with pytest.raises(ValueError, match="input_ids must be a"):
        ours([[1, 2]])


def test_last_only_gives_the_last_positions_logits(tiny):
    _, ours = tiny
    ids = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids, last_only=True), ours(ids)[:, -1:], rtol=1e-6, atol=1e-6)


def test_right_padding_leaves_the_real_tokens_unchanged(tiny):
    _, ours = tiny
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(6))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 8:] = 0
    with torch.no_grad():
        padded = ours(ids, attention_mask=mask)
        alone = ours(ids[1:, :8])
    torch.testing.assert_close(padded[1, :8], alone[0], rtol=1e-5, atol=1e-5)


def test_cache_memory_is_what_the_formula_says():
    cache = KVCache(n_layers=30, batch=1, n_kv_heads=3, max_len=1000, head_dim=64)
    assert cache.nbytes == cache_bytes(30, 3, 64, 1000) == 2 * 30 * 3 * 64 * 1000 * 4
    assert cache_bytes(30, 9, 64, 1000) == 3 * cache.nbytes  # without GQA: three times as much
    assert cache_bytes(30, 3, 64, 1000, dtype=torch.bfloat16) == cache.nbytes // 2
    with pytest.raises(ValueError, match="shape"):
        cache.update(0, torch.zeros(1, 9, 1, 64), torch.zeros(1, 9, 1, 64))


def test_a_mismatched_checkpoint_is_refused_with_the_names_that_differ(tiny):
    reference, _ = tiny
    state = dict(reference.state_dict())
    state["model.layers.0.mlp.extra.weight"] = state.pop("model.layers.0.mlp.up_proj.weight")
    state["model.norm.weight"] = torch.ones(50)
    with pytest.raises(ValueError) as error:
        Llama.from_state_dict(LlamaConfig.from_hf(HFConfig(**TINY)), state)
    message = str(error.value)
    assert "missing layers.0.mlp.up_proj.weight" in message
    assert "unexpected layers.0.mlp.extra.weight" in message
    assert "norm.weight: (50,) vs (48,)" in message


def test_bad_input_ids_are_refused(tiny):
    _, ours = tiny
    with pytest.raises(ValueError, match="input_ids"):
        ours(torch.randn(2, 3))


# --- the real weights ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    from course_lib import smollm

    folder = smollm.model_folder()
    return Llama.from_pretrained(folder), smollm.load_hf_model(folder), smollm.load_tokenizer(folder)


def test_smollm2_logits_match_transformers_on_real_prompts(smollm2):
    ours, reference, tokenizer = smollm2
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.no_grad():
            torch.testing.assert_close(ours(ids), reference(ids).logits, rtol=0, atol=1e-4)


@pytest.mark.slow
def test_smollm2_greedy_output_equals_transformers_generate(smollm2):
    """50 tokens token for token on five prompts (the end token switched off on both sides, so that
    every comparison is 50 tokens long), and one chat reply with the end token on."""
    from course_lib.generate import generate

    ours, reference, tokenizer = smollm2
    eos, reference.generation_config.eos_token_id = reference.generation_config.eos_token_id, None
    try:  # (a generation_config argument would be merged with the model's, end token included)
        for prompt in PROMPTS:
            ids = tokenizer(prompt, return_tensors="pt").input_ids
            expected = reference.generate(ids, max_new_tokens=50, do_sample=False)[0, ids.shape[1]:].tolist()
            assert generate(ours, ids, 50) == expected, prompt
    finally:
        reference.generation_config.eos_token_id = eos
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "Name three colours."}],
                                         add_generation_prompt=True, return_tensors="pt", return_dict=True)
    ids = chat["input_ids"]
    expected = reference.generate(ids, max_new_tokens=60, do_sample=False)[0, ids.shape[1]:].tolist()
    got = generate(ours, ids, 60, eos_token_id=tokenizer.eos_token_id)
    assert got == expected  # both stop at the end token, or both after 60 tokens


@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-5), (torch.float32, 1e-3)])
def test_smollm2_cached_and_uncached_logits_agree_over_64_steps(smollm2, dtype, atol):
    """In float64 the two routes agree to rounding (the algorithm is exact); in float32 they differ by
    ~1e-4 on logits of size ~20, because a (1 × d) and a (T × d) matrix product sum in different orders."""
    ours = smollm2[0] if dtype == torch.float32 else copy.deepcopy(smollm2[0]).to(dtype)
    ids = smollm2[2]("The history of the printing press", return_tensors="pt").input_ids
    ids = torch.cat([ids, torch.randint(100, 40000, (1, 64), generator=torch.Generator().manual_seed(7))], dim=1)
    cache = ours.new_cache(max_len=ids.shape[1])
    start = ids.shape[1] - 64
    with torch.no_grad():
        full = ours(ids)
        steps = [ours(ids[:, :start], cache=cache)[:, -1:]]  # the prefill predicts position start
        steps += [ours(ids[:, t:t + 1], cache=cache) for t in range(start, ids.shape[1])]  # 64 decode steps
    torch.testing.assert_close(torch.cat(steps, dim=1), full[:, start - 1:], rtol=0, atol=atol)

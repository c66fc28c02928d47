"""Generation with SmolLM2-135M: the course's decoder (course_lib.llama + course_lib.generate) against
transformers' LlamaForCausalLM.generate on the same weights and threads, with and without a KV cache,
greedy, measured side by side in one run; then prefill vs decode speed, bf16 vs fp32, and the
memory of a full-context cache (computed vs measured).

    python benchmarks/generation.py [--new-tokens 32 128 512] [--device auto] [--tiny]

``--tiny`` runs a random two-layer model instead (a smoke test of the script; its numbers mean nothing).
"""

from __future__ import annotations

import argparse
import time

import torch

from course_lib.bench import peak_memory
from course_lib.generate import generate
from course_lib.kv_cache import cache_bytes
from course_lib.llama import Llama, LlamaConfig
from course_lib.runtime import setup

PROMPT = "The history of the printing press begins"
TINY = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, rms_norm_eps=1e-5,
            rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=True)


def positive(text: str) -> int:
    """An argparse type: an int >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def load(tiny: bool, device: torch.device):
    """(our model, transformers' model, prompt ids) on ``device``, with the same weights."""
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM

    if tiny:
        reference = LlamaForCausalLM(HFConfig(**TINY)).eval()
        ids = torch.arange(3, 11)[None]
    else:
        from course_lib import smollm

        folder = smollm.model_folder()
        reference = smollm.load_hf_model(folder)
        ids = smollm.load_tokenizer(folder)(PROMPT, return_tensors="pt").input_ids
    reference.generation_config.eos_token_id = None  # every run makes exactly the tokens asked for
    ours = Llama.from_state_dict(LlamaConfig.from_hf(reference.config), reference.state_dict())
    return ours.to(device), reference.to(device), ids.to(device)


def timed(fn, sync) -> float:
    """Seconds one call of ``fn`` takes (one run: the generations here are long enough)."""
    start = time.perf_counter()
    fn()
    if sync is not None:
        sync()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=positive, nargs="+", default=[32, 128, 512])
    parser.add_argument("--prefill", type=positive, default=256, help="prompt length of the prefill measurement")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tiny", action="store_true", help="a random two-layer model (smoke test)")
    args = parser.parse_args(argv)
    session = setup(seed=0, device=args.device)
    device = session.device
    sync = torch.accelerator.synchronize if device.type != "cpu" else None
    ours, reference, ids = load(args.tiny, device)
    if ids.shape[1] + max(args.new_tokens) > ours.config.max_positions:
        parser.error(f"--new-tokens: at most {ours.config.max_positions - ids.shape[1]} fit this model's context")
    # memory first, while the heap holds no freed blocks a new cache could reuse unseen
    c = ours.config
    full = c.max_positions
    computed = cache_bytes(c.num_layers, c.num_kv_heads, c.head_dim, full)
    measured = peak_memory(lambda: _touch(ours.new_cache(1, full)), device)

    def hf(n: int, cache: bool):
        with torch.no_grad():
            return reference.generate(ids, max_new_tokens=n, do_sample=False, use_cache=cache)

    print(f"greedy generation, prompt of {ids.shape[1]} tokens, float32, tokens per second (one run each)")
    print(f"{'new':>5} {'ours cache':>11} {'ours none':>10} {'hf cache':>9} {'hf none':>8} "
          f"{'cache speed-up ours':>20} {'hf':>6} {'ours/hf':>8} {'same':>5}")
    for warm_up in (lambda: generate(ours, ids, 4), lambda: generate(ours, ids, 4, use_cache=False),
                    lambda: hf(4, True), lambda: hf(4, False)):
        warm_up()  # first calls allocate and pick kernels
    for n in args.new_tokens:
        times = {"ours cache": timed(lambda: generate(ours, ids, n), sync),
                 "ours none": timed(lambda: generate(ours, ids, n, use_cache=False), sync),
                 "hf cache": timed(lambda: hf(n, True), sync),
                 "hf none": timed(lambda: hf(n, False), sync)}
        same = generate(ours, ids, min(n, 64)) == hf(min(n, 64), True)[0, ids.shape[1]:].tolist()
        rate = {name: n / t for name, t in times.items()}
        print(f"{n:>5} {rate['ours cache']:>11.1f} {rate['ours none']:>10.1f} {rate['hf cache']:>9.1f} "
              f"{rate['hf none']:>8.1f} {times['ours none'] / times['ours cache']:>19.1f}x "
              f"{times['hf none'] / times['hf cache']:>5.1f}x {times['hf cache'] / times['ours cache']:>7.2f}x {str(same):>5}")

    prompt = torch.randint(100, ours.config.vocab_size, (1, args.prefill), generator=torch.Generator().manual_seed(0)).to(device)
    with torch.no_grad():
        ours(prompt, cache=ours.new_cache(1, args.prefill), last_only=True)  # warm-up at this shape
        cache = ours.new_cache(1, args.prefill + 32)
        t_prefill = timed(lambda: ours(prompt, cache=cache, last_only=True), sync)
        token = prompt[:, -1:]
        t_decode = timed(lambda: [ours(token, cache=cache, last_only=True) for _ in range(32)], sync)
    print(f"\nprefill of {args.prefill} tokens: {args.prefill / t_prefill:.0f} tokens/s; "
          f"decode: {32 / t_decode:.1f} tokens/s ({(args.prefill / t_prefill) / (32 / t_decode):.0f}x fewer per second)")

    n = args.new_tokens[min(1, len(args.new_tokens) - 1)]
    half = Llama.from_state_dict(ours.config, {k: v.to(torch.bfloat16) for k, v in ours.state_dict().items()}).to(device)
    generate(half, ids, 4)  # warm-up
    t32, t16 = timed(lambda: generate(ours, ids, n), sync), timed(lambda: generate(half, ids, n), sync)
    agree = sum(a == b for a, b in zip(generate(ours, ids, n), generate(half, ids, n)))
    print(f"bf16 vs fp32, {n} cached tokens: fp32 {n / t32:.1f} tokens/s, bf16 {n / t16:.1f} tokens/s "
          f"({t32 / t16:.2f}x); greedy tokens equal to fp32's: {agree} of {n}")

    print(f"KV cache for the full context of {full} positions, fp32: computed {computed / 2**20:.0f} MiB, "
          f"measured {measured / 2**20:.0f} MiB; per token {computed // full:,} bytes; without grouped-query "
          f"attention ({c.num_heads} kv heads) {cache_bytes(c.num_layers, c.num_heads, c.head_dim, full) / 2**20:.0f} MiB")


def _touch(cache) -> None:
    """Write every element, so the operating system really gives the memory (zeros are lazy)."""
    for tensor in cache.keys + cache.values:
        tensor.fill_(1.0)


if __name__ == "__main__":
    main()

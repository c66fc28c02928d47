"""Training-step throughput of a BERT-base-sized classifier, precision by precision, side by side in
one run: tokens/s, samples/s and approximate model TFLOP/s (and the share of the GPU's peak).

    python benchmarks/gpu_finetune.py                    # on a GPU: every variant, B=64, T=128
    python benchmarks/gpu_finetune.py --variants fp32,bf16-compile --steps 30
    python benchmarks/gpu_finetune.py --tiny             # a tiny model (the default without a GPU): checks the script

Self-contained: the model is ``transformers.BertForSequenceClassification`` built from a config
(random weights, nothing downloaded) and the batches are random token ids, because a step's speed
does not depend on what the numbers are. Variants:

  fp32            float32, naive ("eager") attention, for-each AdamW
  tf32            as fp32 with TensorFloat-32 matrix multiplications (GPU only)
  bf16            bf16 autocast, naive attention
  fp16-scaler     fp16 autocast with a GradScaler (GPU only), SDPA attention
  bf16-compile    bf16 autocast + SDPA attention + torch.compile + fused AdamW
  best            bf16-compile with mode="max-autotune" and --best-batch sequences per step (GPU only)

FLOPs per token = 6 x (parameters in matrix multiplications) + 12 x layers x hidden x sequence
(attention scores and weighted sums, forward and backward), the usual approximation.
"""

from __future__ import annotations

import argparse
import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from course_lib import bench
from course_lib.runtime import describe_device, get_device, quiet_import_logs

VARIANTS = ("fp32", "tf32", "bf16", "fp16-scaler", "bf16-compile", "best")
GPU_ONLY = ("tf32", "fp16-scaler", "best")
# dense peak TFLOP/s from the vendor's data sheets (no sparsity), by precision
PEAKS = {"H200": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
         "H100": {"fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4},
         "A100": {"fp32": 19.5, "tf32": 156.0, "bf16": 312.0, "fp16": 312.0}}
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072)
TINY = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)


@dataclass
class Row:
    variant: str
    batch: int
    seq: int
    tokens_per_s: float
    samples_per_s: float
    tflops: float
    peak_share: float | None
    warmup_s: float
    peak_memory_gib: float | None


def flops_per_token(model: torch.nn.Module, layers: int, hidden: int, seq: int) -> float:
    matmul = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and "embeddings" not in name)
    return 6 * matmul + 12 * layers * hidden * seq


def _precision(variant: str) -> str:
    return {"fp32": "fp32", "tf32": "tf32", "fp16-scaler": "fp16"}.get(variant, "bf16")


def run_variant(variant: str, size: dict, batch: int, seq: int, steps: int, warmup: int,
                device: torch.device) -> Row:
    """Build a fresh model for ``variant``, run ``warmup`` untimed steps (compilation happens
    there), then time ``steps`` training steps."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    sdpa = variant not in ("fp32", "tf32", "bf16")
    config = BertConfig(**size, num_labels=2, attn_implementation="sdpa" if sdpa else "eager")
    model = BertForSequenceClassification(config).to(device).train()
    fused = variant in ("bf16-compile", "best")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=fused)
    forward = torch.compile(model, mode="max-autotune" if variant == "best" else None) if fused else model
    torch.backends.cuda.matmul.allow_tf32 = variant == "tf32"
    torch.backends.cudnn.allow_tf32 = variant == "tf32"
    precision = _precision(variant)
    autocast = (torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)
                if precision in ("bf16", "fp16") else contextlib.nullcontext())
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, config.vocab_size, (batch, seq), generator=generator).to(device)
    labels = torch.randint(0, 2, (batch,), generator=generator).to(device)

    def step() -> None:
        with autocast:
            loss = forward(input_ids=ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:  # fp16's narrow range: scale the loss so small gradients do not vanish
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()

    accelerator = device.type != "cpu"
    sync = (lambda: torch.accelerator.synchronize(device)) if accelerator else None
    if accelerator:
        torch.accelerator.reset_peak_memory_stats(device)
    # warm-up steps (compilation happens in the first) timed apart from the measured ones
    warmup_s = sum(bench.measure(step, name="warm-up", warmup=0, repeat=warmup, sync=sync).times) if warmup else 0.0
    timing = bench.measure(step, name=variant, warmup=0, repeat=steps, sync=sync)
    seconds = sum(timing.times)
    tokens_per_s = batch * seq * steps / seconds
    tflops = tokens_per_s * flops_per_token(model, size["num_hidden_layers"], size["hidden_size"], seq) / 1e12
    described = describe_device(device)
    peak = next((p[precision] for name, p in PEAKS.items() if accelerator and name in described), None)
    memory = torch.accelerator.max_memory_allocated(device) / 2**30 if accelerator else None
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    return Row(variant, batch, seq, tokens_per_s, batch * steps / seconds, tflops,
               tflops / peak if peak else None, warmup_s, memory)


def table(rows: list[Row]) -> str:
    base = rows[0].tokens_per_s
    lines = [f"{'variant':13} {'batch':>5} {'tokens/s':>10} {'samples/s':>9} {'TFLOP/s':>8} {'% peak':>6} "
             f"{'warm-up s':>9} {'GiB':>5}  vs {rows[0].variant}"]
    for r in rows:
        share = f"{100 * r.peak_share:5.1f}%" if r.peak_share is not None else "     -"
        memory = f"{r.peak_memory_gib:5.1f}" if r.peak_memory_gib is not None else "    -"
        lines.append(f"{r.variant:13} {r.batch:5d} {r.tokens_per_s:10,.0f} {r.samples_per_s:9,.1f} {r.tflops:8.2f} "
                     f"{share} {r.warmup_s:9.1f} {memory}  {r.tokens_per_s / base:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Row]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--best-batch", type=int, default=256, help="batch of the 'best' variant")
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    parser.add_argument("--device", default="auto", help="auto (the best here), cpu, cuda, cuda:N or mps")
    parser.add_argument("--tiny", action="store_true", help="a 2-layer, 64-wide model, batch 4 x 32: checks the script")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        parser.error(f"--variants must be a comma-separated list from {', '.join(VARIANTS)}, got {args.variants!r}")
    for name in ("batch", "best_batch", "seq", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        parser.error(f"--warmup must be >= 0, got {args.warmup}")
    try:
        device = get_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    if args.device == "auto" and device.type == "cpu" and not args.tiny:
        print("no GPU here: running the tiny configuration (--device cpu measures BERT-base on the CPU anyway)")
        args.tiny = True
    if device.type == "cpu":
        skipped = [v for v in variants if v in GPU_ONLY]
        variants = [v for v in variants if v not in GPU_ONLY]
        if skipped:
            print(f"on {device}: skipping the GPU-only variants {', '.join(skipped)}")
        if not variants:
            parser.error("no variant left to run on this device")
    quiet_import_logs()  # transformers imports torchao when it is installed; its load messages are noise here
    size = TINY if args.tiny else BERT_BASE
    batch, seq = (4, 32) if args.tiny else (args.batch, args.seq)
    print(f"torch {torch.__version__} on {describe_device(device)}; model {size}; batch {batch} x {seq} tokens; "
          f"{args.steps} timed steps after {args.warmup} warm-up steps", flush=True)
    rows = []
    for variant in variants:
        variant_batch = args.best_batch if variant == "best" and not args.tiny else batch
        rows.append(run_variant(variant, size, variant_batch, seq, args.steps, args.warmup, device))
        print(f"  {variant}: {rows[-1].tokens_per_s:,.0f} tokens/s", flush=True)
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=1))
    return rows


if __name__ == "__main__":
    main()

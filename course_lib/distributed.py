"""Data-parallel training with PyTorch's own distributed engine, launched by ``torchrun``.

    torchrun --standalone --nproc_per_node=2 -m course_lib.distributed --steps 40 --out runs/ddp
    torchrun --standalone --nproc_per_node=2 -m course_lib.distributed --strategy fsdp --out runs/fsdp
    python -m course_lib.distributed --steps 40 --out runs/single     # one process: the reference

Every process (a *rank*) builds the same character-level GPT (``course_lib.gpt``) on the same text
and reads a different slice of each global batch (``DistributedSampler``). With ``ddp``,
``DistributedDataParallel`` averages the gradients across ranks during ``backward``, so each step
equals one step on the whole global batch. With ``fsdp``, ``fully_shard`` also splits the
parameters, gradients and optimizer state across ranks (each holds 1/N of them) and gathers a
block's weights only while it computes. Rank 0 alone prints, and writes ``history.json`` (the loss
of every step, averaged over ranks) and ``model.safetensors``. The backend is gloo on CPUs and
nccl on GPUs.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from course_lib.arguments import require_int
from course_lib.gpt import GPT, GPTConfig, causal_lm_loss, character_windows
from course_lib.runtime import get_device

STRATEGIES = ("ddp", "fsdp")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="torchrun --standalone --nproc_per_node=N -m course_lib.distributed",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--strategy", choices=STRATEGIES, default="ddp", help="ddp (replicate) or fsdp (shard)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--global-batch", type=int, default=16, help="sequences per step, summed over ranks")
    parser.add_argument("--block", type=int, default=64, help="characters per sequence")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (3e-3 is already chaotic here)")
    parser.add_argument("--texts", type=int, default=2000, help="movie-review texts in the corpus")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto (a GPU per rank when there are GPUs) or cpu")
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--out", type=Path, default=None, help="rank 0 writes history.json and model.safetensors here")
    return parser


def _check(parser: argparse.ArgumentParser, args: argparse.Namespace, world: int) -> None:
    for name in ("steps", "global_batch", "block", "layers", "hidden", "heads", "texts", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.global_batch % world:
        parser.error(f"--global-batch ({args.global_batch}) must be divisible by the number of processes ({world})")
    if args.hidden % args.heads:
        parser.error(f"--hidden ({args.hidden}) must be divisible by --heads ({args.heads})")
    if not args.lr > 0:
        parser.error(f"--lr must be > 0, got {args.lr}")


def _wrap(model: torch.nn.Module, strategy: str, device: torch.device, world: int) -> torch.nn.Module:
    if world == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=None if device.index is None else [device.index])
    from torch.distributed.fsdp import fully_shard

    for block in model.blocks:  # one all-gather per block: only one block's full weights at a time
        fully_shard(block)
    fully_shard(model)  # the rest: embeddings (tied to the output layer) and the final norm
    return model


def _full_state_dict(model: torch.nn.Module, strategy: str, world: int) -> dict[str, torch.Tensor]:
    if world > 1 and strategy == "fsdp":  # a collective: every rank takes part, rank 0 gets the tensors
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    plain = model.module if hasattr(model, "module") else model
    return {name: tensor.detach().cpu() for name, tensor in plain.state_dict().items()}


def train(args: argparse.Namespace, rank: int, world: int, device: torch.device) -> dict[str, Any] | None:
    """Train on this rank; rank 0 returns (and writes) the history, other ranks return None."""
    from course_lib.data import unlabelled_texts

    texts = list(unlabelled_texts(sources=("movie reviews",)))[: args.texts]
    dataset, chars = character_windows(texts, args.block)
    sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    loader = DataLoader(dataset, batch_size=args.global_batch // world, sampler=sampler, drop_last=True)
    if len(loader) < 1:
        raise ValueError(f"{len(dataset)} windows are too few for a global batch of {args.global_batch}")

    torch.manual_seed(args.seed)  # the same initial weights on every rank
    config = GPTConfig(vocab_size=len(chars), block_size=args.block, n_layer=args.layers, n_head=args.heads,
                       n_embd=args.hidden)
    model = _wrap(GPT(config).to(device), args.strategy, device, world)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)

    losses: list[float] = []
    epoch, batches = 0, iter(())
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        batch = next(batches, None)
        if batch is None:  # a new epoch: a new shuffle, the same on every rank
            sampler.set_epoch(epoch)
            epoch += 1
            batches = iter(loader)
            batch = next(batches)
        x = batch[0].to(device)
        loss = causal_lm_loss(model(x), x)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()  # DDP: gradients are averaged across ranks here; FSDP: reduce-scattered
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the norm of the whole gradient, on every rank
        optimizer.step()
        logged = loss.detach().clone()
        if world > 1:
            dist.all_reduce(logged)  # gloo has no AVG: sum, then divide
            logged /= world
        losses.append(logged.item())
        if rank == 0 and (step % args.log_every == 0 or step == args.steps):
            print(f"step {step:4d}/{args.steps}  loss {losses[-1]:.4f}", flush=True)
    seconds = time.perf_counter() - start

    state = _full_state_dict(model, args.strategy, world)
    if rank != 0:
        return None
    history = {"strategy": args.strategy if world > 1 else "single process", "world_size": world,
               "device": str(device), "losses": losses, "seconds": round(seconds, 3),
               "tokens_per_second": round(args.steps * args.global_batch * args.block / seconds, 1),
               "parameters": sum(t.numel() for n, t in state.items() if n != "lm_head.weight"),
               "config": {k: v for k, v in vars(args).items() if k != "out"}}
    if args.out is not None:
        from safetensors.torch import save_file

        args.out.mkdir(parents=True, exist_ok=True)
        # lm_head.weight is the embedding matrix itself (weight tying): store it once
        save_file({n: t.contiguous() for n, t in state.items() if n != "lm_head.weight"}, args.out / "model.safetensors")
        (args.out / "history.json").write_text(json.dumps(history, indent=1))
    print(f"{history['strategy']} on {world} process(es), {device}: final loss {losses[-1]:.4f}, "
          f"{history['tokens_per_second']:,.0f} tokens/s", flush=True)
    return history


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    launched = "RANK" in os.environ  # torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT
    world = int(os.environ.get("WORLD_SIZE", "1"))
    _check(parser, args, world)
    try:
        device = get_device(args.device)
    except ValueError as error:
        parser.error(f"--device: {error}")
    if device.type == "mps" and args.device == "auto":
        device = torch.device("cpu")  # no distributed backend drives Apple GPUs: train on the CPU cores
    if device.type != "cpu":  # one accelerator per rank: rank i of this machine takes device i
        device = torch.device(device.type, int(os.environ.get("LOCAL_RANK", "0")))
        torch.accelerator.set_device_index(device.index)
    if launched:
        dist.init_process_group(dist.get_default_backend_for_device(device))  # gloo on CPUs, nccl on NVIDIA GPUs
    try:
        train(args, dist.get_rank() if launched else 0, world, device)
        # An orderly teardown: anything training left in reference cycles (and communication work it
        # holds) is freed now rather than during interpreter shutdown, where gloo can abort a rank,
        # and no rank destroys the group while another still uses it.
        gc.collect()
        if launched:
            dist.barrier()
    finally:
        if launched:
            dist.destroy_process_group()
    return 0


def launch(processes: int, out: str | Path, *options: str, timeout: float = 600.0) -> dict[str, Any]:
    """Run this script with ``processes`` ranks (``torchrun --standalone``; 1 means a plain
    process, no process group) writing to ``out``, and return rank 0's history. Raises with the
    run's output when it fails or exceeds ``timeout`` seconds."""
    processes = require_int("processes", processes)
    out = Path(out)
    launcher = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"] if processes > 1 else []
    command = [sys.executable, *launcher, "-m", "course_lib.distributed", "--out", str(out), *options]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread per process: the ranks share the cores
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=environment)
    except subprocess.TimeoutExpired as error:
        raise RuntimeError(f"{' '.join(command)} did not finish within {timeout:.0f} s") from error
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed with exit code {result.returncode}:\n"
                           f"{(result.stdout + result.stderr)[-3000:]}")
    return json.loads((out / "history.json").read_text())


if __name__ == "__main__":
    sys.exit(main())

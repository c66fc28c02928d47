"""Chatting with an instruct model: the ChatML template written out, and a reply generated from a
list of messages with the course's decoder.

An instruct model was fine-tuned on conversations laid out in one fixed text format; it answers well
only when the prompt uses that format too. SmolLM2 uses ChatML: every message is
``<|im_start|>{role}\\n{content}<|im_end|>\\n``, a default system message comes first when the
conversation has none, and ``<|im_start|>assistant\\n`` invites the next reply, which the model ends
with ``<|im_end|>``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from course_lib.sampling import SamplingConfig

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
ROLES = ("system", "user", "assistant")
END = "<|im_end|>"


def check_messages(messages: object) -> list[dict[str, str]]:
    """``messages`` as a list of {"role", "content"} dicts, or a ValueError saying what is wrong."""
    if not isinstance(messages, Sequence) or isinstance(messages, str) or not messages:
        raise ValueError(f"messages must be a non-empty list of {{'role', 'content'}} dicts, got {messages!r}")
    checked = []
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or set(message) != {"role", "content"}:
            raise ValueError(f"messages[{i}] must be a dict with exactly the keys 'role' and 'content', got {message!r}")
        if message["role"] not in ROLES or not isinstance(message["content"], str):
            raise ValueError(f"messages[{i}] must have a role among {ROLES} and a str content, got {message!r}")
        checked.append({"role": message["role"], "content": message["content"]})
    return checked


def chatml(messages: Sequence[Mapping[str, str]], add_generation_prompt: bool = True,
           default_system: str = DEFAULT_SYSTEM) -> str:
    """The conversation in ChatML, as SmolLM2's chat template writes it (the default system message
    first when the conversation has none; the assistant's opening last when ``add_generation_prompt``)."""
    messages = check_messages(messages)
    text = "" if messages[0]["role"] == "system" else f"<|im_start|>system\n{default_system}{END}\n"
    text += "".join(f"<|im_start|>{m['role']}\n{m['content']}{END}\n" for m in messages)
    return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def reply(model: nn.Module, tokenizer, messages: Sequence[Mapping[str, str]], max_new_tokens: int = 128,
          sampling: SamplingConfig | None = None, generator: torch.Generator | None = None) -> str:
    """The assistant's next message: the conversation in ChatML, generated until ``<|im_end|>``
    (greedy unless ``sampling`` says otherwise), without the end token."""
    from course_lib.generate import generate

    device = next(model.parameters()).device
    ids = torch.tensor([tokenizer.encode(chatml(messages), add_special_tokens=False)], device=device)
    end = tokenizer.convert_tokens_to_ids(END)
    new = generate(model, ids, max_new_tokens, sampling, eos_token_id=end, generator=generator)
    return tokenizer.decode([t for t in new if t != end]).strip()


def replies(model: nn.Module, tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]],
            max_new_tokens: int = 64, sampling: SamplingConfig | None = None, batch_size: int = 32,
            generator: torch.Generator | None = None, progress: bool = False) -> list[str]:
    """The assistant's next message for many conversations, ``batch_size`` at a time (left-padded
    batches, one cached step per token for the whole batch): what evaluating a model on hundreds of
    prompts needs. Greedy unless ``sampling`` says otherwise."""
    from tqdm.auto import tqdm

    from course_lib.arguments import require_int
    from course_lib.generate import generate_batch

    batch_size = require_int("batch_size", batch_size)
    end = tokenizer.convert_tokens_to_ids(END)
    prompts = [tokenizer.encode(chatml(c), add_special_tokens=False) for c in conversations]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: little padding
    texts: list[str] = [""] * len(prompts)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="generating", disable=not progress, leave=False):
        rows = order[start:start + batch_size]
        new = generate_batch(model, [prompts[i] for i in rows], max_new_tokens, sampling, eos_token_id=end,
                             pad_token_id=tokenizer.pad_token_id or 0, generator=generator)
        for i, ids in zip(rows, new):
            texts[i] = tokenizer.decode([t for t in ids if t != end]).strip()
    return texts

"""course_lib.sft: the assistant-only labels (by hand and against the text's character spans with the
real SmolLM2 tokenizer), dynamic padding, the loss against transformers' own, gradient accumulation
against one big batch, and a short LoRA run that learns."""

import pytest
import torch
from transformers import LlamaConfig as HFConfig
from transformers import LlamaForCausalLM

from course_lib import lora, sft
from course_lib.chat import END, chatml
from course_lib.llama import Llama, LlamaConfig
from course_lib.sft import IGNORE, Encoded

TINY = dict(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128, rms_norm_eps=1e-5,
            rope_parameters={"rope_theta": 10000.0, "rope_type": "default"}, tie_word_embeddings=True)
HEADER, END_ID = [1, 7, 8], 2  # "<|im_start|>", "assistant", "\n" and "<|im_end|>" in a toy vocabulary


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    config = HFConfig(**TINY, attn_implementation="eager")
    reference = LlamaForCausalLM(config).eval()
    return reference, Llama.from_state_dict(LlamaConfig.from_hf(config), reference.state_dict())


def test_assistant_labels_keep_replies_and_their_end_token_only():
    #        user turn ------------  assistant header  reply  end \n  user ----  header  reply end \n
    ids = [1, 5, 9, 10, 2, 9] + HEADER + [20, 21] + [2, 9] + [1, 5, 11, 2, 9] + HEADER + [22] + [2, 9]
    labels = sft.assistant_labels(ids, HEADER, END_ID)
    kept = [(i, t) for i, (t, label) in enumerate(zip(ids, labels)) if label != IGNORE]
    assert kept == [(9, 20), (10, 21), (11, 2), (21, 22), (22, 2)]
    assert all(label in (IGNORE, t) for t, label in zip(ids, labels))


def test_assistant_labels_edge_cases():
    assert sft.assistant_labels([1, 5, 2], HEADER, END_ID) == [IGNORE] * 3  # no reply at all
    assert sft.assistant_labels(HEADER + [20, 21], HEADER, END_ID) == [IGNORE] * 3 + [20, 21]  # cut before its end
    assert sft.assistant_labels(HEADER + [2], HEADER, END_ID) == [IGNORE] * 3 + [2]  # an empty reply still ends
    with pytest.raises(ValueError, match="header"):
        sft.assistant_labels([1, 2], [], END_ID)


@pytest.fixture(scope="module")
def tokenizer():
    from course_lib.smollm import load_tokenizer

    return load_tokenizer()


def test_labels_cover_exactly_the_replies_characters(tokenizer):
    messages = [{"role": "user", "content": "Count the words: a b c"}, {"role": "assistant", "content": "3"},
                {"role": "user", "content": "And now? x y"}, {"role": "assistant", "content": "2 words, I think."}]
    encoded = sft.encode_chat(tokenizer, messages)
    text = chatml(messages, add_generation_prompt=False)
    assert tokenizer.decode(encoded.input_ids) == text
    spans, start = [], 0
    for m in messages:  # the character spans of each reply and its end token in the text
        start = text.index(m["content"] + END, start)
        if m["role"] == "assistant":
            spans.append((start, start + len(m["content"]) + len(END)))
        start += len(m["content"])
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    expected = [t if any(a <= s and e <= b for a, b in spans) else IGNORE
                for t, (s, e) in zip(encoded.input_ids, offsets)]
    assert encoded.labels == expected
    learned = tokenizer.decode([t for t in encoded.labels if t != IGNORE])
    assert learned == "3" + END + "2 words, I think." + END


def test_encode_chat_refuses_what_it_cannot_learn_from(tokenizer):
    with pytest.raises(ValueError, match="assistant reply"):
        sft.encode_chat(tokenizer, [{"role": "user", "content": "hi"}])
    with pytest.raises(ValueError, match="max_length=8"):
        sft.encode_chat(tokenizer, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], 8)


def test_pad_batch_pads_right_and_masks_padding():
    batch = sft.pad_batch([Encoded([3, 4, 5], [IGNORE, 4, 5]), Encoded([6], [6])], pad_id=0)
    assert batch["input_ids"].tolist() == [[3, 4, 5], [6, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[IGNORE, 4, 5], [6, IGNORE, IGNORE]]
    with pytest.raises(ValueError, match="examples"):
        sft.pad_batch([], 0)


def _examples(n: int, seed: int = 0) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(3, 97, (int(torch.randint(4, 12, (1,), generator=g)),), generator=g).tolist()
        cut = len(ids) // 2
        out.append(Encoded(ids, [IGNORE] * cut + ids[cut:]))
    return out


def test_loss_equals_transformers_loss_with_padding(pair):
    reference, ours = pair
    batch = sft.pad_batch(_examples(5), pad_id=0)
    total, count = sft.token_losses(ours, batch)
    expected = reference(**batch).loss  # transformers shifts and averages over the labelled tokens
    torch.testing.assert_close(total / count, expected, atol=1e-5, rtol=1e-5)
    hf_total, hf_count = sft.token_losses(reference, batch)  # the same function drives a transformers model
    torch.testing.assert_close(hf_total / hf_count, expected, atol=1e-6, rtol=1e-6)


def test_accumulated_gradients_equal_one_big_batch(pair):
    _, ours = pair
    data = _examples(8, seed=1)

    def gradients(micro):
        ours.zero_grad()
        loss, tokens = sft.accumulate_gradients(ours, micro)
        return loss, tokens, [p.grad.clone() for p in ours.parameters()]

    big = gradients([sft.pad_batch(data, 0)])
    small = gradients([sft.pad_batch(data[i:i + 2], 0) for i in range(0, 8, 2)])
    assert big[1] == small[1]
    assert big[0] == pytest.approx(small[0], rel=1e-5)
    for a, b in zip(big[2], small[2]):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    # the common mistake, averaging each micro-batch on its own, gives a different gradient
    ours.zero_grad()
    for i in range(0, 8, 2):
        loss, n = sft.token_losses(ours, sft.pad_batch(data[i:i + 2], 0))
        (loss / n / 4).backward()
    assert any(not torch.allclose(a, p.grad, atol=1e-6) for a, p in zip(big[2], ours.parameters()))
    ours.zero_grad()


def test_lora_sft_learns_a_fixed_reply(pair):
    import copy

    _, ours = pair
    model = copy.deepcopy(ours)
    torch.manual_seed(1)
    model.embed_tokens.weight.data.normal_(0, 1.0)  # the tied head of a std-0.02 random model cannot make a confident logit
    lora.inject_lora(model, ["q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"], r=4, alpha=8)
    lora.mark_only_lora_trainable(model)
    data = [Encoded([5, 6, 7, 8, 40, 41, 2], [IGNORE] * 4 + [40, 41, 2])] * 4
    before = sft.evaluate_loss(model, data, pad_id=0)
    history = sft.train_sft(model, data, pad_id=0, steps=30, batch_size=4, lr=1e-2, warmup=2, progress=False)
    after = sft.evaluate_loss(model, data, pad_id=0)
    assert after < before / 4 and history.loss[-1] < history.loss[0]
    assert len(history.loss) == len(history.lr) == 30 and history.tokens[0] == 12
    assert not any(p.requires_grad for n, p in model.named_parameters() if ".lora_" not in n)
    with pytest.raises(ValueError, match="trainable"):
        sft.train_sft(copy.deepcopy(ours).requires_grad_(False), data, 0, steps=1, progress=False)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory, tokenizer):
    """A small random Llama with the real tokenizer, saved as a transformers folder."""
    torch.manual_seed(2)
    folder = tmp_path_factory.mktemp("tiny_llama")
    config = HFConfig(**(TINY | {"vocab_size": len(tokenizer)}), attn_implementation="eager")
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_a_merged_model_saves_as_a_folder_both_libraries_load(tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    model = Llama.from_pretrained(tiny_folder)
    lora.inject_lora(model, ["q_proj", "down_proj"], r=2, alpha=4)
    torch.manual_seed(3)
    for layer in lora.lora_layers(model).values():
        layer.lora_B.data.normal_(0, 0.5)  # an update that changes the outputs
    ids = torch.tensor([[5, 17, 300, 42, 7]])
    with torch.no_grad():
        before = model(ids)
        assert not torch.allclose(before, Llama.from_pretrained(tiny_folder)(ids), atol=1e-3)
        with pytest.raises(ValueError, match="LoRA layers"):
            sft.save_merged(model, tmp_path / "merged", tiny_folder)
        size = sft.save_merged(lora.unload_lora(model), tmp_path / "merged", tiny_folder)
        assert size == (tmp_path / "merged" / "model.safetensors").stat().st_size
        assert (tmp_path / "merged" / "tokenizer.json").is_file() and (tmp_path / "merged" / "config.json").is_file()
        torch.testing.assert_close(Llama.from_pretrained(tmp_path / "merged")(ids), before, atol=1e-5, rtol=1e-5)
        hf = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
        torch.testing.assert_close(hf(ids).logits, before, atol=1e-5, rtol=1e-5)


def test_trls_sft_trainer_runs_on_the_same_examples(tiny_folder):
    from course_lib import instructions

    examples = instructions.build_instruction_data(per_task={"train": 4, "validation": 1, "test": 1})["train"]
    losses = sft.trl_sft(examples, str(tiny_folder), steps=3, batch_size=4, lr=1e-2, warmup=1,
                         target_modules=["q_proj", "v_proj"])
    assert len(losses) == 3 and all(0 < loss < 20 for loss in losses)

"""course_lib.dpo against trl 1.16: sequence log-probabilities against trl's ``selective_log_softmax``,
the loss and its gradients against ``DPOTrainer.compute_loss`` end to end on a tiny random model,
the padded batch against trl's collator; then the properties DPO promises and a tiny training run."""

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from course_lib import dpo
from course_lib.llama import Llama, LlamaConfig
from course_lib.runtime import quiet_import_logs

quiet_import_logs()  # torchao, imported by transformers through trl, logs its optional kernels on import
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402
from trl.trainer.utils import selective_log_softmax  # noqa: E402

PAIRS = [([5, 6, 7], [8, 9], [10, 11, 12, 13]),
         ([14, 15], [16, 17, 18, 19, 20], [21]),
         ([22], [23, 24], [25, 26]),
         ([27, 28, 29, 30], [31], [32, 33, 34])]


def _random_logits(seed=0, batch=3, length=9, vocab=13):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, length, vocab, generator=g) * 3
    labels = torch.randint(0, vocab, (batch, length), generator=g)
    labels[0, :4] = -100  # a prompt
    labels[1, 6:] = -100  # padding
    labels[2, :2] = -100
    labels[2, 7:] = -100
    return logits, labels


def _tiny_llama(seed=0):
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_layers=2, num_heads=2,
                             num_kv_heads=1, head_dim=8, max_positions=32))


def test_sequence_logprobs_is_a_shifted_gather_and_matches_trl():
    logits, labels = _random_logits()
    ours = dpo.sequence_logprobs(logits, labels)
    targets, scored = labels[:, 1:], labels[:, 1:] != -100
    direct = (logits[:, :-1].log_softmax(-1).gather(-1, targets.clamp(min=0)[..., None])[..., 0] * scored).sum(1)
    trl_per_token = selective_log_softmax(logits[:, :-1], targets.clamp(min=0))
    trl_sums = (trl_per_token * scored).sum(1)
    torch.testing.assert_close(ours, direct, rtol=0, atol=1e-5)
    torch.testing.assert_close(ours, trl_sums, rtol=0, atol=1e-5)  # measured max difference: ~4e-6
    torch.testing.assert_close(dpo.sequence_logprobs(logits, labels, average=True), trl_sums / scored.sum(1),
                               rtol=0, atol=1e-5)
    # without the shift, position t would score its own token: the comparison above would catch it
    unshifted = (logits.log_softmax(-1).gather(-1, labels.clamp(min=0)[..., None])[..., 0] * (labels != -100)).sum(1)
    assert (unshifted - direct).abs().max() > 1.0
    assert dpo.sequence_logprobs(logits.bfloat16(), labels).dtype == torch.float32


def test_sequence_logprobs_refuses_bad_shapes_and_rows_without_a_scored_token():
    logits, labels = _random_logits()
    with pytest.raises(ValueError, match=r"labels must be an integer tensor of shape \(B, T\) = \(3, 9\), got .*\(3, 8\)"):
        dpo.sequence_logprobs(logits, labels[:, :-1])
    with pytest.raises(ValueError, match="logits must be a"):
        dpo.sequence_logprobs(logits[0], labels[0])
    with pytest.raises(ValueError, match="labels must be an integer"):
        dpo.sequence_logprobs(logits, labels.float())
    labels[1, 1:] = -100
    labels[1, 0] = 3  # the first label is never scored: nothing predicts it
    with pytest.raises(ValueError, match="row 1 of labels scores no token"):
        dpo.sequence_logprobs(logits, labels)


def test_pad_pairs_lays_out_chosen_then_rejected_and_matches_trls_collator():
    batch = dpo.pad_pairs(PAIRS[:2], pad_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9, 0, 0], [14, 15, 16, 17, 18, 19, 20],
                                           [5, 6, 7, 10, 11, 12, 13], [14, 15, 21, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 5 + [0] * 2, [1] * 7, [1] * 7, [1] * 3 + [0] * 4]
    assert batch["labels"].tolist() == [[-100, -100, -100, 8, 9, -100, -100], [-100, -100, 16, 17, 18, 19, 20],
                                        [-100, -100, -100, 10, 11, 12, 13], [-100, -100, 21, -100, -100, -100, -100]]
    trl_batch = DataCollatorForPreference(pad_token_id=0)(
        [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r} for p, c, r in PAIRS])
    ours = dpo.pad_pairs(PAIRS, pad_id=0)
    assert torch.equal(ours["input_ids"], trl_batch["input_ids"])
    assert torch.equal(ours["attention_mask"], trl_batch["attention_mask"])
    assert torch.equal(ours["labels"], trl_batch["input_ids"].masked_fill(trl_batch["completion_mask"] == 0, -100))


@pytest.mark.parametrize("pairs, message", [
    ([], "pairs must be a non-empty sequence"),
    ([([1, 2], [3])], r"pairs\[0\] must be \(prompt_ids, chosen_ids, rejected_ids\)"),
    ([([1], [2], [3]), ([1], ["a"], [3])], r"pairs\[1\] must be .* three lists of token ids"),
    ([([1], [], [3])], r"pairs\[0\] needs a non-empty prompt and non-empty completions"),
    ([([], [2], [3])], r"pairs\[0\] needs a non-empty prompt"),
])
def test_pad_pairs_refuses_malformed_pairs(pairs, message):
    with pytest.raises(ValueError, match=message):
        dpo.pad_pairs(pairs, pad_id=0)


def test_pad_pairs_refuses_a_negative_pad_id():
    with pytest.raises(ValueError, match="pad_id must be an int >= 0, got -1"):
        dpo.pad_pairs(PAIRS, pad_id=-1)


def test_pair_logprobs_with_the_course_llama_equals_each_pair_alone():
    model = _tiny_llama().eval()
    chosen, rejected = dpo.pair_logprobs(model, dpo.pad_pairs(PAIRS, pad_id=0))

    def alone(prompt, completion):
        log_probs = model(torch.tensor([prompt + completion]))[0].log_softmax(-1)
        return sum(log_probs[len(prompt) + j - 1, token] for j, token in enumerate(completion))

    torch.testing.assert_close(chosen, torch.stack([alone(p, c) for p, c, _ in PAIRS]), rtol=0, atol=1e-5)
    torch.testing.assert_close(rejected, torch.stack([alone(p, r) for p, _, r in PAIRS]), rtol=0, atol=1e-5)


def test_dpo_loss_and_its_gradients_follow_the_formula():
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(5, generator=g, dtype=torch.float64).mul(10).requires_grad_() for _ in range(4))
    for beta in (0.1, 0.5, 2.0):
        out = dpo.dpo_loss(pc, pr, rc, rr, beta)
        out.loss.backward()
        delta = (pc - rc) - (pr - rr)
        torch.testing.assert_close(out.loss, -F.logsigmoid(beta * delta).mean(), rtol=0, atol=1e-12)
        slope = (beta * torch.sigmoid(-beta * delta) / 5).detach()  # d loss / d (pc - rc)
        for tensor, sign in ((pc, -1), (pr, 1), (rc, 1), (rr, -1)):
            torch.testing.assert_close(tensor.grad, sign * slope, rtol=0, atol=1e-12)
            tensor.grad = None
        torch.testing.assert_close(out.chosen_rewards, beta * (pc - rc).detach())
        assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpo_loss_refuses_mismatched_inputs_and_bad_beta():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match=r"reference_rejected must be a \(B,\) tensor .* got \(4,\)"):
        dpo.dpo_loss(x, x, x, torch.zeros(4))
    with pytest.raises(ValueError, match="beta must be a number > 0, got 0"):
        dpo.dpo_loss(x, x, x, x, beta=0)


def test_loss_signs_swaps_and_the_starting_point():
    g = torch.Generator().manual_seed(1)
    pc, pr, rc, rr = (torch.randn(1, generator=g) for _ in range(4))
    base = dpo.dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert dpo.dpo_loss(pc + 1.0, pr, rc, rr, beta=0.5).loss < base.loss  # chosen more likely: lower loss
    assert dpo.dpo_loss(pc, pr + 1.0, rc, rr, beta=0.5).loss > base.loss  # rejected more likely: higher loss
    swapped = dpo.dpo_loss(pr, pc, rr, rc, beta=0.5)
    torch.testing.assert_close(swapped.loss, -F.logsigmoid(-base.margins).mean())
    torch.testing.assert_close(swapped.margins, -base.margins)
    same = dpo.dpo_loss(pc.repeat(3), pr.repeat(3), pc.repeat(3), pr.repeat(3), beta=0.5)  # policy == reference
    torch.testing.assert_close(same.loss, torch.tensor(math.log(2)))
    assert same.chosen_rewards.abs().max() == 0 and same.rejected_rewards.abs().max() == 0
    assert same.accuracy == 0.0  # a tie is not a win
    assert dpo.DPOOutput(torch.tensor(0.0), torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])).accuracy == 0.5


def test_loss_and_gradients_match_trls_dpo_trainer_end_to_end(tmp_path):
    from datasets import Dataset
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig as HFConfig
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
    from trl import DPOConfig, DPOTrainer

    words = ["<pad>", "<eos>", "<unk>"] + "the cat dog sat ran on a mat log fast slow is what did do".split()
    tokenizer_model = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer_model.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer_model, pad_token="<pad>", eos_token="<eos>",
                                        unk_token="<unk>")
    data = Dataset.from_dict({"prompt": ["what did the cat do", "what did the dog do", "the cat is"],
                              "chosen": [" the cat sat on a mat", " the dog ran", " fast"],
                              "rejected": [" the cat ran", " the dog sat on the log", " slow on a mat"]})
    config = HFConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=64, initializer_range=0.3,
                      pad_token_id=0, bos_token_id=1, eos_token_id=1)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config)
    reference = LlamaForCausalLM(config)  # other random weights: rewards and margins are not zero
    args = DPOConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, activation_checkpointing=False,
                     per_device_train_batch_size=3, save_strategy="no", disable_tqdm=True)
    trainer = DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data, processing_class=tokenizer)
    examples = [trainer.train_dataset[i] for i in range(len(data))]  # tokenized by trl, EOS appended
    trl_inputs = trainer.data_collator(examples)
    batch = dpo.pad_pairs([(e["prompt_ids"], e["chosen_ids"], e["rejected_ids"]) for e in examples],
                          pad_id=tokenizer.pad_token_id)
    assert torch.equal(batch["input_ids"], trl_inputs["input_ids"])
    (ref_chosen, ref_rejected), = dpo.reference_logprobs(trainer.ref_model, [batch])
    trainer.model.train()
    parameters = [p for p in trainer.model.parameters() if p.requires_grad]
    for beta in (0.1, 0.5, 2.0):
        trainer.beta = beta  # what _compute_loss reads
        trainer.model.zero_grad()
        trl_loss = trainer.compute_loss(trainer.model, trl_inputs)
        trl_loss.backward()
        trl_grads = [p.grad.clone() for p in parameters]
        trainer.model.zero_grad()
        out = dpo.dpo_step(trainer.model, batch, (ref_chosen, ref_rejected), beta)
        out.loss.backward()
        # float32 throughout, the same model and tokens; trl projects through the LM head in its own
        # chunked kernel, so sums run in another order. Measured: loss within 8e-7 relative (3e-6 at
        # beta=2, loss 4.2); each gradient within 7e-6 of its tensor's largest entry (2.6e-5 of 6.3).
        torch.testing.assert_close(out.loss, trl_loss, rtol=1e-5, atol=1e-6)
        for ours, theirs in zip((p.grad for p in parameters), trl_grads, strict=True):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4 * theirs.abs().max().item())
        metrics = {name: values[-1] for name, values in trainer._metrics["train"].items()}
        assert out.margins.mean().item() == pytest.approx(metrics["rewards/margins"], abs=1e-5)
        assert out.accuracy == pytest.approx(metrics["rewards/accuracies"])
    assert abs(out.margins).min() > 0.01 and trl_loss.item() != pytest.approx(math.log(2), abs=1e-3)


def test_reference_logprobs_are_frozen_and_leave_the_mode_alone():
    model = _tiny_llama().train()
    batches = [dpo.pad_pairs(PAIRS[:2], 0), dpo.pad_pairs(PAIRS[2:], 0)]
    references = dpo.reference_logprobs(model, batches)
    assert model.training and len(references) == 2
    assert all(not t.requires_grad and t.shape == (2,) for pair in references for t in pair)
    with pytest.raises(ValueError, match="zip"):
        dpo.implicit_reward_accuracy(model, batches, references[:1], beta=0.1)


def test_a_tiny_dpo_run_learns_the_preferences():
    torch.manual_seed(0)
    policy = _tiny_llama(seed=3)
    batches = [dpo.pad_pairs(PAIRS, pad_id=0)]
    references = dpo.reference_logprobs(copy.deepcopy(policy), batches)
    assert dpo.implicit_reward_accuracy(policy, batches, references, beta=0.1) == 0.0  # policy == reference: ties
    optimizer = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    history = []
    for _ in range(20):
        out = dpo.dpo_step(policy, batches[0], references[0], beta=0.1)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        history.append(out)
    assert history[0].loss.item() == pytest.approx(math.log(2), abs=1e-5)
    assert history[-1].loss < 0.6 * math.log(2)
    assert history[-1].margins.min() > 0
    assert dpo.implicit_reward_accuracy(policy, batches, references, beta=0.1) == 1.0


def test_train_dpo_checks_its_inputs_and_records_every_step():
    model = _tiny_llama(3)
    batches = [dpo.pad_pairs(PAIRS[:2], 0), dpo.pad_pairs(PAIRS[2:], 0)]
    references = dpo.reference_logprobs(model, batches)
    history = dpo.train_dpo(model, batches, references, steps=6, beta=0.5, lr=5e-3, progress=False)
    assert len(history.loss) == len(history.margin) == len(history.accuracy) == 6
    assert history.loss[0] == pytest.approx(math.log(2), abs=1e-5) and history.loss[-1] < history.loss[0]
    assert not model.training
    with pytest.raises(ValueError, match="equally long"):
        dpo.train_dpo(model, batches, references[:1], steps=1, progress=False)
    with pytest.raises(ValueError, match="trainable"):
        dpo.train_dpo(model.requires_grad_(False), batches, references, steps=1, progress=False)


def test_mean_token_kl_is_zero_for_one_model_and_matches_the_formula_otherwise():
    policy, reference = _tiny_llama(4), _tiny_llama(5)
    batch = dpo.pad_pairs(PAIRS, 0)
    assert dpo.mean_token_kl(policy, copy.deepcopy(policy), [batch]) == pytest.approx(0.0, abs=1e-6)
    kl = dpo.mean_token_kl(policy, reference, [batch])
    keep = batch["labels"][:, 1:] != -100
    with torch.no_grad():
        p = F.log_softmax(policy(batch["input_ids"], attention_mask=batch["attention_mask"])[:, :-1][keep], -1)
        q = F.log_softmax(reference(batch["input_ids"], attention_mask=batch["attention_mask"])[:, :-1][keep], -1)
    expected = F.kl_div(q, p, log_target=True, reduction="sum").item() / int(keep.sum())  # KL(p ‖ q)
    assert kl == pytest.approx(expected, rel=1e-4) and kl > 0
    assert dpo.mean_token_kl(reference, policy, [batch]) != pytest.approx(kl, rel=1e-3)  # not symmetric

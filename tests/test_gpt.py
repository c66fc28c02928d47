"""course_lib.gpt: causality, weight tying, generation; and BERT's masking statistics."""

import pytest
import torch

from course_lib.bert import mask_tokens
from course_lib.gpt import GPT, GPTConfig, causal_lm_loss, character_windows


def _model(**overrides):
    torch.manual_seed(0)
    return GPT(GPTConfig(**{"vocab_size": 50, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32} | overrides)).eval()


def test_a_future_token_does_not_move_earlier_logits():
    model = _model()
    idx = torch.randint(0, 50, (2, 12))
    changed = idx.clone()
    changed[:, 8] = (idx[:, 8] + 1) % 50
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :8], after[:, :8])  # positions 0..7 never see token 8
    assert not torch.allclose(before[:, 8:], after[:, 8:])  # position 8 onwards do


def test_output_layer_shares_the_embedding_matrix():
    model = _model()
    assert model.lm_head.weight.data_ptr() == model.wte.weight.data_ptr()
    # state_dict lists the shared matrix under both names; parameters() holds it once
    assert len(list(model.parameters())) == len(model.state_dict()) - 1


def test_a_tiny_model_learns_a_pattern_and_generates_it():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=10, block_size=12, n_layer=1, n_head=2, n_embd=32))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    data = torch.arange(12).remainder(5)[None].repeat(8, 1)  # 0 1 2 3 4 0 1 2 ...
    for _ in range(150):
        loss = causal_lm_loss(model(data), data)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05
    out = model.generate(torch.tensor([[2, 3]]), max_new_tokens=8, temperature=0)
    assert out[0].tolist() == [2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    sampled = model.generate(torch.tensor([[2, 3]]), 20, temperature=1.0, top_k=1, generator=torch.Generator().manual_seed(1))
    assert sampled[0, :10].tolist() == out[0].tolist()  # top-1 sampling is greedy
    assert sampled.shape == (1, 22) and model.training  # context cropped; training mode restored


def test_top_k_only_samples_among_the_k_most_likely():
    model = _model()
    idx = torch.zeros(1, 3, dtype=torch.long)
    with torch.no_grad():
        top3 = set(torch.topk(model(idx)[0, -1], 3).indices.tolist())
    g = torch.Generator().manual_seed(0)
    draws = {model.generate(idx, 1, temperature=2.0, top_k=3, generator=g)[0, -1].item() for _ in range(60)}
    assert draws <= top3 and len(draws) > 1


def test_causal_lm_loss_shifts_by_one():
    logits = torch.full((1, 3, 4), -1e4)
    logits[0, 0, 2] = logits[0, 1, 3] = 1e4  # predicts 2 after position 0, 3 after position 1
    assert causal_lm_loss(logits, torch.tensor([[0, 2, 3]])).item() == 0.0
    assert causal_lm_loss(logits, torch.tensor([[0, 3, 2]])).item() > 1000


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: GPTConfig(vocab_size=0), "vocab_size must be an int >= 1, got 0"),
        (lambda: GPTConfig(vocab_size=5, n_embd=30, n_head=4), r"n_embd \(30\) must be divisible by n_head \(4\)"),
        (lambda: _model()(torch.zeros(1, 17, dtype=torch.long)), "more than block_size=16"),
        (lambda: _model()(torch.zeros(1, 3)), r"idx must be \(B, T\) integer token ids"),
        (lambda: _model().generate(torch.zeros(1, 1, dtype=torch.long), 1, temperature=-1), "temperature must be >= 0"),
        (lambda: _model().generate(torch.zeros(1, 1, dtype=torch.long), 1, top_k=51), r"top_k must be in \[1, 50\]"),
        (lambda: causal_lm_loss(torch.zeros(1, 3, 4), torch.zeros(1, 2, dtype=torch.long)), "must match idx"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_masking_follows_the_80_10_10_recipe():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (200, 128), generator=g)
    maskable = torch.ones_like(ids, dtype=torch.bool)
    maskable[:, 0] = maskable[:, -1] = False  # [CLS] and [SEP]
    maskable[:100, 100:] = False  # padding
    inputs, labels = mask_tokens(ids, maskable, mask_token_id=3, vocab_size=1000, generator=g)
    chosen = labels != -100
    assert not chosen[~maskable].any(), "special tokens and padding are never chosen"
    assert torch.equal(labels[chosen], ids[chosen])
    rate = chosen.sum() / maskable.sum()
    assert 0.14 < rate < 0.16
    as_mask = (inputs == 3) & chosen
    unchanged = (inputs == ids) & chosen
    randomised = chosen & ~as_mask & ~unchanged
    n = chosen.sum()
    assert 0.78 < as_mask.sum() / n < 0.82
    assert 0.08 < unchanged.sum() / n < 0.12  # (a random token equal to the original counts here: p = 1/1000)
    assert 0.08 < randomised.sum() / n < 0.12
    assert torch.equal(inputs[~chosen], ids[~chosen])


def test_masking_rejects_bad_arguments():
    ids = torch.zeros(2, 3, dtype=torch.long)
    with pytest.raises(ValueError, match="maskable must be a bool tensor shaped like input_ids"):
        mask_tokens(ids, torch.ones(2, 3), 3, 10)
    with pytest.raises(ValueError, match=r"probability must be in \(0, 1\)"):
        mask_tokens(ids, torch.ones(2, 3, dtype=torch.bool), 3, 10, probability=1.0)


def _small_bert():
    from course_lib.bert import BertConfig, init_bert_weights

    torch.manual_seed(0)
    return init_bert_weights, BertConfig(vocab_size=60, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, max_position_embeddings=12)


def test_masked_lm_scores_only_the_masked_positions_and_ties_its_decoder():
    import torch.nn.functional as F

    from course_lib.bert import BertForMaskedLM

    init, config = _small_bert()
    model = init(BertForMaskedLM(config)).eval()
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    ids = torch.randint(5, 60, (3, 10))
    labels = torch.full_like(ids, -100)
    labels[0, 2], labels[2, 7] = 11, 42
    loss = model(ids, torch.ones_like(ids), labels)
    logits = model(ids, torch.ones_like(ids))
    expected = F.cross_entropy(torch.stack([logits[0, 2], logits[2, 7]]), torch.tensor([11, 42]))
    torch.testing.assert_close(loss, expected)


def test_classifier_reuses_a_pretrained_encoder():
    from course_lib.bert import BertClassifier, BertForMaskedLM

    init, config = _small_bert()
    pretrained = init(BertForMaskedLM(config))
    classifier = BertClassifier(config, num_labels=3)
    classifier.bert.load_state_dict(pretrained.bert.state_dict())
    assert classifier(torch.randint(0, 60, (4, 6))).shape == (4, 3)
    torch.testing.assert_close(classifier.bert.embeddings.word_embeddings.weight,
                               pretrained.bert.embeddings.word_embeddings.weight)


def test_character_windows():
    dataset, chars = character_windows(["abc", "cab"], block=3)
    assert chars == ["\n", "a", "b", "c"] and len(dataset) == 2
    assert dataset[0][0].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="fewer than one window of block=100"):
        character_windows(["short"], block=100)

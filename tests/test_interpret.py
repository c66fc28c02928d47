"""course_lib.interpret on a tiny BERT with the bundled tokenizer: saliency against finite
differences and a model linear in its embeddings, [CLS] attention against transformers' own weights,
masking effects, the word-swap and negation edits, and flip counting against a keyword stub."""

import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from course_lib import interpret
from course_lib.pretrained import load_tokenizer

TEXT = "A gripping, beautifully acted film."
SENTENCES = ["He is a fine actor.", "The plot was thin and the jokes were flat.", "Mary loved it.",
             "dull", "She was never better.", "One of the year's best films, and his best."]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="module")
def tiny(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


def _logits(model, batch, embeddings):
    with torch.no_grad():
        return model(inputs_embeds=embeddings, attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"]).logits[0]


# ---------------------------------------------------------------------------------------------
# Gradient × input


def test_saliency_of_each_token_is_the_derivative_of_the_logit_along_its_own_embedding(tiny, tokenizer):
    """score_i = grad_i · x_i = d/dt logit(x_i scaled by 1 + t) at t = 0: a central difference in
    float64 with no autograd at all."""
    tokens, scores = interpret.gradient_x_input(tiny, tokenizer, TEXT, target=1)
    batch = tokenizer(TEXT, return_tensors="pt")
    assert tokens == tokenizer.convert_ids_to_tokens(batch["input_ids"][0]) and tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert scores.shape == (len(tokens),)
    model = copy.deepcopy(tiny).double()
    x = model.get_input_embeddings()(batch["input_ids"]).detach()
    eps = 1e-4
    for i in range(len(tokens)):
        up, down = x.clone(), x.clone()
        up[0, i] *= 1 + eps
        down[0, i] *= 1 - eps
        derivative = (_logits(model, batch, up)[1] - _logits(model, batch, down)[1]) / (2 * eps)
        assert scores[i].item() == pytest.approx(derivative.item(), abs=1e-4, rel=1e-3)


def test_saliency_defaults_to_the_predicted_class_leaves_no_grad_and_restores_training(tiny, tokenizer):
    with torch.no_grad():
        predicted = tiny(**tokenizer(TEXT, return_tensors="pt")).logits.argmax().item()
    tiny.train()
    try:
        _, default = interpret.gradient_x_input(tiny, tokenizer, TEXT)
        assert tiny.training  # restored ...
        _, explicit = interpret.gradient_x_input(tiny, tokenizer, TEXT, target=predicted)
        _, other = interpret.gradient_x_input(tiny, tokenizer, TEXT, target=1 - predicted)
    finally:
        tiny.eval()
    assert torch.equal(default, explicit)  # ... and dropout was off: the same numbers every time
    assert not torch.allclose(default, other)
    assert all(parameter.grad is None for parameter in tiny.parameters())


class LinearInEmbeddings(nn.Module):
    """logits = (sum of the token embeddings) @ W + b: linear, so gradient × input is exact."""

    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.embeddings = nn.Embedding(vocab_size, 8)
        self.head = nn.Linear(8, 3)

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, token_type_ids=None):
        embeddings = self.embeddings(input_ids) if inputs_embeds is None else inputs_embeds
        return SimpleNamespace(logits=self.head(embeddings.sum(1)))


def test_for_a_model_linear_in_the_embeddings_the_scores_sum_to_logit_minus_bias(tokenizer):
    torch.manual_seed(1)
    model = LinearInEmbeddings(tokenizer.vocab_size)
    with torch.no_grad():
        logits = model(**tokenizer(TEXT, return_tensors="pt")).logits[0]
    for target in range(3):
        _, scores = interpret.gradient_x_input(model, tokenizer, TEXT, target=target)
        assert scores.sum().item() == pytest.approx((logits[target] - model.head.bias[target]).item(), abs=1e-5)


# ---------------------------------------------------------------------------------------------
# Attention and masking


def test_cls_attention_is_the_last_layers_head_average_and_sdpa_comes_back(tiny, tokenizer):
    assert tiny.config._attn_implementation == "sdpa"
    tokens, weights = interpret.attention_to_tokens(tiny, tokenizer, TEXT)
    assert tiny.config._attn_implementation == "sdpa" and not tiny.training
    assert weights.shape == (len(tokens),) and (weights >= 0).all()
    assert weights.sum().item() == pytest.approx(1.0, abs=1e-5)
    eager = copy.deepcopy(tiny)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(**tokenizer(TEXT, return_tensors="pt"), output_attentions=True).attentions
    assert len(attentions) == 2
    torch.testing.assert_close(weights, attentions[-1][0, :, 0].mean(0))
    assert interpret.attention_to_tokens(eager, tokenizer, TEXT)[1].equal(weights)
    assert eager.config._attn_implementation == "eager"  # an eager model stays eager


def test_masking_effect_is_the_change_of_the_predicted_probability(tiny, tokenizer):
    batch = tokenizer(TEXT, return_tensors="pt")
    masked = {key: value.clone() for key, value in batch.items()}
    masked["input_ids"][0, 2] = tokenizer.mask_token_id
    with torch.no_grad():
        before, after = tiny(**batch).logits.softmax(-1)[0], tiny(**masked).logits.softmax(-1)[0]
    predicted = before.argmax()
    effect = interpret.mask_token_effect(tiny, tokenizer, TEXT, 2)
    assert effect == pytest.approx((after[predicted] - before[predicted]).item(), abs=1e-6)


def test_attention_vs_saliency_masks_the_top_token_of_each(tiny, tokenizer):
    result = interpret.attention_vs_saliency(tiny, tokenizer, TEXT)
    tokens, attention = interpret.attention_to_tokens(tiny, tokenizer, TEXT)
    _, saliency = interpret.gradient_x_input(tiny, tokenizer, TEXT)
    assert result.tokens == tokens and result.attention.equal(attention) and result.saliency.equal(saliency)
    assert result.top_attention == attention[1:-1].argmax().item() + 1
    assert result.top_saliency == saliency[1:-1].abs().argmax().item() + 1
    for position, effect in [(result.top_attention, result.top_attention_effect),
                             (result.top_saliency, result.top_saliency_effect)]:
        assert effect == pytest.approx(interpret.mask_token_effect(tiny, tokenizer, TEXT, position), abs=1e-6)
    assert result.same_token == (result.top_attention == result.top_saliency)
    assert repr(tokens[result.top_attention]) in str(result)
    again = interpret.attention_vs_saliency(tiny, tokenizer, TEXT)
    assert (again.top_attention, again.top_saliency, again.top_attention_effect, again.top_saliency_effect) == \
        (result.top_attention, result.top_saliency, result.top_attention_effect, result.top_saliency_effect)



def test_masking_effects_are_mask_token_effect_for_every_word_piece(tiny, tokenizer):
    tokens, effects = interpret.masking_effects(tiny, tokenizer, TEXT)
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and len(effects) == len(tokens)
    assert effects[0] == 0.0 and effects[-1] == 0.0
    for position in range(1, len(tokens) - 1):
        assert effects[position].item() == pytest.approx(interpret.mask_token_effect(tiny, tokenizer, TEXT, position), abs=1e-6)

# ---------------------------------------------------------------------------------------------
# Edits


@pytest.mark.parametrize("text, swapped", [
    ("He is a fine actor.", "She is a fine actress."),
    ("HE said his wife left him.", "SHE said her husband left her."),
    ("Her brother and herself", "His sister and himself"),
    ("Mr. Smith meets Mrs. Jones and Ms. Brown", "Ms. Smith meets Mr. Jones and Mr. Brown"),
    ("John's film, with Mary", "Mary's film, with John"),
    ("Men and women, boys and girls", "Women and men, girls and boys"),
    ("Shelby, the theme, Sheila, hero, shell", None),  # whole words only
    ("the", None),
])
def test_swap_names_swaps_whole_words_both_ways_keeping_case(text, swapped):
    assert interpret.swap_names(text) == swapped


@pytest.mark.parametrize("text, negated", [
    ("The film is funny.", "The film is not funny."),
    ("This film was a bore, and it is long", "This film was not a bore, and it is long"),
    ("THE FILM IS GREAT", "THE FILM IS NOT GREAT"),
    ("Is it funny? It is.", "Is it funny? It is not."),  # a question's opening verb is skipped
    ("It isn't funny.", None), ("It is never dull.", None), ("There is no plot.", None),
    ("This island thrills", None),  # "is" inside "This" and "island" does not count
    ("A gripping film", None),
])
def test_negate_inserts_not_after_the_first_copula(text, negated):
    assert interpret.negate(text) == negated


class KeywordModel(nn.Module):
    """A stub with the classifier's call signature: positive (P = sigmoid(4)) exactly when the word
    "good" is among the input ids, negative (P(positive) = sigmoid(-4)) otherwise."""

    def __init__(self, good_id: int) -> None:
        super().__init__()
        self.good_id = good_id

    def forward(self, input_ids, attention_mask=None, token_type_ids=None):
        has = (input_ids == self.good_id).any(1).float()
        return SimpleNamespace(logits=torch.stack([2 - 4 * has, 4 * has - 2], dim=1))


def test_flips_are_counted_exactly_on_a_keyword_model(tokenizer):
    model = KeywordModel(tokenizer.convert_tokens_to_ids("good"))
    texts = ["a good film", "a bad film", "good good", "nothing here", "he was good"]
    result = interpret.counterfactual_flips(model, tokenizer, texts, lambda t: t.replace("good", "fine") if "good" in t else None,
                                            batch_size=2)
    high, low = torch.tensor(4.0).sigmoid().item(), torch.tensor(-4.0).sigmoid().item()
    assert (result["applicable"], result["flipped"], result["flip_rate"]) == (3, 3, 1.0)
    assert result["indices"] == [0, 2, 4] and result["mean_abs_change"] == pytest.approx(high - low)
    assert [flip[:2] for flip in result["flips"]] == [("a good film", "a fine film"), ("good good", "fine fine"),
                                                      ("he was good", "he was fine")]
    assert result["flips"][0][2:] == pytest.approx((high, low))
    untouched = interpret.counterfactual_flips(model, tokenizer, texts, interpret.swap_names)
    assert (untouched["applicable"], untouched["flipped"], untouched["mean_abs_change"], untouched["flips"]) == (1, 0, 0.0, [])
    nothing = interpret.counterfactual_flips(model, tokenizer, texts, lambda t: t)  # unchanged = not applicable
    assert nothing["applicable"] == 0 and nothing["flips"] == [] and nothing["flip_rate"] != nothing["flip_rate"]  # NaN


def test_flips_on_the_tiny_bert_match_sentence_by_sentence_scoring(tiny, tokenizer):
    result = interpret.counterfactual_flips(tiny, tokenizer, SENTENCES, interpret.swap_names, batch_size=4)
    edited = [interpret.swap_names(text) for text in SENTENCES]
    indices = [i for i, text in enumerate(edited) if text is not None]
    assert result["indices"] == indices and result["applicable"] == 4

    def p_positive(text):
        with torch.no_grad():
            return tiny(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0, 1].item()

    before = torch.tensor([p_positive(SENTENCES[i]) for i in indices])
    after = torch.tensor([p_positive(edited[i]) for i in indices])
    torch.testing.assert_close(result["before"], before)  # padding in a batch changes nothing
    torch.testing.assert_close(result["after"], after)
    assert result["flipped"] == int(((before > 0.5) != (after > 0.5)).sum())
    assert result["mean_abs_change"] == pytest.approx((after - before).abs().mean().item(), abs=1e-6)
    one_by_one = interpret.counterfactual_flips(tiny, tokenizer, SENTENCES, interpret.swap_names, batch_size=1)
    torch.testing.assert_close(one_by_one["before"], result["before"])


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize("call, error, message", [
    (lambda m, t: interpret.gradient_x_input(m, t, ""), ValueError, "text must be a non-empty sentence, got ''"),
    (lambda m, t: interpret.gradient_x_input(m, t, None), TypeError, "text must be a str, got NoneType"),
    (lambda m, t: interpret.gradient_x_input(m, t, TEXT, target=2), ValueError,
     r"target must be a class index in \[0, 1\] or None, got 2"),
    (lambda m, t: interpret.gradient_x_input(m, t, TEXT, target=True), ValueError, "target must be a class index"),
    (lambda m, t: interpret.attention_to_tokens(m, t, "   "), ValueError, "text must be a non-empty sentence"),
    (lambda m, t: interpret.attention_to_tokens(LinearInEmbeddings(8), t, TEXT), TypeError, "model must be a transformers model"),
    (lambda m, t: interpret.mask_token_effect(m, t, TEXT, 0), ValueError, r"position must be a word-piece index in \[1, 7\]"),
    (lambda m, t: interpret.mask_token_effect(m, t, TEXT, 8), ValueError, r"not \[CLS\] at 0 or \[SEP\] at 8\), got 8"),
    (lambda m, t: interpret.counterfactual_flips(m, t, SENTENCES, interpret.negate, batch_size=0), ValueError,
     "batch_size must be an int >= 1, got 0"),
    (lambda m, t: interpret.counterfactual_flips(m, t, "He is.", interpret.negate), TypeError,
     "texts must be a sequence of str, got str"),
    (lambda m, t: interpret.counterfactual_flips(m, t, [], interpret.negate), ValueError, "texts must hold at least one sentence"),
    (lambda m, t: interpret.counterfactual_flips(m, t, ["ok", ""], interpret.negate), ValueError, r"texts\[1\] must be a non-empty"),
    (lambda m, t: interpret.counterfactual_flips(m, t, SENTENCES, "negate"), TypeError, "edit must be a function"),
    (lambda m, t: interpret.counterfactual_flips(m, t, SENTENCES, len), TypeError,
     r"edit must return a str or None, got int for texts\[0\]"),
    (lambda m, t: interpret.swap_words("he", [("he",)]), ValueError, r"pairs must hold \(word, partner\) tuples"),
    (lambda m, t: interpret.swap_words("he", []), ValueError, "pairs must hold at least one"),
])
def test_bad_input_is_refused_with_a_message_naming_the_argument(tiny, tokenizer, call, error, message):
    with pytest.raises(error, match=message):
        call(tiny, tokenizer)

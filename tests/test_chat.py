"""ChatML written out equals SmolLM2's chat template; a reply stops at the end token."""

import pytest
import torch

from course_lib import chat

CONVERSATIONS = [
    [{"role": "user", "content": "Hi!"}],
    [{"role": "system", "content": "Answer in French."}, {"role": "user", "content": "Hello"}],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
     {"role": "user", "content": "and 3+3?\nThanks  "}],
    [{"role": "user", "content": ""}],
]


@pytest.fixture(scope="module")
def tokenizer():
    from course_lib import smollm

    return smollm.load_tokenizer()


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chatml_equals_the_tokenizers_chat_template(tokenizer, messages, add_generation_prompt):
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert chat.chatml(messages, add_generation_prompt) == expected


@pytest.mark.parametrize("messages, message", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "user"}], r"messages\[0\] must be a dict with exactly the keys"),
    ([{"role": "robot", "content": "x"}], "role among"),
    ([{"role": "user", "content": 3}], "str content"),
])
def test_bad_messages_are_refused(messages, message):
    with pytest.raises(ValueError, match=message):
        chat.chatml(messages)


def test_reply_stops_at_the_end_token_and_leaves_it_out(tokenizer):
    class EndsAfterTwo(torch.nn.Module):  # a stand-in model: "ok", "!", then the end token
        def __init__(self):
            super().__init__()
            self.script = [tokenizer.convert_tokens_to_ids(t) for t in ("ok", "!", chat.END)]
            self.weight = torch.nn.Parameter(torch.zeros(1))
            self.calls = 0

        def new_cache(self, batch, max_len):
            return None

        def forward(self, ids, cache=None, last_only=False):
            logits = torch.zeros(1, ids.shape[1], len(tokenizer))
            logits[0, -1, self.script[min(self.calls, 2)]] = 1.0
            self.calls += 1
            return logits

    model = EndsAfterTwo()
    assert chat.reply(model, tokenizer, CONVERSATIONS[0], max_new_tokens=10) == "ok!"
    assert model.calls == 3

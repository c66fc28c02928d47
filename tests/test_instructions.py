"""course_lib.instructions: checkable instruction data, split by source sentence; verifiers that accept
the right reply and reject plausible wrong ones; chitchat conversations as alternating chats."""

import json
import random

import pytest

from course_lib import data
from course_lib import instructions as ins


@pytest.fixture(scope="module")
def built():
    return ins.build_instruction_data()


def _example(task, sentence="Never once predictable, and a lot of fun to watch.", label=1, seed=0):
    example = ins.make_example(task, sentence, label, random.Random(seed))
    assert example is not None
    return example


def test_splits_have_the_documented_sizes_and_every_task(built):
    assert list(built) == ["train", "validation", "test"]
    for split, examples in built.items():
        assert ins.task_table(examples) == dict.fromkeys(ins.TASKS, ins.DEFAULT_PER_TASK[split])
    assert len(built["train"]) >= 2000
    assert [e.task for e in built["train"][:5]] != list(ins.TASKS), "tasks must be interleaved"
    assert len({e.task for e in built["test"][:20]}) > 1


def test_no_source_sentence_is_in_two_splits(built):
    sources = {split: {e.source for e in examples} for split, examples in built.items()}
    assert not sources["train"] & sources["validation"]
    assert not sources["train"] & sources["test"]
    assert not sources["validation"] & sources["test"]
    for examples in built.values():  # within a split, one example per sentence
        assert len({e.source for e in examples}) == len(examples)


def test_deterministic_for_a_seed_and_different_for_another(built):
    assert ins.build_instruction_data(seed=0) == built
    other = ins.build_instruction_data(seed=1)
    for split in built:
        assert other[split] != built[split]
        assert {e.source for e in other[split]} != {e.source for e in built[split]}
    small = ins.build_instruction_data(per_task={"validation": 5, "test": 0})
    assert [len(small[s]) for s in small] == [2500, 25, 0]
    assert small["train"] == built["train"]


def test_every_answer_is_correct_and_follows_the_format(built):
    for examples in built.values():
        for example in examples:
            assert ins.score(example, example.answer), example
            assert ins.follows_format(example, example.answer), example


def test_sentiment_labels_follow_the_rating_and_long_reviews_are_skipped(built):
    sentiment = [e for e in built["train"] if e.task == "sentiment"]
    rating = {r.text: r.rating for r in data.labelled_rows(data.fetch_sdist())}
    assert all(e.answer == ("positive" if rating[e.source] > 0 else "negative") for e in sentiment)
    assert 0.35 < sum(e.answer == "positive" for e in sentiment) / len(sentiment) < 0.65
    assert all(len(e.source.split()) <= ins.MAX_SENTIMENT_WORDS for e in sentiment)
    too_long = " ".join(["good"] * (ins.MAX_SENTIMENT_WORDS + 1))
    assert ins.make_example("sentiment", too_long, 1, random.Random(0)) is None
    assert _example("sentiment", label=0).answer == "negative"
    assert ins.make_example("count", "Too short, really.", 1, random.Random(0)) is None


def test_fragments_are_plain_words_of_the_source(built):
    for example in built["train"]:
        if example.task == "reverse":
            fragment = example.answer.split()[::-1]
            assert 4 <= len(fragment) <= 8 and " ".join(fragment) in example.prompt
            assert all(ins._WORD.fullmatch(w) for w in fragment)
            assert set(fragment) <= set(ins.words(example.source))
    assert ins.words("-lrb- The -RRB- (a) film's ''difficult'' 2 well-made -- end.") == [
        "The", "a", "film's", "difficult", "well-made", "end"]


def test_messages_are_a_user_turn_and_the_answer():
    example = _example("count")
    assert example.messages() == [{"role": "user", "content": example.prompt},
                                  {"role": "assistant", "content": example.answer}]
    assert example.messages(with_answer=False) == [{"role": "user", "content": example.prompt}]


def test_sentiment_verifier():
    example = _example("sentiment")
    for reply in ("positive", " Positive.\n", "POSITIVE"):
        assert ins.score(example, reply) and ins.follows_format(example, reply)
    assert not ins.score(example, "negative") and ins.follows_format(example, "negative")
    for reply in ("The review is positive", "positive!", "positive or negative", ""):
        assert not ins.follows_format(example, reply) and not ins.score(example, reply)


def test_reverse_verifier():
    example = ins.make_example("reverse", "one two three four", 1, random.Random(0))
    assert example.answer == "four three two one"
    assert ins.score(example, " four three  two one. ")
    assert not ins.score(example, "one two three four") and ins.follows_format(example, "one two three four")
    assert not ins.score(example, "four three two") and not ins.follows_format(example, "four three two")
    assert not ins.follows_format(example, "Sure: four three two one")


def test_count_verifier():
    example = ins.make_example("count", "one two three four five", 1, random.Random(3))
    n = int(example.answer)
    assert ins.score(example, f" {n}.\n")
    assert not ins.score(example, str(n + 1)) and not ins.score(example, str(n - 1))
    assert ins.follows_format(example, str(n + 1))
    for reply in (f"There are {n} words.", "five", f"{n} words", f"-{n}"):
        assert not ins.follows_format(example, reply) and not ins.score(example, reply)


def test_numbers_verifier():
    example = ins.Example("numbers", "s", "List the numbers in this text: a 12 b 7 c", "12, 7")
    for reply in ("12, 7", "12,7", " 12 , 7. "):
        assert ins.score(example, reply) and ins.follows_format(example, reply)
    assert not ins.score(example, "7, 12") and ins.follows_format(example, "7, 12")
    assert not ins.score(example, "12") and ins.follows_format(example, "12")
    assert not ins.score(example, "12, 7, 3")
    for reply in ("The numbers are 12 and 7", "12 7", "12, 7,", "[12, 7]"):
        assert not ins.follows_format(example, reply) and not ins.score(example, reply)
    made = _example("numbers")
    numbers = [int(n) for n in made.answer.split(", ")]
    assert 1 <= len(numbers) <= 3 and all(1 <= n <= 999 for n in numbers)
    assert [t for t in made.prompt.split() if t.isdigit()] == made.answer.split(", ")


def test_json_verifier():
    example = ins.make_example("json", "one two three four", 1, random.Random(0))
    assert json.loads(example.answer) == {"first_word": "one", "last_word": "four", "word_count": 4}
    assert ins.score(example, '\n {"word_count": 4, "last_word": "four", "first_word": "one"} ')
    wrong = {
        "missing key": '{"first_word": "one", "last_word": "four"}',
        "extra key": '{"first_word": "one", "last_word": "four", "word_count": 4, "note": ""}',
    }
    for reply in wrong.values():
        assert not ins.score(example, reply) and not ins.follows_format(example, reply)
    for reply in ('{"first_word": "one", "last_word": "four", "word_count": 5}',
                  '{"first_word": "one", "last_word": "four", "word_count": "4"}',
                  '{"first_word": "one", "last_word": "four", "word_count": 4.0}',
                  '{"first_word": "One", "last_word": "four", "word_count": 4}'):
        assert not ins.score(example, reply) and ins.follows_format(example, reply)
    for reply in ("{first_word: one}", '{"first_word": "one", "last_word": "four", "word_count": 4',
                  'Here it is: {"first_word": "one", "last_word": "four", "word_count": 4}',
                  '```json\n{"first_word": "one", "last_word": "four", "word_count": 4}\n```',
                  '["one", "four", 4]'):
        assert not ins.score(example, reply) and not ins.follows_format(example, reply)


def test_phrasings_vary_and_prompts_stay_short(built):
    for task in ins.TASKS:
        prompts = [e.prompt for e in built["train"] if e.task == task]
        used = {p for p in ins.PHRASINGS[task] if any(p.split("{text}")[0] in q for q in prompts)}
        assert len(used) == len(ins.PHRASINGS[task]) >= 2, task
    assert max(len(e.prompt.split()) for e in built["train"]) <= ins.MAX_SENTIMENT_WORDS + 20


def test_chitchat_conversations_alternate_starting_with_the_user():
    chats = ins.chitchat_conversations(50, seed=0)
    assert len(chats) == 50
    for chat in chats:
        assert 2 <= len(chat) <= 6 and len(chat) % 2 == 0
        assert [m["role"] for m in chat] == ["user", "assistant"] * (len(chat) // 2)
        assert all(m["content"].strip() and len(m["content"]) <= ins.MAX_CHAT_CHARS for m in chat)
    assert ins.chitchat_conversations(50, seed=0) == chats
    assert ins.chitchat_conversations(50, seed=1) != chats
    assert all(len(c) <= 2 for c in ins.chitchat_conversations(20, max_turns=3))
    assert len(ins.chitchat_conversations()) > 1000


def test_argument_errors():
    rng = random.Random(0)
    with pytest.raises(ValueError, match=r"task must be one of \['sentiment', .*got 'translate'"):
        ins.make_example("translate", "a b c d", 1, rng)
    with pytest.raises(ValueError, match="task must be one of"):
        ins.Example("poem", "s", "p", "a")
    with pytest.raises(ValueError, match="label must be 0 .* or 1 .*got 2"):
        ins.make_example("sentiment", "good", 2, rng)
    with pytest.raises(ValueError, match=r"per_task\['train'\] must be an int >= 0, got -1"):
        ins.build_instruction_data(per_task={"train": -1})
    with pytest.raises(ValueError, match=r"per_task keys must be among \['train', 'validation', 'test'\], got 'dev'"):
        ins.build_instruction_data(per_task={"dev": 1})
    with pytest.raises(ValueError, match=r"per_task\['test'\] must be at most .*got 100000"):
        ins.build_instruction_data(per_task={"train": 1, "validation": 1, "test": 100_000})
    with pytest.raises(ValueError, match="seed must be an int >= 0, got 'x'"):
        ins.build_instruction_data(seed="x")
    with pytest.raises(ValueError, match="n must be an int >= 1 or None, got 0"):
        ins.chitchat_conversations(0)
    with pytest.raises(ValueError, match="max_turns must be an int >= 2, got 1"):
        ins.chitchat_conversations(5, max_turns=1)
    with pytest.raises(ValueError, match="n must be at most"):
        ins.chitchat_conversations(10**6)
    with pytest.raises(ValueError, match="reply must be a str, got NoneType"):
        ins.score(_example("count"), None)


def test_report_scores_each_reply_and_gives_rates_by_task():
    splits = ins.build_instruction_data(per_task={"train": 2, "validation": 1, "test": 2})
    examples = splits["test"]
    replies = [e.answer if i % 2 == 0 else "I cannot say." for i, e in enumerate(examples)]
    rep = ins.report(examples, replies)
    assert rep.correct == tuple(i % 2 == 0 for i in range(len(examples)))
    assert rep.accuracy() == pytest.approx(sum(rep.correct) / len(examples))
    task = examples[0].task
    chosen = [c for c, e in zip(rep.correct, examples) if e.task == task]
    assert rep.accuracy(task) == pytest.approx(sum(chosen) / len(chosen))
    assert rep.format_rate() <= 1 and rep.mean_length == pytest.approx(sum(map(len, replies)) / len(replies))
    with pytest.raises(ValueError, match="task"):
        rep.accuracy("poetry")
    with pytest.raises(ValueError, match="equally long"):
        ins.report(examples, replies[:-1])

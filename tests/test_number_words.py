"""course_lib.number_words: number words both ways, exact, and splits that share no number."""

import pytest

from course_lib.number_words import LIMIT, from_words, make_splits, to_words


@pytest.mark.parametrize("number,words", [
    (0, "zero"), (7, "seven"), (13, "thirteen"), (20, "twenty"), (42, "forty two"), (100, "one hundred"),
    (105, "one hundred five"), (999, "nine hundred ninety nine"), (1000, "one thousand"),
    (1001, "one thousand one"), (342007, "three hundred forty two thousand seven"),
    (999999, "nine hundred ninety nine thousand nine hundred ninety nine"), (80010, "eighty thousand ten"),
])
def test_words_both_ways(number, words):
    assert to_words(number) == words
    assert from_words(words) == number


def test_every_number_round_trips_on_a_sample():
    for number in range(0, LIMIT, 997):
        assert from_words(to_words(number)) == number


@pytest.mark.parametrize("text", ["", "thousand", "one hundred hundred", "two thousand three thousand", "forty forty",
                                  "ten one", "eleventy"])
def test_from_words_refuses_what_is_not_such_a_number(text):
    with pytest.raises(ValueError):
        from_words(text)


def test_to_words_refuses_out_of_range():
    with pytest.raises(ValueError, match="below 1,000,000"):
        to_words(LIMIT)
    with pytest.raises(ValueError, match="number"):
        to_words(-1)


def test_splits_are_disjoint_deterministic_and_both_directions():
    splits = make_splits(500, 50, 50, seed=3)
    numbers = {name: {p.target for p in pairs} for name, pairs in splits.items()}
    assert [len(v) for v in numbers.values()] == [500, 50, 50]
    assert not numbers["train"] & numbers["test"] and not numbers["train"] & numbers["validation"]
    assert make_splits(500, 50, 50, seed=3) == splits
    back = make_splits(500, 50, 50, direction="digits-to-words", seed=3)
    assert [(p.target, p.source) for p in back["test"]] == [(p.source, p.target) for p in splits["test"]]
    with pytest.raises(ValueError, match="direction"):
        make_splits(direction="sideways")

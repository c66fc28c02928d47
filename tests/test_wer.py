"""course_lib.wer against jiwer (the library speech papers report WER with): the same error counts and
rates, on hand-made cases and on random word sequences."""

import random

import jiwer
import pytest

from course_lib.wer import Alignment, align, normalize, word_error_rate


@pytest.mark.parametrize("reference,hypothesis,counts", [
    ("the cat sat", "the cat sat", (3, 0, 0, 0)),
    ("the cat sat", "the bat sat", (2, 1, 0, 0)),
    ("the cat sat", "the sat", (2, 0, 1, 0)),
    ("the cat sat", "the cat sat down", (3, 0, 0, 1)),
    ("a b c d", "", (0, 0, 4, 0)),
    ("a", "x y z", (0, 1, 0, 2)),
])
def test_alignment_counts_equal_jiwers(reference, hypothesis, counts):
    ours = align(reference.split(), hypothesis.split())
    assert (ours.hits, ours.substitutions, ours.deletions, ours.insertions) == counts
    if hypothesis:
        theirs = jiwer.process_words(reference, hypothesis)
        assert (theirs.hits, theirs.substitutions, theirs.deletions, theirs.insertions) == counts


def test_random_sequences_give_jiwers_distance_and_rate():
    rng = random.Random(0)
    words = ["a", "b", "c", "d", "e"]
    references, hypotheses = [], []
    for _ in range(200):
        reference = [rng.choice(words) for _ in range(rng.randint(1, 9))]
        hypothesis = [rng.choice(words) for _ in range(rng.randint(1, 9))]
        ours, theirs = align(reference, hypothesis), jiwer.process_words(" ".join(reference), " ".join(hypothesis))
        assert ours.errors == theirs.substitutions + theirs.deletions + theirs.insertions  # the distance is unique
        assert ours.hits + ours.substitutions + ours.deletions == len(reference)
        references.append(" ".join(reference))
        hypotheses.append(" ".join(hypothesis))
    assert word_error_rate(references, hypotheses) == pytest.approx(jiwer.wer(references, hypotheses), abs=1e-12)


def test_normalisation_ignores_case_punctuation_and_hyphens_but_keeps_words():
    assert normalize("He was not an ill-disposed young man.") == ["he", "was", "not", "an", "ill", "disposed", "young",
                                                                   "man"]
    assert normalize("Don't stop, Mr. Dashwood!") == ["don't", "stop", "mr", "dashwood"]
    assert word_error_rate("he was not an ill disposed young man", "He was not an old-sposed young man.") == 2 / 8


def test_corpus_wer_sums_errors_and_words_before_dividing():
    refs, hyps = ["a b c d", "e f"], ["a b c x", "y f"]  # 1/4 and 1/2: corpus 2/6, not the mean 3/8
    assert word_error_rate(refs, hyps) == pytest.approx(2 / 6)
    assert word_error_rate(refs, hyps) == pytest.approx(jiwer.wer(refs, hyps))
    assert word_error_rate("a", "a b c") == 2.0  # insertions can push WER over 1


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="one hypothesis per reference"):
        word_error_rate(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="no words"):
        word_error_rate([""], ["a"])
    with pytest.raises(TypeError, match="both be strings"):
        word_error_rate("a", ["a"])
    assert Alignment(1, 1, 1, 1).errors == 3

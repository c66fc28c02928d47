"""Paired statistics against scipy's exact binomial test, and the cases that motivate them."""

import numpy as np
import pytest
from scipy import stats

from course_lib import paired


@pytest.mark.parametrize("only_a, only_b, both", [(0, 0, 10), (3, 0, 5), (7, 2, 100), (20, 35, 400), (1, 1, 0)])
def test_mcnemar_is_the_exact_binomial_test_on_the_disagreements(only_a, only_b, both):
    a = [True] * only_a + [False] * only_b + [True] * both + [False] * 7
    b = [False] * only_a + [True] * only_b + [True] * both + [False] * 7
    result = paired.mcnemar(a, b)
    assert (result.only_a, result.only_b) == (only_a, only_b)
    expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    assert result.p_value == pytest.approx(expected, rel=1e-12)


def test_a_gap_an_independent_samples_rule_calls_noise_is_clear_when_paired():
    """84% vs 88.5% on 1,000 sentences, B right wherever A is and on 45 more: within "three
    standard errors of the difference" (4.7 points), an unpaired rule's noise band; McNemar sees 45
    disagreements, all one way."""
    a = np.zeros(1000, bool)
    a[:840] = True
    b = a.copy()
    b[840:885] = True
    result = paired.mcnemar(a, b)
    assert (result.only_a, result.only_b) == (0, 45) and result.p_value < 1e-12
    gap, low, high = paired.bootstrap_gap(a, b, samples=2000)
    assert gap == pytest.approx(-0.045) and high < 0


def test_bootstrap_interval_contains_the_gap_and_is_zero_for_identical_results():
    rng = np.random.default_rng(1)
    a, b = rng.random(300) < 0.8, rng.random(300) < 0.75
    gap, low, high = paired.bootstrap_gap(a, b, samples=3000, seed=2)
    assert low < gap < high and gap == pytest.approx(a.mean() - b.mean())
    assert paired.bootstrap_gap(a, a, samples=100) == (0.0, 0.0, 0.0)
    assert paired.bootstrap_gap(a, b, samples=500, seed=3) == paired.bootstrap_gap(a, b, samples=500, seed=3)


@pytest.mark.parametrize("a, b, message", [
    ([True, False], [True], "must score the same sentences, got 2 and 1"),
    ([], [], "non-empty 1-D"),
    ([0.3, 1.0], [1, 0], "must hold booleans"),
    ([[True]], [[True]], "non-empty 1-D"),
])
def test_bad_input_is_a_clear_error(a, b, message):
    with pytest.raises(ValueError, match=message):
        paired.mcnemar(a, b)


def test_bootstrap_refuses_bad_settings():
    with pytest.raises(ValueError, match="samples must be an int >= 1, got 0"):
        paired.bootstrap_gap([True], [False], samples=0)
    with pytest.raises(ValueError, match=r"confidence must be in \(0, 1\), got 1.5"):
        paired.bootstrap_gap([True], [False], confidence=1.5)

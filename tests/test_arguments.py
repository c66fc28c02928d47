import re

import numpy as np
import pytest

from course_lib.arguments import require_int


def refused(message: str):
    """pytest.raises for a ValueError with exactly ``message``."""
    return pytest.raises(ValueError, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize("value", [1, 5])
def test_accepts_ints_at_or_above_the_bound(value):
    assert require_int("n", value) == value


def test_numpy_integers_become_plain_ints():
    result = require_int("n", np.int64(3))
    assert result == 3 and type(result) is int


def test_none_only_when_allowed():
    assert require_int("n", None, allow_none=True) is None
    with refused("n must be an int >= 1, got None"):
        require_int("n", None)


def test_the_bound_is_adjustable():
    assert require_int("n", 0, at_least=0) == 0
    with refused("n must be an int >= 0, got -1"):
        require_int("n", -1, at_least=0)


@pytest.mark.parametrize("value, message", [
    (True, "n must be an int >= 1, got True"),
    (False, "n must be an int >= 1, got False"),
    (0, "n must be an int >= 1, got 0"),
    (-1, "n must be an int >= 1, got -1"),
    (2.0, "n must be an int >= 1, got 2.0"),
    ("3", "n must be an int >= 1, got '3'"),
])
def test_refuses_everything_else_naming_it(value, message):
    with refused(message):
        require_int("n", value)


def test_the_message_says_none_is_allowed_when_it_is():
    with refused("n must be an int >= 1 or None, got 0"):
        require_int("n", 0, allow_none=True)

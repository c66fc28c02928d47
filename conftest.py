"""Test-session set-up shared by tests/ and the nbval notebook run.

Notebook kernels inherit this process's environment, so setting COURSE_FAST here makes nbval run
every chapter in its fast configuration (nbval cannot pass papermill parameters), and
COURSE_HEADLESS makes widgets draw static figures. An explicit ``COURSE_FAST=0 pytest`` still runs
the full configuration.
"""

import os

from course_lib.runtime import HEADLESS_ENVIRONMENT

os.environ.setdefault("COURSE_FAST", "1")
for _name, _value in HEADLESS_ENVIRONMENT.items():  # nobody is watching: static widgets, no progress bars
    os.environ.setdefault(_name, _value)


def pytest_collection_modifyitems(items):
    """Executing a notebook takes seconds to minutes: nbval's cells carry the `slow` marker too, so
    `pytest -m "not slow"` is the quick loop (unit tests only) and CI runs everything."""
    import pytest

    for item in items:
        if type(item).__module__.startswith("nbval"):
            item.add_marker(pytest.mark.slow)


def pytest_terminal_summary(terminalreporter):
    """A warning, not a failure (`python -m course_lib exercises --check` fails on it): notebooks
    whose stored full-size outputs may predate a change to the course_lib modules they use."""
    from pathlib import Path

    from course_lib.freshness import stale
    from course_lib.runner import chapter_notebooks

    reasons = [r for r in map(stale, chapter_notebooks(Path(__file__).parent / "notebooks")) if r]
    if reasons:
        terminalreporter.section("stored outputs that may be out of date")
        for reason in reasons:
            terminalreporter.write_line(f"warning: {reason}")
        terminalreporter.write_line("re-execute with `python -m course_lib execute NN`, then check the prose against them")

"""Test-session set-up shared by tests/ and the nbval notebook run.

Notebook kernels inherit this process's environment, so setting COURSE_FAST here makes nbval run
every chapter in its fast configuration (nbval cannot pass papermill parameters), and
COURSE_HEADLESS makes widgets draw static figures. An explicit ``COURSE_FAST=0 pytest`` still runs
the full configuration.
"""

import os

os.environ.setdefault("COURSE_FAST", "1")
os.environ.setdefault("COURSE_HEADLESS", "1")  # widgets draw static figures: nobody is watching


def pytest_collection_modifyitems(items):
    """Executing a notebook takes seconds to minutes: nbval's cells carry the `slow` marker too, so
    `pytest -m "not slow"` is the quick loop (unit tests only) and CI runs everything."""
    import pytest

    for item in items:
        if type(item).__module__.startswith("nbval"):
            item.add_marker(pytest.mark.slow)

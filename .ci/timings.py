"""Where CI's minutes go: sum pytest's JUnit XML report by kind of test (nbval's notebooks, the
grader's tests, the browser tests, everything else) and print one line each, largest first."""

from __future__ import annotations

import sys
from collections import Counter
from xml.etree import ElementTree

GROUPS = (
    ("notebooks (nbval)", ("notebooks.",)),
    ("browser", ("tests.browser.",)),
    ("grading and exercises", ("tests.test_grader", "tests.test_grading", "tests.test_exercises")),
)


def group(classname: str) -> str:
    for name, prefixes in GROUPS:
        if classname.startswith(prefixes):
            return name
    return "unit and integration tests"


def main(path: str) -> None:
    seconds, counts = Counter(), Counter()
    for case in ElementTree.parse(path).getroot().iter("testcase"):
        kind = group(case.get("classname", ""))
        seconds[kind] += float(case.get("time", 0))
        counts[kind] += 1
    for kind, total in seconds.most_common():
        print(f"{kind:28} {counts[kind]:5d} tests {total / 60:6.1f} min")


if __name__ == "__main__":
    main(sys.argv[1])

"""How long does an instructor wait? Grades a class of chapter 04 with `python -m course_lib grade`:
a third solved, a third untouched and a third hostile (attacks from tests/test_grader.py: output
rewriting, patched torch, lying tensors, reading the reference, writing files, killing processes,
an endless loop, a 20 GiB allocation, a fork bomb, …), and prints the time in all and per submission.
Target: 30 submissions in at most 10 minutes on 2 cores.

    python benchmarks/grading.py [--class-size 30] [--workers 2] [--timeout 20]
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.test_grader import FULL_04, HOSTILE, SOLVED_04, _submission  # noqa: E402 (the attacks are the tests')


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--class-size", type=int, default=30)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0)
    args = parser.parse_args()
    attacks = list(HOSTILE.items())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        submissions, hostile = [], 0
        for number in range(args.class_size):
            kind = number % 3
            if kind == 0:
                cells = SOLVED_04  # the three drills and the two build exercises
            elif kind == 1:
                cells = {}
            else:
                cells = {"4.1": attacks[hostile % len(attacks)][1]}
                hostile += 1
            submissions.append(_submission(folder, f"learner{number:02d}-04_attention.ipynb", cells=cells))
        grades = folder / "grades.csv"
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "course_lib", "grade", *map(str, submissions), "--csv", str(grades),
             "--workers", str(args.workers), "--timeout", str(args.timeout)],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:])
            return 1
        with grades.open() as handle:
            rows = list(csv.DictReader(handle))
    earned = {}
    for row in rows:
        earned[row["submission"]] = earned.get(row["submission"], 0) + int(row["points"])
    solved = sum(1 for i, s in enumerate(submissions) if i % 3 == 0 and earned[str(s)] == sum(FULL_04.values()))
    others = sum(earned[str(s)] for i, s in enumerate(submissions) if i % 3)
    print(result.stdout.splitlines()[0])
    print(f"{args.class_size} submissions of 04_attention ({hostile} hostile), {args.workers} workers: "
          f"{seconds:.1f} s in all, {seconds / args.class_size:.2f} s per submission (target: 600 s for 30); "
          f"solved ones with full points: {solved}/{(args.class_size + 2) // 3}; points of untouched and hostile ones: {others}")
    return 0 if others == 0 and solved == (args.class_size + 2) // 3 else 1


if __name__ == "__main__":
    sys.exit(main())

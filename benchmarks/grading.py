"""How long does an instructor wait? Grades a class of N submissions of one chapter (half solved,
half unsolved copies) with `python -m course_lib grade` and prints the time per submission.
Target: 30 submissions in at most 10 minutes on 2 cores.

    python benchmarks/grading.py [--chapter 02_autograd] [--class-size 30]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chapter", default="02_autograd")
    parser.add_argument("--class-size", type=int, default=30)
    args = parser.parse_args()
    sources = [ROOT / "notebooks" / f"{args.chapter}.ipynb", ROOT / "exercises" / f"{args.chapter}.ipynb"]
    with tempfile.TemporaryDirectory() as tmp:
        submissions = []
        for number in range(args.class_size):
            path = Path(tmp) / f"learner{number:02d}-{args.chapter}.ipynb"
            shutil.copy(sources[number % 2], path)
            submissions.append(str(path))
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "course_lib", "grade", *submissions, "--csv", str(Path(tmp) / "grades.csv")],
            capture_output=True, text=True,
        )
        seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(result.stdout[-2000:], result.stderr[-2000:])
        return 1
    print(result.stdout.strip().splitlines()[-2])
    print(f"{args.class_size} submissions of {args.chapter}: {seconds:.1f} s in all, "
          f"{seconds / args.class_size:.2f} s per submission (target: 600 s for 30)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

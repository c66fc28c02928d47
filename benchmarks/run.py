"""Run every benchmark script in this folder, one after the other, and print what each measured.

    python benchmarks/run.py [NAME ...]     # e.g. python benchmarks/run.py threads

Record what you measured, with the date and the machine, in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    scripts = sorted(p for p in HERE.glob("*.py") if p.name != "run.py")
    if names:
        scripts = [p for p in scripts if p.stem in names]
        missing = set(names) - {p.stem for p in scripts}
        if missing:
            print(f"unknown benchmark(s): {', '.join(sorted(missing))}", file=sys.stderr)
            return 2
    failed = 0
    for script in scripts:
        print(f"\n=== {script.name} ===", flush=True)
        failed += subprocess.run([sys.executable, str(script)]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

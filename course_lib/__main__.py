"""Command line: ``python -m course_lib run|doctor``. Thin: parses arguments, calls the modules."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _run(args: argparse.Namespace) -> int:
    from course_lib.runner import find_notebooks, parse_value, run_notebooks, summary

    try:
        notebooks = find_notebooks(args.notebooks)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    parameters = {name: parse_value(value) for name, value in args.parameters}
    results = run_notebooks(
        notebooks,
        fast=args.fast,
        parameters=parameters,
        out_dir=args.out,
        timeout=args.timeout,
    )
    print(summary(results))
    return 0 if all(r.ok for r in results) else 1


def _doctor(args: argparse.Namespace) -> int:
    from course_lib.doctor import run_checks

    checks = run_checks()
    for check in checks:
        print(check)
    failed = sum(c.status == "FAIL" for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks without failure")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m course_lib", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute notebooks headless with papermill and summarise")
    run.add_argument("notebooks", nargs="*", help="chapters to run: 03, 03_nn or a path (default: all)")
    run.add_argument("--fast", action="store_true", help="small sizes (FAST=True, COURSE_FAST=1)")
    run.add_argument(
        "-p", "--parameter", dest="parameters", nargs=2, action="append", default=[],
        metavar=("NAME", "VALUE"), help="set a notebook parameter, e.g. -p EPOCHS 3 (repeatable)",
    )
    run.add_argument("--out", type=Path, default=None, help="folder for executed copies (default: runs/<timestamp>)")
    run.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell (default: no limit)")
    run.set_defaults(handler=_run)

    doctor = commands.add_parser("doctor", help="check this environment: versions, device, model, memory")
    doctor.set_defaults(handler=_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

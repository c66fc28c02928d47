"""Command line: ``python -m course_lib run|execute|lab|doctor|exercises|grade|clean|serve|serve-chat``. Thin: parses arguments and
calls the modules that do the work."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path


def _chapters(names: Sequence[str]) -> list[Path] | None:
    """The notebooks named on the command line, or None after saying which name matched nothing."""
    from course_lib.runner import find_notebooks

    try:
        return find_notebooks(names)
    except FileNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return None


def _run(args: argparse.Namespace) -> int:
    from course_lib.runner import describe_parameters, parse_value, run_notebooks, summary

    notebooks = _chapters(args.notebooks)
    if notebooks is None:
        return 2
    if args.list_parameters:
        print("\n\n".join(describe_parameters(notebook) for notebook in notebooks))
        return 0
    parameters = {name: parse_value(value) for name, value in args.parameters}
    try:
        results = run_notebooks(
            notebooks,
            fast=args.fast,
            parameters=parameters,
            out_dir=args.out,
            timeout=args.timeout,
        )
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(summary(results))
    return 0 if all(r.ok for r in results) else 1


def _execute(args: argparse.Namespace) -> int:
    from course_lib.runner import execute_in_place

    notebooks = _chapters(args.notebooks)
    if notebooks is None:
        return 2
    for notebook in notebooks:
        start = time.perf_counter()
        try:
            execute_in_place(notebook, timeout=args.timeout)
        except Exception as error:  # the cell's error, as nbclient reports it; the file is untouched
            print(f"{notebook.name}: FAILED, left unchanged\n{error}", file=sys.stderr)
            return 1
        print(f"{notebook.name}: executed in {time.perf_counter() - start:.0f} s and saved; "
              "now check its prose against the new outputs, then `python -m course_lib exercises`")
    return 0


def _lab(args: argparse.Namespace, extra: Sequence[str]) -> int:
    from course_lib.lab import start

    return start(extra)


def _doctor(args: argparse.Namespace) -> int:
    from course_lib.doctor import run_checks

    checks = run_checks()
    for check in checks:
        print(check)
    failed = sum(c.status == "FAIL" for c in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks without failure")
    return 1 if failed else 0


def _exercises(args: argparse.Namespace) -> int:
    from course_lib.exercises import generate

    problems = generate(check=args.check)
    for problem in problems:
        print(problem)
    if args.check:
        from course_lib.freshness import stale
        from course_lib.runner import find_notebooks

        outdated = [reason for reason in map(stale, find_notebooks()) if reason]
        for reason in outdated:
            print(reason)
        if problems:
            print("exercises/ is out of date: run `python -m course_lib exercises`")
        if outdated:
            print("stored outputs may be out of date: re-execute with `python -m course_lib execute NN`")
        if problems or outdated:
            return 1
        print("exercises/ is up to date, and so are the notebooks' stored outputs")
    else:
        print("exercises/ written from notebooks/")
    return 0


def _grade(args: argparse.Namespace) -> int:
    from course_lib import grader, sandbox

    if args.sandbox == "bubblewrap" and sandbox.bubblewrap() is None:
        print("error: --sandbox bubblewrap: no working bwrap here (Debian/Ubuntu: apt install bubblewrap)",
              file=sys.stderr)
        return 2
    use_sandbox = {"auto": None, "bubblewrap": True, "none": False}[args.sandbox]
    try:
        limits = sandbox.Limits(memory_bytes=int(args.memory * 2**30))
        results, errors, isolation = grader.grade(args.submissions, timeout=args.timeout, workers=args.workers,
                                                  limits=limits, use_sandbox=use_sandbox)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(isolation, end="\n\n")
    for result in results:
        print(grader.report(result), end="\n\n")
    stats = grader.class_statistics(results)
    if len(results) > 1:
        earned, possible = sum(r.earned for r in results), sum(r.possible for r in results)
        print(f"{len(results)} submissions graded: {earned}/{possible} points in all\n")
        print(grader.format_statistics(stats))
    if args.stats:
        grader.write_statistics(stats, args.stats)
        print(f"class statistics written to {args.stats}")
    if args.csv:
        grader.write_csv(results, args.csv)
        print(f"CSV written to {args.csv}")
    if args.junit:
        grader.write_junit(results, args.junit)
        print(f"JUnit XML written to {args.junit}")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 2 if errors and not results else 0


def _clean(args: argparse.Namespace) -> int:
    from course_lib.clean import clean

    try:
        freed = clean(everything=args.all)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for folder, size in freed:
        print(f"removed {folder}/ ({size / 2**20:.1f} MiB)")
    print(f"freed {sum(size for _, size in freed) / 2**20:.1f} MiB" if freed else "nothing to remove")
    return 0


def _serve(args: argparse.Namespace) -> int:
    from course_lib.serve import serve

    if not (args.model / "config.json").is_file():
        print(f"error: {args.model} is not a model folder (no config.json); chapter 07 saves one in "
              "checkpoints/07_classifier, chapter 10 exports ONNX folders", file=sys.stderr)
        return 2
    serve(args.model, backend=args.backend, host=args.host, port=args.port, threads=args.threads,
          parent_pid=args.parent_pid)
    return 0


def _serve_chat(args: argparse.Namespace) -> int:
    from course_lib.chat_service import serve_chat

    if args.model is not None and not (args.model / "config.json").is_file():
        print(f"error: {args.model} is not a model folder (no config.json)", file=sys.stderr)
        return 2
    serve_chat(args.model, adapter=args.adapter, host=args.host, port=args.port, threads=args.threads,
               model_name=args.name, max_prompt_tokens=args.max_prompt_tokens, max_new_tokens=args.max_new_tokens,
               parent_pid=args.parent_pid)
    return 0


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
    run.add_argument("--list-parameters", action="store_true",
                     help="print each chapter's parameters (type, default, meaning) and run nothing")
    run.add_argument("--out", type=Path, default=None, help="folder for executed copies (default: runs/<timestamp>)")
    run.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell (default: no limit)")
    run.set_defaults(handler=_run)

    execute = commands.add_parser("execute", help="maintainers: re-execute chapters in place, full size, recording what produced the outputs")
    execute.add_argument("notebooks", nargs="+", help="chapters: 03, 03_nn or a path")
    execute.add_argument("--timeout", type=float, default=None, help="seconds allowed per cell (default: no limit)")
    execute.set_defaults(handler=_execute)

    lab = commands.add_parser("lab", help="start JupyterLab with the course's settings (extra arguments go to jupyter lab)")
    lab.set_defaults(handler=_lab, passes_extra=True)

    doctor = commands.add_parser("doctor", help="check this environment: versions, device, model, memory")
    doctor.set_defaults(handler=_doctor)

    exercises = commands.add_parser("exercises", help="write exercises/ from notebooks/ (solutions replaced by stubs)")
    exercises.add_argument("--check", action="store_true", help="only check that exercises/ is up to date")
    exercises.set_defaults(handler=_exercises)

    grade = commands.add_parser("grade", help="grade exercise notebooks against the reference checks")
    grade.add_argument("submissions", nargs="+", type=Path, help="submitted .ipynb files")
    grade.add_argument("--csv", type=Path, help="write one row per (submission, exercise) here")
    grade.add_argument("--junit", type=Path, help="write JUnit XML here")
    grade.add_argument("--stats", type=Path, help="write per-exercise pass rates and common failure reasons here (CSV)")
    grade.add_argument("--timeout", type=float, default=60.0, help="seconds allowed per cell (default: 60)")
    grade.add_argument("--workers", type=int, default=1, help="submissions graded at the same time (default: 1)")
    grade.add_argument("--memory", type=float, default=6.0, help="memory per submission in GiB (default: 6)")
    grade.add_argument("--sandbox", choices=("auto", "bubblewrap", "none"), default="auto",
                       help="isolation: bubblewrap when it works here (auto), required, or none")
    grade.set_defaults(handler=_grade)

    clean = commands.add_parser("clean", help="delete runs/, outputs/ and checkpoints/ (what running the course wrote)")
    clean.add_argument("--all", action="store_true", help="also data/cache/ (fetched again on first use)")
    clean.set_defaults(handler=_clean)

    serve = commands.add_parser("serve", help="serve a classifier over HTTP (FastAPI + uvicorn)")
    serve.add_argument("--model", type=Path, required=True, help="model folder (save_pretrained or ONNX export)")
    serve.add_argument("--backend", choices=("torch", "onnx"), default="torch")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads", type=int, default=1, help="compute threads for inference (default: 1)")
    serve.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone (used by notebooks)")
    serve.set_defaults(handler=_serve)

    chat = commands.add_parser("serve-chat", help="serve a chat model with an OpenAI-compatible API (/v1/chat/completions)")
    chat.add_argument("--model", type=Path, default=None, help="transformers folder (default: the bundled SmolLM2-135M-Instruct)")
    chat.add_argument("--adapter", type=Path, default=None, help="a LoRA adapter folder to merge into the model")
    chat.add_argument("--name", default=None, help="the model name the API reports (default: the folder's name)")
    chat.add_argument("--host", default="127.0.0.1")
    chat.add_argument("--port", type=int, default=8000)
    chat.add_argument("--threads", type=int, default=1, help="compute threads for generation (default: 1)")
    chat.add_argument("--max-prompt-tokens", type=int, default=512, help="longest prompt accepted (default: 512)")
    chat.add_argument("--max-new-tokens", type=int, default=256, help="longest answer (default: 256)")
    chat.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone (used by notebooks)")
    chat.set_defaults(handler=_serve_chat)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "passes_extra", False):
        return args.handler(args, extra)
    if extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())

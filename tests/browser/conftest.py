"""A real JupyterLab on a free loopback port, in a temporary copy of the course, and a headless
Chromium driven by Playwright. Skipped with the reason when Chromium or Playwright is missing.

Nothing is left running: the server, its kernels and the browser are stopped even when a test fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from course_lib import lab as course_lab

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
]

if not CHROMIUM.exists():
    pytest.skip(
        f"browser tests need Debian's Chromium at {CHROMIUM} (apt-get install -y chromium); "
        ".ci/run installs it", allow_module_level=True,
    )
playwright_api = pytest.importorskip("playwright.sync_api", reason="browser tests need playwright (pip install -r requirements.txt)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    """Stop a process and every process it started (the server's kernels included)."""
    import psutil

    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in family:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=10)
    for p in alive:
        p.kill()
    psutil.wait_procs(alive, timeout=5)


@pytest.fixture(scope="session")
def lab(tmp_path_factory):
    """(base URL, token, folder) of a JupyterLab serving a copy of notebooks/ and exercises/."""
    folder = tmp_path_factory.mktemp("course")
    for name in ("notebooks", "exercises"):
        shutil.copytree(ROOT / name, folder / name)
    token, port = secrets.token_hex(16), _free_port()
    env = dict(os.environ)
    env.pop("COURSE_HEADLESS", None)  # a person is watching: widgets must be real widgets
    env.pop("MPLBACKEND", None)  # the kernel's own inline backend, as a learner has it
    env.update(
        COURSE_FAST="1",
        JUPYTER_CONFIG_DIR=str(folder / ".jupyter-config"),
        JUPYTER_RUNTIME_DIR=str(folder / ".jupyter-runtime"),
    )
    log = (folder / "jupyterlab.log").open("w")
    # started as `python -m course_lib lab` starts it: the course's lab settings (no news pop-up,
    # no kernel dialog) come only from what the course ships, never from flags added here
    server = subprocess.Popen(
        course_lab.command(["--no-browser", f"--ServerApp.port={port}", "--ServerApp.port_retries=0",
                     "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
                     f"--LabApp.workspaces_dir={folder / '.workspaces'}",
                     *(["--allow-root"] if hasattr(os, "geteuid") and os.geteuid() == 0 else [])]),
        env=course_lab.environment(env), stdout=log, stderr=subprocess.STDOUT, cwd=folder,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    raise RuntimeError("JupyterLab did not start:\n" + (folder / "jupyterlab.log").read_text()[-3000:])
                time.sleep(0.3)
        yield base, token, folder
    finally:
        _stop(server)
        log.close()


@pytest.fixture(scope="session")
def browser():
    with playwright_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser, request):
    """A fresh page; every screenshot it takes is listed in the report if the test fails."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    request.node.screenshots = []
    try:
        yield page
    finally:
        if getattr(request.node, "rep_call_failed", False):
            _shoot(page, request.node, "at-failure")
        context.close()


@pytest.fixture
def shoot(page, request):
    """``shoot(step)`` saves a screenshot of what the learner sees now."""
    return lambda step: _shoot(page, request.node, step)


def _shoot(page, node, step: str) -> Path:
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{node.name}-{len(node.screenshots):02d}-{step}.png"
    page.screenshot(path=str(path), full_page=False)
    node.screenshots.append(path)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call_failed = report.failed
    if report.failed and getattr(item, "screenshots", None):
        report.sections.append(("screenshots", "\n".join(str(p) for p in item.screenshots)))

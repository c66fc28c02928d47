"""What a learner sees in JupyterLab: notebooks opened from the file browser, "Run All" from the
Run menu, no errors, diagrams drawn as pictures, a working attention explorer, and an exercise check
going from "not yet solved" to "passed" once a solution is typed in."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import TimeoutError

pytestmark = pytest.mark.slow

ERROR_OUTPUT = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]'


def open_from_file_browser(page, lab, *folders_then_file: str) -> None:
    """Open the lab, then double-click through the file browser to the notebook."""
    base, token, _ = lab
    page.goto(f"{base}/lab/workspaces/{uuid.uuid4().hex}?reset&token={token}")  # a fresh layout
    page.locator(".jp-DirListing-content").wait_for()
    page.locator(".jp-BreadCrumbs-home").first.click()  # the file browser starts at the top
    for name in folders_then_file:
        page.locator(".jp-DirListing-itemText", has_text=re.compile(f"^{re.escape(name)}$")).first.dblclick()
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook").wait_for()
    # The kernel named in the notebook's metadata starts by itself: a "Select Kernel" dialog would
    # stop every learner at the first notebook, and so would a pop-up asking about Jupyter news.
    ready = page.locator(".jp-StatusBar-TextItem", has_text=re.compile(r"Python 3.*\| Idle")).first
    dialog = page.locator(".jp-Dialog")
    ready.or_(dialog).first.wait_for(timeout=120_000)
    assert dialog.count() == 0, f"JupyterLab showed a dialog: {dialog.first.inner_text()!r}"
    assert page.get_by_text("official Jupyter news").count() == 0, "JupyterLab asks about Jupyter news"


def run_all(page) -> None:
    """Run → Run All Cells, then wait until every code cell has run and the kernel is idle."""
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
    wait_until_idle(page)


def wait_until_idle(page) -> None:
    notebook = ".jp-NotebookPanel:not(.lm-mod-hidden)"
    page.wait_for_function(
        """(sel) => {
            const panel = document.querySelector(sel);
            if (!panel) return false;
            const prompts = [...panel.querySelectorAll('.jp-CodeCell .jp-InputArea-prompt')].map(p => p.textContent.trim());
            const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator');
            return prompts.length > 0 && prompts.every(p => /^\\[\\d+\\]:$/.test(p))
                && indicator && indicator.dataset.status === 'idle';
        }""",
        arg=notebook, timeout=240_000, polling=500,
    )


def cell_containing(page, text: str):
    return page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell", has=page.locator(".jp-InputArea-editor", has_text=text)).first


def outputs_text(cell) -> str:
    return cell.locator(".jp-Cell-outputArea").inner_text()


def test_exercise_notebook_runs_and_a_check_turns_from_not_solved_to_passed(page, lab, shoot):
    open_from_file_browser(page, lab, "exercises", "00_setup.ipynb")
    shoot("opened")
    run_all(page)
    shoot("ran-all")
    assert page.locator(ERROR_OUTPUT).count() == 0, "a cell shows an error after Run All"

    check = cell_containing(page, "grading.check_to_float_tensor(")
    assert "Exercise 0.1 not yet solved" in outputs_text(check)
    course_map = cell_containing(page, "diagrams.course_map()")
    course_map.scroll_into_view_if_needed()
    shoot("course-map")
    assert course_map.locator(".jp-Cell-outputArea img").count() == 1, "the course map drew no picture"

    exercise = cell_containing(page, 'raise NotImplementedError("Exercise 0.1')
    exercise.locator(".cm-content").click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(
        "def to_float_tensor(values: list) -> torch.Tensor:\n"
        "    return torch.as_tensor(values, dtype=torch.float32)\n"
    )
    shoot("typed-solution")
    page.keyboard.press("Shift+Enter")  # run the exercise cell; the check cell is next
    page.keyboard.press("Shift+Enter")  # run the check
    wait_until_idle(page)
    check.scroll_into_view_if_needed()
    shoot("checked")
    assert outputs_text(check).strip() == "Exercise 0.1 passed"
    assert page.locator(ERROR_OUTPUT).count() == 0


def test_attention_explorer_renders_as_controls_and_its_slider_changes_the_plot(page, lab, shoot):
    open_from_file_browser(page, lab, "notebooks", "04_attention.ipynb")
    run_all(page)
    assert page.locator(ERROR_OUTPUT).count() == 0, "a cell shows an error after Run All"

    for call in ("diagrams.attention_shapes()", "diagrams.transformer_blocks()"):  # diagrams drawn as code
        figure = cell_containing(page, call).locator(".jp-Cell-outputArea img")
        assert figure.count() == 1, f"{call} drew no picture"
    cell_containing(page, "diagrams.transformer_blocks()").scroll_into_view_if_needed()
    shoot("transformer-blocks")

    explorer = cell_containing(page, "attention_explorer(attend")
    explorer.scroll_into_view_if_needed()
    shoot("explorer")
    output = explorer.locator(".jp-Cell-outputArea")
    assert "Loading widget" not in output.inner_text()
    assert "VBox(" not in output.inner_text(), "the widget fell back to its text representation"
    dropdown = output.locator(".widget-dropdown select")
    sliders = output.locator(".widget-hslider")
    assert dropdown.count() == 1 and sliders.count() == 2, "the explorer's controls are missing"
    image = output.locator(".widget-output img")
    try:
        image.wait_for(timeout=30_000)
    except TimeoutError:
        pytest.fail("the explorer shows its controls but no heatmap")
    before = image.get_attribute("src")

    sliders.first.locator(".noUi-handle, .slider-container [role=slider]").first.focus()
    page.keyboard.press("ArrowRight")  # layer 0 -> 1
    page.wait_for_function(
        "([img, before]) => { const el = document.querySelector(img); return el && el.getAttribute('src') !== before; }",
        arg=[f".jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .widget-output img", before],
        timeout=30_000,
    )
    explorer.scroll_into_view_if_needed()
    shoot("slider-moved")
    assert output.locator(".widget-readout").first.inner_text().strip() == "1"

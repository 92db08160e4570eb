"""The playground in a real headless browser (Debian's chromium, driven by Playwright).

Without a browser these tests are skipped, saying why; under CI (the CI environment variable
set) a missing browser fails them instead, since .ci/run installs chromium.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.engine.authoring.conftest import Served

SHOTS = os.environ.get("MOERULES_SCREENSHOTS")  # a folder: save the README's screenshots


def _chromium() -> str | None:
    return (
        os.environ.get("MOERULES_CHROMIUM")
        or shutil.which("chromium")
        or shutil.which("chromium-browser")
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "the playwright package is not installed: pip install -e '.[test]'"
    executable = _chromium()
    if reason is None and executable is None:
        reason = (
            "no chromium browser on PATH: apt-get install chromium (Debian; .ci/run does "
            "it), or set MOERULES_CHROMIUM to a Chromium executable"
        )
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the playground in a browser: {reason}")
        pytest.skip(reason)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, served: Served) -> Iterator[Any]:
    # bypass_csp: the page's CSP forbids eval, which Playwright's wait_for_function uses
    context = browser.new_context(viewport={"width": 1400, "height": 860}, bypass_csp=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.goto(served.url)
    page.wait_for_selector("body[data-ready=true]", timeout=20_000)
    yield page
    context.close()
    assert errors == [], errors


def _edit(page: Any, text: str) -> None:
    page.fill("#source", text)


def _line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def test_load_edit_and_see_the_output_change(page: Any, served: Served) -> None:
    requests = page.locator("#tab-requests")
    assert "POST https://api-02.moengage.com/v1/transition/" in requests.inner_text()
    assert "Authorization: ***" in requests.inner_text()
    assert page.locator("#problems").inner_text() == "no problems"
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "playground.png"))
    text = served.bundle.read_text()
    _edit(page, text.replace('data_center: "02"', 'data_center: "03"'))
    page.wait_for_function(
        "document.getElementById('tab-requests').innerText.includes('api-03.moengage.com')"
    )
    # another record from the sample
    page.select_option("#record-pick", index=2)
    page.wait_for_function(
        "document.getElementById('tab-requests').innerText.includes('cust-1002') === false"
        " && document.getElementById('tab-requests').innerText.length > 0"
    )
    page.click("button[data-tab=trace]")
    assert "identity" in page.locator("#tab-trace").inner_text()
    # a pasted record instead of the sample's
    page.click("#paste-toggle")
    page.fill(
        "#record",
        '{"user_identities": {"customer_id": "pasted-1"}, "events": ['
        '{"event_type": "custom_event", "data": {"event_name": "Pasted Event"}}]}',
    )
    page.click("button[data-tab=requests]")
    page.wait_for_function(
        "document.getElementById('tab-requests').innerText.includes('Pasted Event')"
    )
    assert '"customer_id": "pasted-1"' in page.locator("#tab-requests").inner_text()


def test_an_error_appears_at_its_line(page: Any, served: Served) -> None:
    text = served.bundle.read_text().replace(
        "precedence: [customer_id, email]", "precedence: [customer_id, emial]"
    )
    line = _line_of(text, "precedence: [customer_id, emial]")
    _edit(page, text)
    marked = page.locator(f"#gutter div[data-line='{line}'].err")
    marked.wait_for(timeout=10_000)
    assert page.locator("#gutter div.err").count() == 1
    problem = page.locator("#problems div.error")
    assert problem.inner_text().startswith(f"{line}:")
    assert "unknown identity candidate 'emial' (did you mean 'email'?)" in problem.inner_text()
    assert "do not compile" in page.locator("#status").inner_text()
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "playground-error.png"))
    # a path the source never has: a warning, at its line, and the output still runs
    typo = served.bundle.read_text() + (
        "events:\n  - name: commerce-purchase\n    attributes:\n"
        "      Total Amount: {from: event.data.product_action.totl_amount, as: string}\n"
    )
    _edit(page, typo)
    warn = _line_of(typo, "totl_amount")
    page.locator(f"#gutter div[data-line='{warn}'].warn").wait_for(timeout=10_000)
    assert "did you mean 'total_amount'?" in page.locator("#problems div.warning").inner_text()
    assert "api-02.moengage.com" in page.locator("#tab-requests").inner_text()


def test_tests_diff_and_save(page: Any, served: Served) -> None:
    page.click("#run-tests")
    page.wait_for_selector("#tests-summary")
    assert page.locator("#tests-summary").inner_text() == "1 passed, 0 failed"
    edited = served.bundle.read_text().replace('data_center: "02"', 'data_center: "03"')
    _edit(page, edited)
    page.click("#run-diff")
    page.wait_for_selector("#diff-summary")
    assert (
        "are sent to https://api-03.moengage.com instead of https://api-02.moengage.com"
        in page.locator("#diff-summary").inner_text()
    )
    if SHOTS:
        page.screenshot(path=str(Path(SHOTS) / "playground-diff.png"))
    page.click("#save")
    page.wait_for_function("document.getElementById('status').innerText.startsWith('saved')")
    assert served.bundle.read_text() == edited


def test_completion_from_the_schema(page: Any, served: Served) -> None:
    text = served.bundle.read_text()
    anchor = "  precedence: [customer_id, email]\n"
    edited = text.replace(anchor, anchor + "  \n")
    _edit(page, edited)
    caret = edited.index(anchor) + len(anchor) + 2
    page.evaluate(
        f"(() => {{ const s = document.getElementById('source'); s.focus(); "
        f"s.setSelectionRange({caret}, {caret}); }})()"
    )
    page.keyboard.press("Control+Space")
    items = page.locator("#completions li")
    items.first.wait_for(timeout=5_000)
    keys = items.evaluate_all("els => els.map(e => e.dataset.key)")
    assert "candidates" in keys and "reject" in keys and "precedence" not in keys
    page.keyboard.type("rej")
    page.keyboard.press("Enter")
    assert "\n  reject: \n" in page.locator("#source").input_value()

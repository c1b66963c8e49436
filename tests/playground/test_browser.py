"""The playground in a real browser: Debian's Chromium, headless, driven by Playwright (the
PyPI package, whose driver is in its wheel; no browser download), against a real server on
127.0.0.1. Each state is saved as a PNG and checked: its size, that it is not blank, and the
colours where they must be (a variable's highlight at the clicked token, the red underline
of an error). `make browser` installs Chromium where it is missing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cogql.playground.server import Playground
from tests.playground import png
from tests.playground.test_server import LONG, streams_running

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip
FIRST_VARIABLE = (0xFF, 0xE0, 0x8A)  # --v0 in playground.css: the first variable's highlight
ERROR_RED = (0xC6, 0x28, 0x28)  # --bad: the error's underline
SENTIMENT = Path(__file__).resolve().parents[2] / "examples" / "sentiment.lmql"
TIMEOUT_MS = 120_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium: `make browser`"),
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        # Playwright gives the browser a fresh profile (user-data-dir) of its own
        chromium = p.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def playground() -> Iterator[Playground]:
    with Playground(SENTIMENT.read_text(encoding="utf-8"), model="random") as pg:
        yield pg


@pytest.fixture
def page(browser: Any, playground: Playground) -> Iterator[Any]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(playground.url)
    page.wait_for_selector("#decoder:not(:empty)")  # the page checked the query
    yield page
    page.close()
    assert not errors, errors  # no script error, nothing the CSP refused


def shot(page: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    page.screenshot(path=str(path))
    assert png.size(path) == (1400, 900)
    assert path.stat().st_size > 20_000  # a blank page compresses to a few KB
    return path


def clip(page: Any, selector: str, folder: Path, name: str, pad: int = 0) -> list[Any]:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"{selector} is not on screen"
    area = {"x": box["x"] - pad, "y": box["y"] - pad,
            "width": box["width"] + 2 * pad, "height": box["height"] + 2 * pad}  # fmt: skip
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), clip=area)
    return png.pixels(path)


def run_and_wait(page: Any, state: str = "finished") -> None:
    page.click("#run")
    page.wait_for_selector(f"body[data-state={state}]", timeout=TIMEOUT_MS)


def test_type_a_query_run_it_on_the_embedded_model_and_click_a_token(
    page: Any, tmp_path: Path
) -> None:
    page.fill("#model", "default")
    page.fill("#editor", "")
    page.locator("#editor").type('argmax "Q: What is the capital of France?\\nA:[CITY]" '
                                 "where len(TOKENS(CITY)) < 5")  # fmt: skip
    page.wait_for_selector("#highlight .k-hole")  # highlighted as typed
    run_and_wait(page)
    prompt = page.inner_text("#output .prompt")
    assert prompt.startswith("Q: What is the capital of France?\nA:")
    assert "Paris" in page.inner_text(".var[data-name=CITY]")
    page.click(".var[data-name=CITY] .tok >> nth=0")
    alternatives = page.locator("#token-view .alt")
    assert alternatives.count() == 5
    assert "log-prob" in page.inner_text("#token-view .head")
    assert "model call #1" in page.inner_text("#token-view")  # numbered within the run
    assert page.locator("#calls tbody tr[data-kind=GENERATE]").count() == 1
    shot(page, tmp_path, "token")
    pixels = clip(page, ".tok.chosen", tmp_path, "token-clip")
    assert png.has_colour(pixels, FIRST_VARIABLE) > 10  # the variable's highlight


def test_sentiment_streams_and_shows_the_distribution_as_bars(page: Any, tmp_path: Path) -> None:
    run_and_wait(page)
    assert page.locator(".var[data-name=ANALYSIS] .tok").count() > 0
    bars = page.locator("#result .dist")
    assert bars.count() == 3 and page.locator("#result .dist.best").count() == 1
    assert page.locator("#calls tbody tr[data-kind=SCORE]").count() == 1
    page.click(".var[data-name=ANALYSIS] .tok >> nth=1")
    assert "the constraints allowed" in page.inner_text("#token-view")
    path = shot(page, tmp_path, "sentiment")
    assert png.distinct_colours(png.pixels(path)[400:420]) > 5  # not one flat colour


def test_stop_ends_a_long_run_and_its_model_call(page: Any, tmp_path: Path) -> None:
    page.fill("#editor", LONG)
    page.click("#run")
    page.wait_for_selector(".var[data-name=X] .tok", timeout=TIMEOUT_MS)  # streaming
    page.click("#stop")
    page.wait_for_selector("body[data-state=stopped]", timeout=TIMEOUT_MS)
    assert page.inner_text("#status") == "stopped"
    assert streams_running() == 0
    shot(page, tmp_path, "stopped")


def test_an_error_is_underlined_at_its_line_and_column(page: Any, tmp_path: Path) -> None:
    page.fill("#editor", 'argmax\n    "Hi[X]"\nwhere len(X) <')
    mark = page.wait_for_selector("#error-mark")
    assert mark.inner_text() == "<"  # line 3, column 15: the expression ends there
    assert "(line 3, column 15)" in page.inner_text("#error")
    assert page.locator("#gutter span").all_inner_texts() == ["1\n", "2\n", "3\n"]
    assert page.locator("#gutter span.bad").inner_text().strip() == "3"  # the error's line
    shot(page, tmp_path, "error")
    pixels = clip(page, "#error-mark", tmp_path, "error-clip", pad=4)
    assert png.has_colour(pixels, ERROR_RED, tolerance=40) > 2


def test_beam_draws_its_search_tree(page: Any, tmp_path: Path) -> None:
    page.fill("#editor", 'beam(n=3)\n    "Say:[X]" where len(TOKENS(X)) < 3')
    page.wait_for_selector("#decoder:text('beam')")
    run_and_wait(page)
    assert page.locator("#tree .node.result").count() == 3
    assert page.locator("#tree .node").count() > page.locator("#tree .node.kept").count()
    assert page.locator("#output .run").count() == 3  # the results side by side
    numbers = page.locator("#calls tbody tr td:first-child").all_inner_texts()
    assert numbers == [str(n) for n in range(1, len(numbers) + 1)]
    page.click("#output .run >> nth=0 >> .var[data-name=X] .tok >> nth=1")  # a result's token
    assert "the beam's candidates at this step" in page.inner_text("#token-view")
    assert page.locator("#token-view .alt").count() == 3  # the step's three candidates
    assert page.locator("#token-view .alt.taken").count() == 1
    shot(page, tmp_path, "beam")


def test_sample_results_are_side_by_side(page: Any, tmp_path: Path) -> None:
    page.fill("#editor", 'sample(n=3, seed=1)\n    "Say:[X]" where len(TOKENS(X)) < 4')
    run_and_wait(page)
    runs = page.locator("#output .run")
    assert runs.count() == 3
    tops = {round(runs.nth(i).bounding_box()["y"]) for i in range(3)}
    assert len(tops) == 1  # one row of columns
    shot(page, tmp_path, "sample")

"""Makes docs/playground.png, the README's picture of the playground: examples/sentiment.lmql
run on the embedded model in headless Chromium (Debian's, `make browser`), a token clicked.

Usage: .venv/bin/python docs/playground_screenshot.py
"""

from __future__ import annotations

from pathlib import Path

from playwright.sync_api import sync_playwright

from cogql.playground.server import Playground

ROOT = Path(__file__).resolve().parents[1]
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


def main() -> None:
    source = (ROOT / "examples" / "sentiment.lmql").read_text(encoding="utf-8")
    with Playground(source, model="default") as pg, sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.goto(pg.url)
        page.wait_for_selector("#decoder:not(:empty)")
        page.click("#run")
        page.wait_for_selector("body[data-state=finished]", timeout=300_000)
        page.click(".var[data-name=ANALYSIS] .tok >> nth=3")
        page.screenshot(path=str(ROOT / "docs" / "playground.png"))
        browser.close()
    print("wrote docs/playground.png")


if __name__ == "__main__":
    main()

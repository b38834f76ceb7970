"""Slider latency in the browser: from a slider move to the new picture, per chapter and for the explorer.

Run by hand from the repository root after ``make test-live`` has installed JupyterLab and Voilà:
``.venv/bin/python benchmarks/bench_sliders.py [--moves 5] [--chapters 02_strided 04_sliding_window]``.

For each chapter, JupyterLab (headless, 127.0.0.1, a token) runs the notebook up to its live explorer
cell in Debian's Chromium; the first slider of that cell is then moved ``--moves`` times by one keyboard
step each (a mouse move would add its drag time). The explorer (``make explore``'s Voilà page) gets the
same moves on each of its sliders for the strided pattern at n = 1024. A move's latency is measured in
the page, from the key press to the
moment the new picture is in the page, so it includes the kernel's work, the websocket and the
browser's rendering. The table gives the median and the worst move, and each median against the
explorer's median measured in the same run (the baseline).

The numbers depend on the machine's load: the header prints the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "live"))

import livelab  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

EXPLORER_SLIDERS = ("window", "stride", "n")


def chapter_latencies(browser, server, chapter: str, moves: int) -> tuple[str, list[float]]:
    index, _ = livelab.live_cell(livelab.ROOT / "notebooks" / chapter)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(300_000)
    try:
        page.goto(f"{server.url}/lab/tree/notebooks/{chapter}?token={server.token}")
        page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.content?.widgets?.length")
        errors = page.evaluate(livelab.RUN_TO_LIVE_CELL_JS, index)
        if errors:
            raise RuntimeError(f"{chapter}: {errors}")
        cell = page.locator(livelab.LIVE_CELL)
        cell.locator("img").first.wait_for()
        name = cell.locator(".widget-slider .widget-label").first.inner_text().strip()
        slider = livelab.by_label(cell, name)
        return name, [livelab.move(page, cell, slider, "keyboard") for _ in range(moves)]
    finally:
        context.close()


def explorer_latencies(browser, server, moves: int) -> dict[str, list[float]]:
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    try:
        page.goto(f"{server.url}/?token={server.token}")
        page.locator(".widget-image").wait_for()
        root = page.locator("body")
        found = {}
        for name in EXPLORER_SLIDERS:
            slider = livelab.by_label(page, name)
            found[name] = [livelab.move(page, root, slider, "keyboard") for _ in range(moves)]
            if name == "n":  # back to the default length for the next rows
                page.reload()
                page.locator(".widget-image").wait_for()
        return found
    finally:
        context.close()


def main() -> None:
    chapters = sorted(p.stem for p in (livelab.ROOT / "notebooks").glob("*.ipynb") if livelab.live_cell(p))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=5, help="moves per slider (default 5)")
    parser.add_argument("--chapters", nargs="*", default=chapters, help="chapter names (default: all)")
    args = parser.parse_args()
    if args.moves < 1:
        parser.error("--moves must be >= 1")
    unknown = sorted(set(args.chapters) - set(chapters))
    if unknown:
        parser.error(f"--chapters: no live explorer in {unknown}; choose from {chapters}")
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs; {args.moves} moves per slider")
    rows = []
    with tempfile.TemporaryDirectory() as home, sync_playwright() as playwright:
        browser = livelab.launch(playwright)
        voila = livelab.start("voila", Path(home) / "voila")
        try:
            for name, times in explorer_latencies(browser, voila, args.moves).items():
                rows.append(("explorer (Voila, strided, n = 1024)", name, times))
        finally:
            voila.stop()
        lab = livelab.start("lab", Path(home) / "lab")
        try:
            for chapter in args.chapters:
                start = time.monotonic()
                name, times = chapter_latencies(browser, lab, chapter + ".ipynb", args.moves)
                rows.append((chapter, name, times))
                print(f"  {chapter}: ran and moved {name} in {time.monotonic() - start:.0f} s", flush=True)
                livelab.shut_down_kernels(lab)
        finally:
            lab.stop()
            browser.close()
    baseline = statistics.median(rows[0][2])
    print(f"\n{'page':38} {'slider':22} {'median ms':>10} {'worst ms':>9} {'x explorer':>11}")
    for page, name, times in rows:
        median = statistics.median(times)
        print(f"{page:38} {name:22} {median:10.0f} {max(times):9.0f} {median / baseline:11.1f}")


if __name__ == "__main__":
    main()

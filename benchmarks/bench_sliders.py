"""Slider latency in the browser: from a slider move to the new picture, per chapter and for the explorer.

Run by hand from the repository root after ``make test-live`` has installed JupyterLab and Voilà:
``.venv/bin/python benchmarks/bench_sliders.py [--moves 5] [--chapters 02_strided 04_sliding_window]``.

For each chapter, JupyterLab (headless, 127.0.0.1, a token) runs the notebook up to its live cell in
Debian's Chromium; the first slider of that cell is then moved ``--moves`` times by one keyboard step
each (a mouse drag would add its own duration). The **baseline** is the chapter's live cell as it was
before ``sparsekit.live`` (``ipywidgets.interact`` redrawing a new pyplot figure with ``plt.show()``,
taken from commit :data:`BASELINE_COMMIT` by git), added under the live cell in the same kernel and
moved the same way in the same run. The explorer (``make explore``'s Voilà page) gets the same moves
on its strided sliders at n = 1024. A move's latency is measured in the page, from the key press to the
moment the new picture is in the page (decoded), so it includes the kernel's work, the websocket and
the browser's rendering. The table gives the median and the worst move of each, and the baseline's
median over the new median.

Each chapter is bounded (``--chapter-timeout`` seconds for running it, 60 s per move); one that fails
is reported as such and the run goes on. The numbers depend on the machine's load: each row prints
the load average (1 minute) when it was measured.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "live"))

import livelab  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

EXPLORER_SLIDERS = ("window", "stride", "n")
#: The last commit whose chapters' live cells all redrew through ``interact`` and ``plt.show()``.
BASELINE_COMMIT = "7e2ffaa"
BASELINE_CELL = "[data-baseline-cell=yes]"

# Insert `source` as a new code cell under the live cell, run it and mark it for the locators.
ADD_BASELINE_JS = """
async ([index, source]) => {
  const app = window.jupyterapp;
  const notebook = app.shell.currentWidget.content;
  notebook.model.sharedModel.insertCell(index + 1, {cell_type: 'code', source});
  notebook.activeCellIndex = index + 1;
  await app.commands.execute('notebook:run-cell');
  const cell = notebook.widgets[index + 1];
  cell.node.dataset.baselineCell = 'yes';
  cell.node.scrollIntoView();
  const errors = cell.model.outputs.toJSON().filter(o => o.output_type === 'error');
  return errors.map(o => `${o.ename}: ${o.evalue}`);
}
"""


def baseline_source(chapter: str) -> str | None:
    """The chapter's live cell at :data:`BASELINE_COMMIT` (None if the chapter did not exist then)."""
    shown = subprocess.run(
        ["git", "show", f"{BASELINE_COMMIT}:notebooks/{chapter}"],
        cwd=livelab.ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if shown.returncode != 0:
        return None
    for cell in json.loads(shown.stdout)["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and "widgets.interact(" in source:
            return source
    return None


def moves_of(page, root, moves: int) -> tuple[str, list[float]]:
    """Move the first slider in ``root`` ``moves`` times by keyboard; its label and the latencies."""
    name = livelab.slider_labels(root, visible_only=True)[0]
    slider = livelab.by_label(root, name)
    return name, [livelab.move(page, root, slider, "keyboard") for _ in range(moves)]


def chapter_latencies(browser, server, chapter: str, moves: int, timeout_s: float) -> list[tuple]:
    """Rows ``(page, slider, times)`` for the chapter's live cell and its baseline."""
    index, _ = livelab.live_cell(livelab.ROOT / "notebooks" / chapter)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(timeout_s * 1000)
    rows = []
    try:
        cell = livelab.open_live_cell(page, server, chapter, index, timeout_ms=timeout_s * 1000)
        page.set_default_timeout(60_000)
        name, times = moves_of(page, cell, moves)
        rows.append(("new", name, times))
        source = baseline_source(chapter)
        if source is not None and "live.interact(" not in source:
            errors = page.evaluate(ADD_BASELINE_JS, [index, source])
            if errors:  # the chapter was rebuilt since: its old cell no longer runs in it
                print(f"  {chapter}: no baseline, the old live cell raised {errors}", flush=True)
                return rows
            old = page.locator(BASELINE_CELL)
            old.locator("img").first.wait_for()
            rows.append(("old", *moves_of(page, old, moves)))
        return rows
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
        return found
    finally:
        context.close()


def load() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
    chapters = sorted(p.stem for p in (livelab.ROOT / "notebooks").glob("*.ipynb") if livelab.live_cell(p))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--moves", type=int, default=5, help="moves per slider (default 5)")
    parser.add_argument("--chapters", nargs="*", default=chapters, help="chapter names (default: all)")
    parser.add_argument("--chapter-timeout", type=float, default=600, help="seconds to run a chapter")
    args = parser.parse_args()
    if args.moves < 1:
        parser.error("--moves must be >= 1")
    unknown = sorted(set(args.chapters) - set(chapters))
    if unknown:
        parser.error(f"--chapters: no live explorer in {unknown}; choose from {chapters}")
    print(f"{os.cpu_count()} CPUs, load average {load()}; {args.moves} keyboard moves per slider", flush=True)
    results: list[tuple[str, str, list[float], list[float] | None, str]] = []
    failed: list[str] = []
    with tempfile.TemporaryDirectory() as home, sync_playwright() as playwright:
        browser = livelab.launch(playwright)
        voila = livelab.start("voila", Path(home) / "voila")
        try:
            for name, times in explorer_latencies(browser, voila, args.moves).items():
                results.append(("explorer (Voila, strided)", name, times, None, load()))
            print(f"  explorer: moved {', '.join(EXPLORER_SLIDERS)}", flush=True)
        finally:
            voila.stop()
        lab = livelab.start("lab", Path(home) / "lab")
        try:
            for chapter in args.chapters:
                start = time.monotonic()
                try:
                    rows = dict(
                        (kind, (name, times))
                        for kind, name, times in chapter_latencies(
                            browser, lab, chapter + ".ipynb", args.moves, args.chapter_timeout
                        )
                    )
                except Exception as error:  # report and go on: one chapter must not lose the others
                    failed.append(f"{chapter}: {type(error).__name__}: {str(error)[:300]}")
                    print(f"  {chapter}: FAILED after {time.monotonic() - start:.0f} s", flush=True)
                else:
                    name, times = rows["new"]
                    old = rows.get("old", (None, None))[1]
                    results.append((chapter, name, times, old, load()))
                    print(
                        f"  {chapter}: ran and moved {name} in {time.monotonic() - start:.0f} s", flush=True
                    )
                finally:
                    livelab.shut_down_kernels(lab)
        finally:
            lab.stop()
            browser.close()
    print(
        f"\n{'page':28} {'slider':20} {'new median':>10} {'new worst':>9} {'old median':>10} "
        f"{'old worst':>9} {'old/new':>7} {'load':>5}"
    )
    for page, name, times, old, at in results:
        median = statistics.median(times)
        row = f"{page:28} {name:20} {median:10.0f} {max(times):9.0f}"
        if old:
            row += f" {statistics.median(old):10.0f} {max(old):9.0f} {statistics.median(old) / median:7.1f}"
        else:
            row += f" {'-':>10} {'-':>9} {'-':>7}"
        print(f"{row} {at:>5}")
    print("(ms from the key press to the new picture in the page; old: interact + plt.show())")
    for line in failed:
        print(f"FAILED {line}")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

"""The live sliders as a reader uses them (`make test-live`): JupyterLab and the Voilà explorer in Chromium.

Each chapter runs in JupyterLab up to and including its live explorer cell (the cells after it only
repeat what the book already checks); every slider of that cell is found by its visible label (the
parameter's name), moved once with the keyboard and once with the mouse, and each move must change the
picture. The explorer page must also print the numbers sparsekit computes for the new parameters.
No cell may raise, no output may show an error, and the browser console must stay clean.
"""

from __future__ import annotations

import json
import os
import pty
import signal
import subprocess
import threading
import time
import urllib.request

import livelab
import psutil
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout
from playwright.sync_api import expect, sync_playwright

import sparsekit as sk

CHAPTERS = sorted(p.name for p in (livelab.ROOT / "notebooks").glob("*.ipynb") if livelab.live_cell(p))
ERROR_OUTPUT = '[data-mime-type="application/vnd.jupyter.error"]'  # a traceback shown in an output


def fusion_numbers(values: dict[str, int]) -> list[str]:
    """What chapter 10's explorer prints for its slider values, computed here with sparsekit."""
    from sparsekit import segment_views

    pattern = sk.paraphrase_fusion(
        values["num_paraphrases"], values["tokens_per_paraphrase"],
        separator_tokens=values["separator_tokens"], num_generated_tokens=values["num_generated_tokens"],
    )  # fmt: skip
    phases = segment_views.phase_summary(pattern)
    return [
        f"encoding sparsity {phases['encoding']['sparsity']:.2%}",
        f"generation {phases['generation']['sparsity']:.2%}",
        f"whole mask {phases['full']['sparsity']:.2%}",
    ]


# Chapters whose live explorer prints numbers that follow from the slider values alone.
PRINTED_NUMBERS = {"10_flexattention.ipynb": fusion_numbers}


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = livelab.launch(playwright)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = livelab.start("lab", tmp_path_factory.mktemp("lab"))
    yield server
    assert server.stop() in (0, 130, -signal.SIGINT), server.log.read_text()[-3000:]


@pytest.fixture(scope="module")
def voila(tmp_path_factory):
    server = livelab.start("voila", tmp_path_factory.mktemp("voila"))
    yield server
    server.stop()


def test_every_chapter_has_a_live_explorer():
    chapters = sorted(p.name for p in (livelab.ROOT / "notebooks").glob("[0-9]*.ipynb"))
    assert CHAPTERS == chapters, f"chapters without a live explorer: {sorted(set(chapters) - set(CHAPTERS))}"


@pytest.mark.timeout(900)  # the slowest chapters run a few minutes up to their live cell on two busy cores
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_live_sliders_redraw(chapter, lab, browser):
    index, source = livelab.live_cell(livelab.ROOT / "notebooks" / chapter)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    console = livelab.Console(page)
    try:
        page.goto(f"{lab.url}/lab/tree/notebooks/{chapter}?token={lab.token}")
        page.wait_for_function("() => window.jupyterapp?.shell.currentWidget?.content?.widgets?.length")
        errors = page.evaluate(livelab.RUN_TO_LIVE_CELL_JS, index)
        assert not errors, f"{chapter}: cells raised: {errors}"
        cell = page.locator(livelab.LIVE_CELL)
        cell.locator(".widget-slider").first.wait_for()
        cell.locator("img").first.wait_for()
        labels = [t.strip() for t in cell.locator(".widget-slider .widget-label").all_inner_texts()]
        assert labels, f"{chapter}: no slider in the live explorer"
        # Each label names a parameter: an identifier the cell spells out (a literal description or
        # a key of the cell's table of limits); the sliders declared literally must all be shown.
        unnamed = [t for t in labels if not (t.isidentifier() and t in source)]
        assert not unnamed, f"{chapter}: sliders not labelled with a parameter name: {unnamed}"
        assert set(livelab.slider_names(source)) <= set(labels), (labels, livelab.slider_names(source))
        for name in labels:
            slider = livelab.by_label(cell, name)
            assert slider.count() == 1, f"{chapter}: {slider.count()} sliders labelled {name!r}"
            for how in ("keyboard", "mouse"):
                value = livelab.readout(slider)
                move_somewhere(page, cell, slider, how, f"{chapter}: {name} by {how}")
                assert livelab.readout(slider) != value, f"{chapter}: {name} by {how} kept the value {value}"
                if chapter in PRINTED_NUMBERS:
                    values = {label: int(livelab.readout(livelab.by_label(cell, label))) for label in labels}
                    for number in PRINTED_NUMBERS[chapter](values):
                        expect(cell.locator(".widget-output")).to_contain_text(number)
        shown = cell.locator(ERROR_OUTPUT)
        assert shown.count() == 0, f"{chapter}: the live cell shows an error:\n{shown.first.inner_text()}"
        assert not console.errors, f"{chapter}: {console.errors}"
    finally:
        context.close()
        livelab.shut_down_kernels(lab)


def move_somewhere(page, cell, slider, how: str, what: str) -> None:
    """Move ``slider``; the picture must change, for the current choice of the cell's dropdown or, when
    the slider belongs to other choices (chapter 07's pattern picker), for at least one of them."""
    try:
        livelab.move(page, cell, slider, how, timeout_ms=30_000)
        return
    except PlaywrightTimeout:
        pass
    pickers = cell.locator("select")
    options = pickers.first.locator("option").all_inner_texts() if pickers.count() else []
    for option in options:
        livelab.settle(cell)
        pickers.first.select_option(option)
        livelab.settle(cell)
        try:
            livelab.move(page, cell, slider, how, timeout_ms=30_000)
            return
        except PlaywrightTimeout:
            continue
    pytest.fail(f"{what}: the picture did not change (dropdown choices tried: {options})")


def expected_numbers(family: str, values: dict[str, int], n: int, tile: int) -> list[str]:
    """What the explorer must print, computed here from sparsekit's pattern views."""
    pattern = getattr(sk, family)(**values)
    if family in ("axial", "neighborhood_2d"):
        n = values["height"] * values["width"]
    tile = min(tile, n)
    return [
        f"n = {n}:",
        f"exact sparsity {pattern.sparsity(n):.4%}",
        f"tile sparsity {pattern.block_sparsity(n, tile):.4%}",
    ]


@pytest.mark.timeout(600)
def test_explorer_page_redraws_and_prints_what_sparsekit_computes(voila, browser):
    from sparsekit.explorer import FAMILIES

    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(60_000)
    console = livelab.Console(page)
    try:
        page.goto(f"{voila.url}/?token={voila.token}")
        image = page.locator(".widget-image")
        image.wait_for()
        root = page.locator("body")
        assert "sparsekit.explore()" not in root.inner_text(), "the page shows its code"
        for family in ("strided", "bigbird", "neighborhood_2d", "bigbird_blocks"):
            picker = page.locator(".widget-dropdown select")
            if picker.input_value() != family:
                before = livelab.picture_src(root)
                picker.select_option(family)
                page.wait_for_function("b => document.querySelector('.widget-image').src !== b", arg=before)
            names = ["n", "tile", *FAMILIES[family]]
            for name in names:
                slider = livelab.by_label(page, name)
                if slider.locator(".noUi-target[disabled], .noUi-target.noUi-state-disabled").count():
                    continue  # n on a grid family: the grid fixes it
                for how in ("keyboard", "mouse"):
                    numbers = page.locator(".widget-html").filter(has_text="exact sparsity")
                    if name == "tile":  # the tile changes the tile sparsity, not the picture
                        before = numbers.inner_text()
                        livelab.nudge(page, slider, how)
                        expect(numbers).not_to_have_text(before)
                    else:
                        livelab.move(page, root, slider, how)
                    values = {p: int(livelab.readout(livelab.by_label(page, p))) for p in names}
                    text = numbers.inner_text()
                    params = {p: values[p] for p in FAMILIES[family]}
                    for number in expected_numbers(family, params, values["n"], values["tile"]):
                        assert number in text, f"{family} {values}: {number!r} not in {text!r}"
        assert not console.errors, console.errors
    finally:
        context.close()


def drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except OSError:  # closed
        pass


@pytest.mark.timeout(300)
def test_make_lab_stops_on_ctrl_c_with_its_kernels(tmp_path):
    """`make lab` in a terminal: Ctrl-C ends it (exit 0 or 130) and leaves no kernel running."""
    port, token = livelab.free_port(), "live-test-token"
    env = livelab._environment(tmp_path)
    primary, secondary = pty.openpty()  # a terminal, as a reader's: Jupyter asks before quitting on one
    process = subprocess.Popen(
        ["make", "--no-print-directory", "lab",
         f"LAB_ARGS=--no-browser --ServerApp.port={port} --IdentityProvider.token={token}"],
        cwd=livelab.ROOT, env=env, stdin=secondary, stdout=secondary, stderr=secondary,
        start_new_session=True,
    )  # fmt: skip
    os.close(secondary)
    # Read the terminal as a terminal would: a full pty buffer would block the server's log writes.
    threading.Thread(target=drain, args=(primary,), daemon=True).start()
    try:
        headers = {"Authorization": f"token {token}"}
        deadline = time.monotonic() + 120
        while True:
            try:
                url = f"http://127.0.0.1:{port}/api/kernels"
                request = urllib.request.Request(url, data=b'{"name": "python3"}', headers=headers)
                with urllib.request.urlopen(request, timeout=5) as answer:
                    kernel = json.load(answer)["id"]
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "make lab did not start"
                time.sleep(1)
        children = psutil.Process(process.pid).children(recursive=True)
        kernels = [p for p in children if kernel in " ".join(p.cmdline())]
        assert len(kernels) == 1, "the kernel process was not found"
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert process.wait(60) in (0, 130, -signal.SIGINT)
        gone, alive = psutil.wait_procs(kernels, timeout=30)
        assert not alive, f"kernel processes left running: {alive}"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        os.close(primary)

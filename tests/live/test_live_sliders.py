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


def fusion_numbers(values: dict, params: dict) -> list[str]:
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


def sparsity_line(pattern, n: int, name: str | None = None) -> list[str]:
    prefix = "" if name is None else f"{name}: "
    return [f"{prefix}sparsity {pattern.sparsity(n):.4%} at n = {n}"]


def seed_patterns(v: dict, p: dict) -> dict:
    """Chapters 00 and 07: the patterns under the seed project's names, from sparsekit's factories."""
    window, stride, block = v.get("window_size", 32), v.get("stride", 32), v.get("block_size", 32)
    return {
        "Normal": lambda: sk.causal(),
        "Strided": lambda: sk.strided(window, stride),
        "Fixed": lambda: sk.fixed(block),
        "Sliding Window": lambda: sk.sliding_window(window),
        "Dilated Sliding Window": lambda: sk.dilated_sliding_window(window, v.get("dilation", 2)),
        "Block Local": lambda: sk.block_local(block),
        "Axial": lambda: sk.axial(p["height"], p["width"]),
        "Longformer": lambda: sk.longformer(window, v["global_width"]),
        "BigBird": lambda: sk.bigbird(v["nz_per_row"], window, v["global_width"], seed=p["seed"]),
    }


def query_keys(v: dict, p: dict) -> list[str]:
    """Chapter 06: the keys of the query pixel's token under each pattern."""
    q = v["query_row"] * p["width"] + v["query_col"]
    patterns = {
        "Block-local": sk.block_local(v["block_size"]),
        "Axial": sk.axial(p["height"], p["width"]),
        "Longformer": sk.longformer(v["window_size"], v["global_width"]),
    }
    keys = ", ".join(f"{name} {int(pattern.row_counts(p['size'])[q])}" for name, pattern in patterns.items())
    return [f"keys of token {q}: {keys}"]


def resource_numbers(v: dict, p: dict) -> list[str]:
    """Chapter 09: the step counts of sparsekit.resources for the chosen mask and order."""
    from sparsekit import resources

    masks = {
        "normal": sk.causal(),
        "strided": sk.strided(p["window_size"], p["stride"]),
        "fixed": sk.fixed(p["window_size"]),
        "sliding_window": sk.sliding_window(p["window_size"]),
    }
    a = resources.analyze(masks[v["mask"]], p["size"], v["num_multiplications"], v["read_limit"], v["order"])
    return [
        f"{a.num_steps} steps, max reads {a.max_reads} at step {a.max_step}, "
        f"loads {a.total_loads}, ratio {a.reuse_ratio:.2f}"
    ]


def modern_numbers(v: dict, p: dict) -> list[str]:
    """Chapter 12: the streaming, prefix and chunked families."""
    families = {
        "attention_sinks": lambda: sk.attention_sinks(v["sinks"], v["window"]),
        "causal_window": lambda: sk.causal_window(v["window"]),
        "prefix_lm": lambda: sk.prefix_lm(min(v["prefix"], v["size"])),
        "chunked": lambda: sk.chunked(v["chunk"]),
    }
    return sparsity_line(families[v["family"]](), v["size"], v["family"])


def bigbird_numbers(v: dict, p: dict) -> list[str]:
    """Chapter 08: the BigBird that sparsekit.solve's local search finds for the target and shares."""
    from sparsekit import solve

    shares = (v["random_share"], v["window_share"], v["global_share"])
    shares = shares if sum(shares) else (1.0, 1.0, 1.0)
    found = solve.bigbird_exact(v["n"], v["target"], split=shares, seed=p["seed"], search="local")
    return [found.describe()]


# What each chapter's live cell prints, from its control values ``v`` (by label) and its parameters
# cell ``p``, computed here with sparsekit. Chapter 13 prints numbers of its own synthetic queries and
# keys (built in the chapter), so only its picture is checked.
PRINTED_NUMBERS = {
    "00_introduction.ipynb": lambda v, p: sparsity_line(
        seed_patterns(v, p)[v["name"]](), v["size"], v["name"]
    ),
    "01_causal.ipynb": lambda v, p: sparsity_line(sk.causal(), v["size"]),
    "02_strided.ipynb": lambda v, p: sparsity_line(sk.strided(v["window_size"], v["stride"]), v["size"]),
    "03_fixed.ipynb": lambda v, p: sparsity_line(sk.fixed(v["block_size"], v["summary"]), p["size"]),
    "04_sliding_window.ipynb": lambda v, p: sparsity_line(sk.sliding_window(v["window_size"]), p["size"]),
    "05_dilated_sliding_window.ipynb": lambda v, p: sparsity_line(
        sk.dilated_sliding_window(v["window_size"], v["dilation"]), v["size"]
    ),
    "06_image_patterns.ipynb": query_keys,
    "07_comparison.ipynb": lambda v, p: sparsity_line(
        seed_patterns(v, p)[v["pattern"]](), p["size"], v["pattern"]
    ),
    "08_bigbird.ipynb": bigbird_numbers,
    "09_resources.ipynb": resource_numbers,
    "10_flexattention.ipynb": lambda v, p: fusion_numbers(v, p),
    "12_modern_patterns.ipynb": modern_numbers,
}


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
    notebook = livelab.ROOT / "notebooks" / chapter
    index, source = livelab.live_cell(notebook)
    params = livelab.parameters(notebook)
    context = browser.new_context(viewport={"width": 1280, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(120_000)
    console = livelab.Console(page)
    logged = len(lab.log.read_text())  # the server's log holds its kernels' stderr
    try:
        cell = livelab.open_live_cell(page, lab, chapter, index)
        running = livelab.kernels(lab)
        assert len(running) == 1, f"{chapter}: {len(running)} kernels run, not the chapter's one"
        labels = livelab.slider_labels(cell)
        assert labels, f"{chapter}: no slider in the live explorer"
        # Each label names a parameter: an identifier the cell spells out (a literal description or
        # a key of the cell's table of limits); the sliders declared literally must all be there.
        unnamed = [t for t in labels if not (t.isidentifier() and t in source)]
        assert not unnamed, f"{chapter}: sliders not labelled with a parameter name: {unnamed}"
        assert set(livelab.slider_names(source)) <= set(labels), (labels, livelab.slider_names(source))
        moved: set[str] = set()
        for option in picker_choices(cell, labels):
            if option is not None:  # a pattern picker that shows other sliders: choose, wait for its picture
                livelab.choose(page, cell, option)
            for name in livelab.slider_labels(cell, visible_only=True):
                if name in moved:
                    continue
                slider = livelab.by_label(cell, name)
                assert slider.count() == 1, f"{chapter}: {slider.count()} sliders labelled {name!r}"
                for how in ("keyboard", "mouse"):
                    value = livelab.readout(slider)
                    try:
                        livelab.move(page, cell, slider, how, timeout_ms=30_000)
                    except PlaywrightTimeout:
                        pytest.fail(f"{chapter}: moving {name} by {how} (from {value}) kept the picture")
                    assert livelab.readout(slider) != value, (
                        f"{chapter}: {name} by {how} kept the value {value}"
                    )
                    check_numbers(chapter, cell, params)
                moved.add(name)
        assert moved == set(labels), f"{chapter}: sliders never shown: {sorted(set(labels) - moved)}"
        shown = cell.locator(ERROR_OUTPUT)
        assert shown.count() == 0, f"{chapter}: the live cell shows an error:\n{shown.first.inner_text()}"
        assert not cell.locator("b[style*='#b00020']").count(), f"{chapter}: {cell.inner_text()}"
        assert not console.errors, f"{chapter}: {console.errors}"
        # A callback's exception is shown in red in the cell (sparsekit.live, checked above); what the
        # kernel process itself logs (a failed comm message, a crash) goes to the server's log.
        kernel_log = lab.log.read_text()[logged:]
        assert "Traceback" not in kernel_log, f"{chapter}: the kernel logged an error:\n{kernel_log[-3000:]}"
    finally:
        context.close()
        livelab.shut_down_kernels(lab)


def picker_choices(cell, labels: list[str]) -> list[str | None]:
    """The current state (None), then, when some sliders are hidden, every other choice of the cell's
    first dropdown: each slider is moved where its pattern is chosen (chapter 07's pattern picker)."""
    if set(livelab.slider_labels(cell, visible_only=True)) == set(labels):
        return [None]
    picker = cell.locator("select").first
    current = picker.input_value()
    return [None, *(o for o in picker.locator("option").all_inner_texts() if o != current)]


def check_numbers(chapter: str, cell, params: dict) -> None:
    """The line the cell prints must be what sparsekit computes for the values the controls show."""
    if chapter not in PRINTED_NUMBERS:
        return
    values = livelab.control_values(cell)
    for number in PRINTED_NUMBERS[chapter](values, params):
        expect(cell).to_contain_text(number, timeout=30_000)


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

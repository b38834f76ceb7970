"""Drive the live sliders as a reader does: JupyterLab or Voilà on 127.0.0.1 with a token, Chromium.

Shared by the live browser tests (tests/live) and the latency benchmark (benchmarks/bench_sliders.py).
The servers run the Makefile's commands (`make lab`, `make explore` start the same programs with the
same options); each gets a free port, a random token and its own Jupyter config, runtime and workspace
folders, so a reader's settings never change what the test sees.
"""

from __future__ import annotations

import ast
import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = ROOT / ".venv" / "bin"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
EXPLORER = "explore/explorer.ipynb"
#: The cells of the open notebook, in order (every cell is in the page: windowing is off).
CELLS = ".jp-Notebook .jp-Cell"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A started Jupyter server: its process, base URL and token."""

    process: subprocess.Popen
    url: str
    token: str
    log: Path

    def stop(self) -> int:
        """Ctrl-C as a terminal sends it (the whole process group), then wait; returns the exit status."""
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def _environment(home: Path) -> dict[str, str]:
    env = dict(
        os.environ, PYTHONHASHSEED="0", JUPYTER_PREFER_ENV_PATH="1", PYDEVD_DISABLE_FILE_VALIDATION="1"
    )
    for name in ("JUPYTER_CONFIG_DIR", "JUPYTER_RUNTIME_DIR"):
        env[name] = str(home / name.lower())
    return env


def scratch_root(home: Path) -> Path:
    """Copies of the chapters and their figures for the test's JupyterLab to open, run and save.

    JupyterLab saves the notebooks it runs (autosave, kernel metadata, widget state); the test must
    leave the repository's committed notebooks and figures as they are.
    """
    root = home / "root"
    for folder in ("notebooks", "figures"):
        shutil.copytree(ROOT / folder, root / folder, dirs_exist_ok=True)
    return root


def lab_command(port: int, token: str, home: Path) -> list[str]:
    """`make lab`'s JupyterLab, headless, with the app object exposed so a test can run cells."""
    return [
        str(BIN / "jupyter-lab"), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", "--ServerApp.answer_yes=True",
        "--LabApp.expose_app_in_browser=True", f"--LabApp.workspaces_dir={home / 'workspaces'}",
        f"--LabApp.user_settings_dir={home / 'settings'}", "--LabApp.news_url=None",
        f"--ServerApp.root_dir={scratch_root(home)}", *(["--allow-root"] if os.geteuid() == 0 else []),
    ]  # fmt: skip


def voila_command(port: int, token: str) -> list[str]:
    """`make explore`'s Voilà page, headless."""
    return [
        str(BIN / "voila"), str(ROOT / EXPLORER), "--no-browser", "--Voila.ip=127.0.0.1",
        f"--port={port}", "--Voila.port_retries=0", f"--token={token}",
    ]  # fmt: skip


def _server_signals() -> None:
    # SIGINT at its default, as in a terminal's foreground job: a test run started as a background
    # job inherits it ignored, the server keeps it so, and `Server.stop`'s Ctrl-C would go unheard.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    # Linux: the server gets SIGTERM (and shuts its kernels down) if the test process dies first.
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(kind: str, home: Path, timeout: float = 120) -> Server:
    """Start JupyterLab (``kind="lab"``) or the Voilà explorer and wait until it answers."""
    home.mkdir(parents=True, exist_ok=True)
    # Every cell in the page (JupyterLab otherwise draws only those in view, and a cell scrolled out
    # loses its widgets' nodes while a test reads them).
    tracker = home / "settings" / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text('{"windowingMode": "none"}')
    port, token = free_port(), secrets.token_hex(16)
    command = lab_command(port, token, home) if kind == "lab" else voila_command(port, token)
    log = home / f"{kind}.log"
    process = subprocess.Popen(
        command, cwd=ROOT, env=_environment(home), stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=_server_signals,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    probe = f"{url}/api/status?token={token}" if kind == "lab" else f"{url}/?token={token}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{kind} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(probe, timeout=5) as answer:
                if answer.status == 200:
                    return Server(process, url, token, log)
        except OSError:
            time.sleep(0.5)
    Server(process, url, token, log).stop()
    raise RuntimeError(f"{kind} did not answer within {timeout} s:\n{log.read_text()[-3000:]}")


def kernels(server: Server) -> list[dict]:
    """The kernels ``server`` runs (its REST API's models)."""
    headers = {"Authorization": f"token {server.token}"}
    with urllib.request.urlopen(urllib.request.Request(f"{server.url}/api/kernels", headers=headers)) as r:
        return json.load(r)


def shut_down_kernels(server: Server) -> None:
    """Stop every kernel of ``server`` (frees a chapter's kernel before the next chapter starts)."""
    headers = {"Authorization": f"token {server.token}"}
    for kernel in kernels(server):
        url = f"{server.url}/api/kernels/{kernel['id']}"
        urllib.request.urlopen(urllib.request.Request(url, method="DELETE", headers=headers)).close()


def live_cell(notebook: Path) -> tuple[int, str] | None:
    """Index and source of the chapter's live explorer cell (the code cell calling ``live.interact``
    of sparsekit.live, or ipywidgets' ``widgets.interact``)."""
    cells = json.loads(notebook.read_text())["cells"]
    for index, cell in enumerate(cells):
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and re.search(r"\b(live|widgets)\.interact\(", source):
            return index, source
    return None


def parameters(notebook: Path) -> dict:
    """The literal values of the chapter's ``parameters`` cell (what its live cell starts from)."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if "parameters" in cell["metadata"].get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return {
                target.id: ast.literal_eval(node.value)
                for node in tree.body
                if isinstance(node, ast.Assign)
                for target in node.targets
            }
    return {}


def slider_names(source: str) -> list[str]:
    """The slider labels a live cell declares: ``description="name"`` of each ``...Slider(...)`` call,
    or the first argument of a local ``slider("name", ...)`` helper (chapter 10)."""
    names = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        called = ast.unparse(node.func)
        if "Slider" in called or called == "slider":
            for keyword in node.keywords:
                if keyword.arg == "description" and isinstance(keyword.value, ast.Constant):
                    names.append(keyword.value.value)
            if called == "slider" and node.args and isinstance(node.args[0], ast.Constant):
                names.append(node.args[0].value)
    return list(dict.fromkeys(names))


# In the page: the time from the reader's input (a key or the mouse button going down) to the first
# moment an <img> inside `root` shows a picture other than `before` (a mouse move includes its drag, a
# few tens of ms: sliders that update while dragged may redraw before the button is released).
# Installed before the move; `window.__live.result` becomes [input, picture] times in ms.
WATCH_JS = """
([root, before]) => {
  const state = {input: null};
  const mark = () => { if (state.input === null) state.input = performance.now(); };
  document.addEventListener('keydown', mark, {capture: true, once: true});
  document.addEventListener('pointerdown', mark, {capture: true, once: true});
  state.done = new Promise(resolve => {
    const check = () => {
      const img = root.querySelector('img');
      if (img && img.src && img.src !== before && state.input === null) {
        before = img.src;  // an earlier move's redraw arriving late: not this move's picture
      } else if (img && img.src && img.src !== before) {
        const shown = performance.now();
        observer.disconnect();
        (img.complete ? Promise.resolve() : img.decode().catch(() => {})).then(
          () => resolve([state.input, shown]));
      }
    };
    const observer = new MutationObserver(check);
    observer.observe(root, {subtree: true, childList: true, attributes: true, attributeFilter: ['src']});
  });
  state.done.then(value => { state.result = value; });
  window.__live = state;
}
"""


def picture_src(root) -> str:
    return root.evaluate("r => { const i = r.querySelector('img'); return i ? i.src : ''; }")


def nudge(page, slider, how: str) -> None:
    """Move ``slider`` one step by keyboard or about 40 px by mouse, toward its farther end."""
    handle = slider.locator(".noUi-handle")
    now, low, high = (
        float(handle.get_attribute(a)) for a in ("aria-valuenow", "aria-valuemin", "aria-valuemax")
    )
    right = (high - now) >= (now - low)
    if how == "keyboard":
        handle.focus()
        page.keyboard.press("ArrowRight" if right else "ArrowLeft")
    else:
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + (40 if right else -40), y, steps=8)
        page.mouse.up()


def move(page, root, slider, how: str, timeout_ms: float = 60_000) -> float:
    """:func:`nudge` ``slider``; the ms from the input to a new picture in ``root`` (fails if none)."""
    page.evaluate(WATCH_JS, [root.element_handle(), picture_src(root)])
    nudge(page, slider, how)
    page.wait_for_function("() => window.__live.result", timeout=timeout_ms)
    start, shown = page.evaluate("() => window.__live.result")
    settle(root)
    return shown - start


def settle(root, quiet_s: float = 0.5, timeout_s: float = 60) -> None:
    """Wait until the picture in ``root`` stops changing (sliders that redraw while dragged queue up)."""
    deadline = time.monotonic() + timeout_s
    last, since = picture_src(root), time.monotonic()
    while time.monotonic() - since < quiet_s and time.monotonic() < deadline:
        time.sleep(0.1)
        now = picture_src(root)
        if now != last:
            last, since = now, time.monotonic()


def slider_labels(scope, visible_only: bool = False) -> list[str]:
    """The visible labels of the sliders in ``scope`` (only those in view with ``visible_only``)."""
    sliders = scope.locator(".widget-slider")
    if visible_only:
        sliders = sliders.filter(visible=True)
    return [t.strip() for t in sliders.locator(".widget-label").all_inner_texts()]


def control_values(scope) -> dict[str, int | float | str]:
    """Every slider's and dropdown's value in ``scope`` as the page shows it, by label."""
    values: dict[str, int | float | str] = {}
    for slider in scope.locator(".widget-slider").all():
        text = readout(slider).replace(",", "")
        values[slider.locator(".widget-label").inner_text().strip()] = (
            float(text) if "." in text else int(text)
        )
    for dropdown in scope.locator(".widget-dropdown").all():
        values[dropdown.locator(".widget-label").inner_text().strip()] = dropdown.locator(
            "select"
        ).input_value()
    return values


def choose(page, root, option: str, timeout_ms: float = 60_000) -> None:
    """Choose ``option`` in the first dropdown of ``root``; returns once its picture is shown."""
    before = picture_src(root)
    root.locator("select").first.select_option(option)
    page.wait_for_function(
        "([r, b]) => { const i = r.querySelector('img'); return i && i.src && i.src !== b; }",
        arg=[root.element_handle(), before],
        timeout=timeout_ms,
    )
    settle(root)


def readout(slider) -> str:
    return slider.locator(".widget-readout").inner_text().strip()


def by_label(scope, name: str):
    """The ipywidgets slider whose visible label is exactly ``name``."""
    page = getattr(scope, "page", scope)  # a locator, or the page itself
    label = page.locator(".widget-label", has_text=re.compile(rf"^{re.escape(name)}$"))
    return scope.locator(".widget-slider").filter(has=label)


def launch(playwright):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class Console:
    """Errors a page reports: console errors and failed requests to the local server."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"page error: {error}"))
        page.on("crash", lambda _: self.errors.append("the page crashed"))
        page.on("requestfailed", self._failed)

    def _console(self, message) -> None:
        # A failed load is reported by `requestfailed` with its address: only local ones count (the
        # machine may be offline; JupyterLab and Voilà ask for a few external resources).
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {message.text}")

    def _failed(self, request) -> None:
        # ERR_ABORTED: the page cancelled it (JupyterLab drops a workspace save a newer one replaces).
        if request.url.startswith("http://127.0.0.1") and request.failure != "net::ERR_ABORTED":
            self.errors.append(f"request failed: {request.url} {request.failure}")


# Run a chapter in JupyterLab up to and including its live cell, through the app object that
# --LabApp.expose_app_in_browser gives the page; resolves with the error outputs of the cells run.
# The notebook panel is found by its path and made current before any command runs (the commands act
# on the current notebook). The live cell is then cell `index` of `CELLS`.
RUN_TO_LIVE_CELL_JS = """
async ([path, index]) => {
  const app = window.jupyterapp;
  await app.restored;  // the workspace (here: only this notebook) is laid out
  const pause = () => new Promise(resolve => setTimeout(resolve, 100));
  const find = () => Array.from(app.shell.widgets('main')).find(w => w.context?.path === path);
  let panel;
  while (!(panel = find())) await pause();
  app.shell.activateById(panel.id);
  while (app.shell.currentWidget !== panel) await pause();
  await panel.context.ready;
  await panel.sessionContext.ready;
  const notebook = panel.content;
  while (notebook.widgets.length <= index) await pause();  // a long notebook's cells come in batches
  notebook.activeCellIndex = index;
  await app.commands.execute('notebook:run-all-above');
  notebook.activeCellIndex = index;
  await app.commands.execute('notebook:run-cell');
  const errors = [];
  for (let i = 0; i <= index; i++) {
    const outputs = notebook.widgets[i].model.outputs;  // markdown cells have none
    for (const output of outputs ? outputs.toJSON() : []) {
      if (output.output_type === 'error') errors.push(`cell ${i}: ${output.ename}: ${output.evalue}`);
    }
  }
  notebook.widgets[index].node.scrollIntoView();
  return errors;
}
"""


def open_live_cell(page, server: Server, chapter: str, index: int, timeout_ms: float = 120_000):
    """Open ``chapter`` in JupyterLab, run it up to its live cell ``index``; the cell once its widgets show.

    Fails with the cell's text (what the reader would see instead of the widgets) when a cell above
    raised or the widgets do not appear within ``timeout_ms`` after the run. Exactly one kernel runs
    while it does (the chapter's own; :func:`shut_down_kernels` stops it after the test).
    """
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # A workspace of its own, reset: JupyterLab otherwise restores the tabs an earlier page left open
    # (the previous chapter, with a kernel of its own), and the current notebook may be that one.
    workspace = f"live-{secrets.token_hex(4)}"
    page.goto(f"{server.url}/lab/workspaces/{workspace}/tree/notebooks/{chapter}?reset&token={server.token}")
    page.wait_for_function("() => window.jupyterapp")
    errors = page.evaluate(RUN_TO_LIVE_CELL_JS, [f"notebooks/{chapter}", index])
    assert not errors, f"{chapter}: cells raised: {errors}"
    cell = page.locator(CELLS).nth(index)
    try:
        cell.locator(".widget-slider").first.wait_for(timeout=timeout_ms)
        cell.locator("img").first.wait_for(timeout=timeout_ms)
    except PlaywrightTimeout:
        shown = cell.locator(".jp-OutputArea")
        text = shown.inner_text(timeout=5_000) if shown.count() else "(no output area in the page)"
        raise AssertionError(f"{chapter}: no live widgets; the output reads:\n{text[:2000]!r}") from None
    return cell

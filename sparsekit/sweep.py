"""Batch runs: one chapter over a grid of parameters, in parallel, collected into one CSV.

Every chapter of the book starts with a code cell tagged ``parameters`` (literals only), so
papermill can run it for other values. :func:`run_sweep` runs a notebook once for every point
of the Cartesian product of a parameter grid, several runs at a time, and collects what each
run *recorded* into ``<out>/summary.csv`` (and a plot, ``<out>/summary.png``).

**Recording convention.** A code cell whose tags include ``record`` ends with an expression
that evaluates to a ``dict`` of scalars (``int``, ``float``, ``str``, ``bool`` or ``None``),
for example::

    {"size": size, "nnz": int(nnz), "sparsity": float(sparsity)}

The notebook shows it as the cell's result, papermill stores its ``text/plain`` repr, and the
sweep reads it back like ``ast.literal_eval`` does (NumPy scalar reprs such as
``np.float64(0.5)`` and ``nan``/``inf`` are accepted too). Several ``record`` cells are
merged in order.

Each run is written to ``<out>/<stem>__<name>=<value>__....ipynb``, complete or not at all:
papermill writes into a hidden temporary file that is renamed when the run ends. A failed run
keeps its executed notebook (with the traceback), is reported on stderr with its parameters,
gets ``status=failed`` and a one-line ``error`` in the CSV, and does not stop the others.

Runs execute with a private working directory, ``<out>/files/<run>/work``, so a chapter that
writes its pictures to ``../figures/`` writes them to ``<out>/files/<run>/figures/`` and never
over the book's own figures.
"""

from __future__ import annotations

import argparse
import ast
import csv
import itertools
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import sys
import time
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._io import atomic_write

__all__ = [
    "RECORD_TAG",
    "SweepError",
    "SweepInterrupted",
    "add_parser",
    "collect_records",
    "main",
    "parse_grid",
    "parse_value",
    "run_filename",
    "run_sweep",
]

#: Tag of the notebook cells whose result is collected into the sweep's CSV.
RECORD_TAG = "record"

_FIXED_COLUMNS = ("status", "error")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]")


class SweepError(ValueError):
    """A sweep that cannot start: missing notebook, malformed grid, unknown parameter."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the sweep; the summary of the runs that finished was written."""

    def __init__(self, csv_path: Path, finished: int, total: int) -> None:
        super().__init__(f"interrupted: {finished} of {total} runs finished, summary in {csv_path}")
        self.csv_path, self.finished, self.total = csv_path, finished, total


#: Default wall-clock limit of one run, in seconds (a chapter normally runs in well under a minute).
DEFAULT_RUN_TIMEOUT = 1800.0


# --------------------------------------------------------------------------------------------
# Parsing the grid


def parse_value(text: str) -> int | float | str:
    """Read one parameter value from the command line: an int, else a float, else a string.

    Parameters
    ----------
    text : str
        The value as typed, e.g. ``"512"``, ``"0.9"`` or ``"causal"``.

    Returns
    -------
    int or float or str
        ``int(text)`` if that works, else ``float(text)`` if that works, else ``text``.

    Examples
    --------
    >>> parse_value("512"), parse_value("0.25"), parse_value("causal")
    (512, 0.25, 'causal')
    """
    text = text.strip()
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(specs: Sequence[Sequence[str]]) -> dict[str, list[int | float | str]]:
    """Turn ``-p NAME VALUES`` options into a grid.

    Parameters
    ----------
    specs : sequence of sequence of str
        One entry per ``-p`` option: ``["size", "512,1024"]``, ``["size", "512", "1024"]``
        and ``["size=512,1024"]`` all mean the same.

    Returns
    -------
    dict
        Parameter name to the list of its values, in the order given.

    Raises
    ------
    SweepError
        If an option has no name or no value, a name is not a Python identifier, a value is
        empty, or a name is given twice.
    """
    grid: dict[str, list[int | float | str]] = {}
    for spec in specs:
        tokens = [str(token) for token in spec]
        if len(tokens) == 1 and "=" in tokens[0]:
            tokens = tokens[0].split("=", 1)
        if len(tokens) < 2:
            given = f" {' '.join(tokens)}" if tokens else ""
            raise SweepError(f"malformed -p{given}: expected -p NAME VALUE[,VALUE...]")
        name, raw_values = tokens[0], tokens[1:]
        if not _NAME_RE.match(name):
            raise SweepError(f"malformed -p: parameter name {name!r} is not a Python identifier")
        if name in grid:
            raise SweepError(f"malformed -p: parameter {name!r} given twice")
        items = [item.strip() for raw in raw_values for item in raw.split(",")]
        if not items or any(item == "" for item in items):
            raise SweepError(f"malformed -p {name}: empty value in {','.join(raw_values)!r}")
        grid[name] = [parse_value(item) for item in items]
    return grid


# --------------------------------------------------------------------------------------------
# Reading what a run recorded

_ALLOWED_NAMES = {"nan": math.nan, "inf": math.inf, "True": True, "False": False, "None": None}


def _literal(node: ast.AST) -> Any:
    """Evaluate a dict/list/tuple of scalars, also allowing ``nan``, ``inf`` and NumPy scalars."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name) and node.id in _ALLOWED_NAMES:
        return _ALLOWED_NAMES[node.id]
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        value = _literal(node.operand)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.Dict):
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(element) for element in node.elts]
    if (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id in {"np", "numpy"}
        and len(node.args) == 1
        and not node.keywords
    ):
        # NumPy 2 scalar reprs: np.int64(3), np.float64(0.5), np.True_ is a Name-attribute
        return _literal(node.args[0])
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id in {"np", "numpy"}
        and node.attr in {"True_", "False_", "nan", "inf"}
    ):
        return {"True_": True, "False_": False, "nan": math.nan, "inf": math.inf}[node.attr]
    raise ValueError(f"not a literal: {ast.dump(node)[:80]}")


def _read_record(text: str) -> dict[str, Any]:
    value = _literal(ast.parse(text.strip(), mode="eval").body)
    if not isinstance(value, dict):
        raise ValueError(f"a {RECORD_TAG!r} cell must end with a dict, got {type(value).__name__}")
    return {str(key): item for key, item in value.items()}


def collect_records(notebook: Mapping[str, Any]) -> dict[str, Any]:
    """Merge the dicts shown by the cells tagged ``record`` of an executed notebook.

    Parameters
    ----------
    notebook : mapping
        The executed notebook, as read by ``nbformat.read`` or ``json.load``.

    Returns
    -------
    dict
        Recorded name to value; later cells win when a name is recorded twice.

    Raises
    ------
    ValueError
        If a ``record`` cell's result is not a dict of literals.
    """
    records: dict[str, Any] = {}
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        if RECORD_TAG not in (cell.get("metadata", {}).get("tags") or []):
            continue
        for output in cell.get("outputs", []):
            if output.get("output_type") not in {"execute_result", "display_data"}:
                continue
            data = output.get("data", {})
            if isinstance(data.get("application/json"), dict):
                records.update({str(k): v for k, v in data["application/json"].items()})
            elif "text/plain" in data:
                text = data["text/plain"]
                records.update(_read_record("".join(text) if isinstance(text, list) else text))
    return records


# --------------------------------------------------------------------------------------------
# One run


def _format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{name}={value}" for name, value in params.items())


def run_filename(stem: str, params: Mapping[str, Any]) -> str:
    """Name of the executed notebook of one run: ``<stem>__size=512__window_size=16.ipynb``."""
    parts = [stem] + [f"{name}={_UNSAFE_CHARS.sub('_', str(value))}" for name, value in params.items()]
    return "__".join(parts) + ".ipynb"


def _one_line(text: str, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _run_one(
    notebook: str,
    out_path: str,
    params: dict[str, Any],
    kernel_name: str,
    timeout: float,
) -> dict[str, Any]:
    """Execute one run with papermill; never raises, returns status, error and records."""
    out = Path(out_path)
    tmp = out.with_name(f".partial-{os.getpid()}-{out.name}")
    workdir = out.parent / "files" / out.stem / "work"
    result: dict[str, Any] = {"status": "failed", "error": "", "records": {}}
    try:
        import nbformat
        import papermill

        workdir.mkdir(parents=True, exist_ok=True)
        try:
            papermill.execute_notebook(
                notebook,
                str(tmp),
                parameters=params,
                kernel_name=kernel_name,
                cwd=str(workdir),
                progress_bar=False,
                log_output=False,
                execution_timeout=timeout,
                # quiet kernels: ipykernel's start-up warnings would drown the sweep's report
                extra_arguments=["--IPKernelApp.log_level=ERROR"],
            )
        except papermill.PapermillExecutionError as exc:
            result["error"] = _one_line(f"{exc.ename}: {exc.evalue}")
            return result
        executed = nbformat.read(str(tmp), as_version=4)
        result["records"] = collect_records(executed)
        result["status"] = "ok"
    except Exception as exc:  # a failed run must never stop the others
        result["error"] = _one_line(f"{type(exc).__name__}: {exc}")
    finally:
        if tmp.exists():
            os.replace(tmp, out)
    return result


def _worker(conn: Any, args: tuple, environ: dict[str, str]) -> None:
    """Entry point of a run's process: run it and send the result back through ``conn``.

    Ctrl-C is the parent's to handle (it stops every run and kills its kernel), so the run itself
    ignores SIGINT instead of dying half-way through writing its notebook. ``environ`` is the
    parent's environment when the run started (a fork server keeps the one it started with).
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.clear()
    os.environ.update(environ)
    conn.send(_run_one(*args))
    conn.close()


def _kill_tree(pid: int) -> None:
    """Kill a run's process and everything it started (its Jupyter kernel runs in its own session)."""
    import psutil

    try:
        root = psutil.Process(pid)
        family = root.children(recursive=True) + [root]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=10)


class _Progress:
    """One progress line per finished run on stderr; redrawn in place on a terminal."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        text = f"sweep: {self.done}/{self.total} done, {self.failed} failed, {elapsed:.0f} s elapsed"
        if 0 < self.done < self.total:
            text += f", about {elapsed / self.done * (self.total - self.done):.0f} s left"
        return text

    def report(self, message: str) -> None:
        """Print a run's outcome, then the progress line."""
        if self.tty:
            print(f"\r\033[K{message}\n{self.line()}", end="", file=sys.stderr, flush=True)
        else:
            print(f"{message}\n{self.line()}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# Writing the results


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _write_plot(
    path: Path, grid: Mapping[str, list], rows: list[dict[str, Any]], recorded: list[str]
) -> bool:
    """Plot the first numeric recorded value against the first grid parameter."""
    ok_rows = [row for row in rows if row["status"] == "ok"]
    column = next(
        (
            name
            for name in recorded
            if any(name in row for row in ok_rows)
            and all(_is_number(row[name]) for row in ok_rows if name in row)
        ),
        None,
    )
    if column is None:
        return False
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(grid)
    x_name, others = names[0], names[1:]
    x_values = grid[x_name]
    numeric_x = all(_is_number(value) for value in x_values)
    position = {value: index for index, value in enumerate(x_values)}

    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for combo in itertools.product(*(grid[name] for name in others)):
        chosen = dict(zip(others, combo, strict=True))
        points = [
            (row[x_name], row[column])
            for row in ok_rows
            if column in row and all(row[name] == value for name, value in chosen.items())
        ]
        if not points:
            continue
        xs = [x if numeric_x else position[x] for x, _ in points]
        ys = [y for _, y in points]
        ax.plot(xs, ys, marker="o", label=_format_params(chosen) or column)
    if not numeric_x:
        ax.set_xticks(range(len(x_values)), [str(value) for value in x_values])
    elif all(value > 0 for value in x_values) and max(x_values) >= 8 * min(x_values):
        ax.set_xscale("log", base=2)
    ax.set_xlabel(x_name)
    ax.set_ylabel(column)
    ax.set_title(f"{column} over {x_name}")
    ax.grid(True, alpha=0.3)
    if others:
        ax.legend(fontsize="small")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, facecolor="white"))
    return True


# --------------------------------------------------------------------------------------------
# The sweep


def _check_notebook(notebook: Path, grid: Mapping[str, list]) -> None:
    if not notebook.is_file():
        raise SweepError(f"notebook not found: {notebook}")
    if notebook.suffix != ".ipynb":
        raise SweepError(f"not a notebook (expected .ipynb): {notebook}")
    if not grid:
        raise SweepError("empty grid: give at least one -p NAME VALUE[,VALUE...]")
    for name, values in grid.items():
        if not _NAME_RE.match(str(name)):
            raise SweepError(f"parameter name {name!r} is not a Python identifier")
        if not list(values):
            raise SweepError(f"parameter {name!r} has no values")
    import papermill

    try:
        declared = papermill.inspect_notebook(str(notebook))
    except Exception as exc:
        raise SweepError(f"cannot read notebook {notebook}: {_one_line(exc)}") from exc
    if not declared:
        raise SweepError(f"{notebook} has no code cell tagged 'parameters'")
    unknown = [name for name in grid if name not in declared]
    if unknown:
        raise SweepError(
            f"{notebook.name} has no parameter {', '.join(map(repr, unknown))} "
            f"(its parameters: {', '.join(declared)})"
        )


def run_sweep(
    notebook: str | os.PathLike[str],
    grid: Mapping[str, Sequence[Any]],
    out_dir: str | os.PathLike[str] | None = None,
    jobs: int | None = None,
    kernel_name: str = "python3",
    timeout: float = 600,
    run_timeout: float = DEFAULT_RUN_TIMEOUT,
) -> Path:
    """Run ``notebook`` once per point of ``grid`` with papermill and collect the results.

    Progress goes to stderr: one line per finished run, then ``done/total``, failures, the time
    elapsed and an estimate of the time left.

    Parameters
    ----------
    notebook : str or os.PathLike
        The chapter to run; it must have a cell tagged ``parameters`` that defines every
        name of ``grid``.
    grid : mapping of str to sequence
        Parameter name to the values to try. The runs are the Cartesian product, in order.
    out_dir : str or os.PathLike, optional
        Folder of the results; default ``runs/<notebook stem>`` (git-ignored).
    jobs : int, optional
        How many runs at a time; default ``os.cpu_count()``.
    kernel_name : str, default "python3"
        Jupyter kernel that executes the runs.
    timeout : float, default 600
        Longest time, in seconds, one cell of one run may take.
    run_timeout : float, default 1800
        Longest wall-clock time, in seconds, of one whole run. A run past it is killed together
        with its kernel and reported failed (``error`` says it timed out); it is not retried.

    Returns
    -------
    pathlib.Path
        The CSV, ``<out_dir>/summary.csv``: one row per run with the grid parameters,
        ``status`` (``ok`` or ``failed``), ``error`` (one line, failed runs only) and every
        value any run recorded. ``<out_dir>/summary.png`` plots the first numeric recorded
        value against the first parameter when there is one.

    Raises
    ------
    SweepError
        If the notebook does not exist, has no ``parameters`` cell or lacks a parameter of
        the grid, or the grid is empty.
    SweepInterrupted
        On Ctrl-C: every run still going is stopped and its kernel killed, and the CSV (and
        plot) of the runs that had finished is written before this is raised.
    """
    notebook = Path(notebook)
    grid = {str(name): list(values) for name, values in grid.items()}
    _check_notebook(notebook, grid)
    out = Path(out_dir) if out_dir is not None else Path("runs") / notebook.stem
    out.mkdir(parents=True, exist_ok=True)

    names = list(grid)
    points = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*grid.values())]
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(points)))
    tasks = [
        (str(notebook.resolve()), str((out / run_filename(notebook.stem, p)).resolve()), p) for p in points
    ]

    results: list[dict[str, Any] | None] = [None for _ in points]
    progress = _Progress(len(points))

    def finished(index: int, result: dict[str, Any]) -> None:
        results[index] = result
        progress.done += 1
        params = _format_params(points[index])
        if result["status"] == "ok":
            progress.report(f"sweep: ok     {params}")
        else:
            progress.failed += 1
            progress.report(f"sweep: FAILED {params}: {result['error']}")

    try:
        _execute(tasks, jobs, kernel_name, timeout, run_timeout, finished)
    except KeyboardInterrupt:
        interrupted = True
    else:
        interrupted = False
    finally:
        progress.close()

    done = [i for i, result in enumerate(results) if result is not None]
    points = [points[i] for i in done]
    results = [results[i] for i in done]
    reserved = set(names) | set(_FIXED_COLUMNS)
    recorded: list[str] = []
    rows: list[dict[str, Any]] = []
    for params, result in zip(points, results, strict=True):
        row: dict[str, Any] = dict(params)
        row["status"] = result["status"]
        row["error"] = result["error"]
        for key, value in result["records"].items():
            column = key if key not in reserved else f"recorded_{key}"
            if column not in recorded:
                recorded.append(column)
            row[column] = value
        rows.append(row)

    columns = names + list(_FIXED_COLUMNS) + recorded
    csv_path = out / "summary.csv"

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(csv_path, write_csv)
    _write_plot(out / "summary.png", grid, rows, recorded)
    if interrupted:
        raise SweepInterrupted(csv_path, len(rows), len(tasks))
    return csv_path


def _execute(
    tasks: list[tuple], jobs: int, kernel_name: str, timeout: float, run_timeout: float, finished: Any
) -> None:
    """Run every task in its own process, ``jobs`` at a time; ``finished(index, result)`` as each ends.

    A run past ``run_timeout`` seconds is killed with its kernel and reported failed (not retried).
    On Ctrl-C (``KeyboardInterrupt``) every running run and kernel is killed before the exception
    propagates.
    """
    context = _run_context()
    pending = deque(enumerate(tasks))
    running: dict[Any, tuple[int, Any, float, str]] = {}  # connection -> index, process, start, path
    try:
        while pending or running:
            while pending and len(running) < jobs:
                index, (nb, path, params) = pending.popleft()
                receive, send = context.Pipe(duplex=False)
                run = (nb, path, params, kernel_name, timeout)
                proc = context.Process(target=_worker, args=(send, run, dict(os.environ)))
                proc.start()
                send.close()
                running[receive] = (index, proc, time.monotonic(), path)
            for conn in multiprocessing.connection.wait(list(running), timeout=0.5):
                index, proc, _, path = running.pop(conn)
                try:
                    result = conn.recv()
                except EOFError:  # the run's process died without answering
                    result = _failed(f"run process ended with exit code {proc.join(5) or proc.exitcode}")
                    _discard_partial(path, proc.pid)
                conn.close()
                proc.join()
                finished(index, result)
            now = time.monotonic()
            for conn, (index, proc, start, path) in list(running.items()):
                if now - start > run_timeout:
                    del running[conn]
                    _kill_tree(proc.pid)
                    conn.close()
                    _discard_partial(path, proc.pid)
                    finished(index, _failed(f"timed out after {run_timeout:g} s: run and kernel killed"))
    finally:
        for conn, (_, proc, _, path) in running.items():
            _kill_tree(proc.pid)
            conn.close()
            _discard_partial(path, proc.pid)


def _run_context() -> Any:
    """The multiprocessing context that starts each run's process.

    Never a fork of this process: a forked copy of the ZeroMQ state of a Jupyter kernel that
    calls :func:`run_sweep` can lose kernel messages. Where the platform has a fork server, a fork
    of it: the server starts once per process, imports papermill, and every run then starts
    without importing papermill again (1.3 s on a 2-core machine; ``benchmarks/bench_sweep.py``
    compares the two). Elsewhere (Windows) each run is a freshly spawned process.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["sparsekit.sweep", "papermill", "nbformat"])
    return context


def _failed(error: str) -> dict[str, Any]:
    return {"status": "failed", "error": _one_line(error), "records": {}}


def _discard_partial(path: str, pid: int | None) -> None:
    """Remove the half-written notebook of a killed run (see :func:`_run_one`'s temporary name)."""
    out = Path(path)
    out.with_name(f".partial-{pid}-{out.name}").unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# Command line


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("notebook", help="the chapter to run, e.g. notebooks/02_strided.ipynb")
    parser.add_argument(
        "-p",
        "--parameter",
        dest="grid",
        action="append",
        nargs="*",
        default=[],
        metavar="NAME VALUES",
        help="a parameter and its values, comma-separated: -p size 512,1024 (repeatable)",
    )
    parser.add_argument(
        "--jobs", "-j", type=int, default=None, help="runs at a time (default: number of cores)"
    )
    parser.add_argument("--out", default=None, help="results folder (default: runs/<notebook stem>)")
    parser.add_argument("--kernel", default="python3", help="Jupyter kernel name (default: python3)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds per cell (default: 600)")
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=DEFAULT_RUN_TIMEOUT,
        help=(
            f"seconds per run (default: {DEFAULT_RUN_TIMEOUT:g}); a run past it is killed with its "
            "kernel and reported failed, not retried"
        ),
    )
    parser.set_defaults(func=_command)
    return parser


def _command(args: argparse.Namespace) -> int:
    try:
        if args.jobs is not None and args.jobs < 1:
            raise SweepError(f"--jobs must be at least 1, got {args.jobs}")
        for flag, value in (("--timeout", args.timeout), ("--run-timeout", args.run_timeout)):
            if not value > 0 or math.isinf(value):
                raise SweepError(f"{flag} must be a positive number of seconds, got {value}")
        grid = parse_grid(args.grid)
        csv_path = run_sweep(
            args.notebook,
            grid,
            out_dir=args.out,
            jobs=args.jobs,
            kernel_name=args.kernel,
            timeout=args.timeout,
            run_timeout=args.run_timeout,
        )
    except SweepError as exc:
        print(f"sweep: error: {exc}", file=sys.stderr)
        return 2
    except SweepInterrupted as exc:
        print(f"sweep: {exc}", file=sys.stderr)
        return 130
    with open(csv_path, newline="", encoding="utf-8") as handle:
        statuses = [row["status"] for row in csv.DictReader(handle)]
    failed = statuses.count("failed")
    print(f"{csv_path} ({len(statuses) - failed} ok, {failed} failed)")
    return 1 if failed else 0


_DESCRIPTION = (
    "Run one notebook over the Cartesian product of a parameter grid with papermill, in "
    "parallel, and collect what its cells tagged 'record' show into <out>/summary.csv "
    "(and <out>/summary.png)."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``sweep`` subcommand on an ``argparse`` subparsers object.

    The subcommand's ``func`` default takes the parsed arguments and returns the exit code:
    0 when every run succeeded, 1 when some failed, 2 for a sweep that could not start.
    """
    parser = subparsers.add_parser(
        "sweep", help="run a chapter over a parameter grid", description=_DESCRIPTION
    )
    return _configure(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line ``sparsekit sweep NOTEBOOK -p NAME VALUES ...``; returns the exit code."""
    parser = _configure(argparse.ArgumentParser(prog="sparsekit sweep", description=_DESCRIPTION))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""Mutation check, run by hand (``make mutants``): does the unit suite catch realistic faults?

Each fault of :data:`MUTANTS` is planted in a fresh copy of the package (``sparsekit/``, with ``tests/``
and what they read), and the unit suite runs against that copy: without the browser tests and the
compiled FlexAttention tests, stopping at the first failure (``-x``), every test under a time limit
(``--timeout``), so a fault that makes the code loop ends as a failed test. The copy is imported because
pytest runs in the copy's folder with ``PYTHONPATH`` pointing there (checked before any fault is
planted: ``sparsekit.__file__`` must lie inside the copy). A faultless run of the copy comes first
and must pass. The table lists each fault, whether it was caught, by which test (``timeout`` when the
catch was the time limit, that is, a hang), and the seconds it took.

    .venv/bin/python tests/mutants.py                # the working tree
    .venv/bin/python tests/mutants.py --ref HEAD     # the last commit
    .venv/bin/python tests/mutants.py -k strided     # only faults whose name holds "strided"

Exit status 0 when every fault was caught, none by the time limit; 1 otherwise; 2 for a fault whose
code is no longer in the package (its snippet must then be updated here).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Copied next to the package: the unit tests read api.md and the notebooks.
COPIED = ("sparsekit", "tests", "pyproject.toml", "api.md", "notebooks")
# Unit test files in the order they run: the quick checks of the definitions first, so most faults
# are caught in seconds; every other test file follows.
FIRST = (
    "test_patterns.py",
    "test_segments.py",
    "test_closed_forms.py",
    "test_solve.py",
    "test_resources.py",
    "test_attention.py",
    "test_torch_predicate.py",
    "test_torch_blockmask.py",
    "test_mask_report.py",
    "test_vision_pattern.py",
    "test_torch_backends.py",
)

#: (fault, file in sparsekit/, [(code, replacement), ...]): each code must occur exactly once.
MUTANTS: list[tuple[str, str, list[tuple[str, str]]]] = [
    # Off by one in every family's definition.
    ("causal excludes the diagonal", "masks/causal.py", [("return kv <= q", "return kv < q")]),
    (
        "strided window one wider (< to <=)",
        "masks/sparse_transformer.py",
        [("((d < self.window) | (d % self.stride == 0))", "((d <= self.window) | (d % self.stride == 0))")],
    ),
    (
        "strided stride offset by one",
        "masks/sparse_transformer.py",
        [("((d < self.window) | (d % self.stride == 0))", "((d < self.window) | (d % self.stride == 1))")],
    ),
    (
        "fixed summary one column short",
        "masks/sparse_transformer.py",
        [("(kv % b >= b - self.summary)", "(kv % b > b - self.summary)")],
    ),
    (
        "sliding window one wider (<= half + 1)",
        "masks/local.py",
        [
            (
                'Band("sliding_window", window // 2, window=window)',
                'Band("sliding_window", window // 2 + 1, window=window)',
            )
        ],
    ),
    (
        "band (window) excludes its edge",
        "masks/local.py",
        [("return abs(q - kv) <= self.half_width", "return abs(q - kv) < self.half_width")],
    ),
    (
        "BigBird window of even width one wider",
        "masks/local.py",
        [("half = diagonal_width // 2 if", "half = (diagonal_width + 1) // 2 if")],
    ),
    (
        "dilated window one step short",
        "masks/local.py",
        [("(d // self.dilation <= self.reach)", "(d // self.dilation < self.reach)")],
    ),
    (
        "block_local blocks shifted by one",
        "masks/local.py",
        [
            (
                "return q // self.block == kv // self.block",
                "return (q + 1) // self.block == (kv + 1) // self.block",
            )
        ],
    ),
    (
        "axial column off by one",
        "masks/image.py",
        [("(q // w == kv // w) | (q % w == kv % w)", "(q // w == kv // w) | (q % w == (kv + 1) % w)")],
    ),
    (
        "global tokens one too many",
        "masks/longrange.py",
        [("return x < self.width", "return x <= self.width")],
    ),
    (
        "random draw never picks the last column first",
        "masks/longrange.py",
        [("pick = rng.integers(0, top + 1, size=n)", "pick = rng.integers(0, max(top, 1), size=n)")],
    ),
    (
        "paraphrase fusion prefix one longer",
        "masks/segments.py",
        [
            (
                "((kv < self.prefix_tokens) | (kv >= self._run_start(q)))",
                "((kv <= self.prefix_tokens) | (kv >= self._run_start(q)))",
            )
        ],
    ),
    # Labels.
    (
        "strided label: window edge labelled local",
        "masks/sparse_transformer.py",
        [("np.where(d < self.window, LOCAL, GLOBAL)", "np.where(d <= self.window, LOCAL, GLOBAL)")],
    ),
    (
        "fixed label: own block's summary column labelled 3",
        "masks/sparse_transformer.py",
        [
            (
                "np.where(same_block, LOCAL, GLOBAL)",
                "np.where(same_block & (kv % self.block < self.block - self.summary), LOCAL, GLOBAL)",
            )
        ],
    ),
    (
        "paraphrase fusion label: first generated row labelled local",
        "masks/segments.py",
        [("q >= self.generation_start, GLOBAL, LOCAL", "q > self.generation_start, GLOBAL, LOCAL")],
    ),
    (
        "union label priority reversed (most general wins)",
        "pattern.py",
        [
            ("lab = np.where(lab == NO_ATTENTION, 255, lab)", "lab = np.where(lab == NO_ATTENTION, 0, lab)"),
            (
                "best = lab if best is None else np.minimum(best, lab)",
                "best = lab if best is None else np.maximum(best, lab)",
            ),
        ],
    ),
    ("complement labelled 3", "pattern.py", [("        return LOCAL\n", "        return GLOBAL\n")]),
    # Tile thresholds: empty, partial, full.
    (
        "blocks: a tile of one cell counted empty",
        "pattern.py",
        [
            (
                "return np.where(counts == 0, 0, np.where(counts == area, 2, 1)).astype(np.uint8)",
                "return np.where(counts <= 1, 0, np.where(counts == area, 2, 1)).astype(np.uint8)",
            )
        ],
    ),
    (
        "blocks: a tile one cell short counted full",
        "pattern.py",
        [
            (
                "return np.where(counts == 0, 0, np.where(counts == area, 2, 1)).astype(np.uint8)",
                "return np.where(counts == 0, 0, np.where(counts >= area - 1, 2, 1)).astype(np.uint8)",
            )
        ],
    ),
    (
        "engine: a partial tile one cell short taken as full",
        "pattern.py",
        [
            (
                "np.where(counts == _block_areas(n, b), 2, 1)",
                "np.where(counts >= _block_areas(n, b) - 1, 2, 1)",
            )
        ],
    ),
    (
        "periodic layout: a tile of one cell counted empty",
        "pattern.py",
        [
            (
                "np.where(counts == 0, 0, np.where(counts == h * w, 2, 1))",
                "np.where(counts <= 1, 0, np.where(counts == h * w, 2, 1))",
            )
        ],
    ),
    (
        "periodic layout: a tile one cell short counted full",
        "pattern.py",
        [("np.where(counts == h * w, 2, 1)", "np.where(counts >= h * w - 1, 2, 1)")],
    ),
    # Solvers.
    (
        "solver tie goes to the denser mask",
        "solve.py",
        [("return (abs(nnz - goal), nnz, params)", "return (abs(nnz - goal), -nnz, params)")],
    ),
    (
        "solver tie goes to the larger parameter",
        "solve.py",
        [
            (
                "return (abs(nnz - goal), nnz, params)",
                "return (abs(nnz - goal), nnz, tuple(-p for p in params))",
            )
        ],
    ),
    # Resources: the read limit.
    (
        "read limit: a step may not reach it (> to >=, the issue's hang)",
        "resources.py",
        [
            ("over = int(np.argmax(reads > r))", "over = int(np.argmax(reads >= r))"),
            ("if reads[over] > r:", "if reads[over] >= r:"),
        ],
    ),
    (
        "read limit: one read over allowed",
        "resources.py",
        [
            ("over = int(np.argmax(reads > r))", "over = int(np.argmax(reads > r + 1))"),
            ("if reads[over] > r:", "if reads[over] > r + 1:"),
        ],
    ),
    (
        "read limit: shortcut one too early",
        "resources.py",
        [("if r >= 2 * m or total == 0:", "if r >= 2 * m - 1 or total == 0:")],
    ),
    # FlexAttention's BlockMask tables.
    (
        "BlockMask: partial and full tables swapped",
        "torch/blockmask.py",
        [('for name, code in (("", 1), ("full_", 2)):', 'for name, code in (("", 2), ("full_", 1)):')],
    ),
    (
        "BlockMask: edge tiles past n kept full",
        "torch/blockmask.py",
        [("line[line == 2] = 1", "line[line == 2] = 2")],
    ),
    (
        "BlockMask: index rows list the unchosen tiles first",
        "torch/blockmask.py",
        [('np.argsort(not_chosen, axis=1, kind="stable")', 'np.argsort(~not_chosen, axis=1, kind="stable")')],
    ),
    # Attention, and the package itself.
    (
        "block-sparse attention ignores layout=",
        "attention.py",
        [
            (
                "layout = p.blocks(n, b) if layout is None else _check_layout(layout, nb)",
                "layout = p.blocks(n, b) if layout is None or _check_layout(layout, nb) is not None"
                " else None",
            )
        ],
    ),
    # Code moved by the torch tidy: the backends, the numpy side of the seed's checks and names.
    (
        "a broken import in sparsekit.torch.backends",
        "torch/backends.py",
        [
            (
                "from .blockmask import block_mask, flex_layout\n",
                "from .blockmask import block_mask, flex_layout\nimport sparsekit_missing_module  # noqa\n",
            )
        ],
    ),
    (
        "tile backward: softmax Jacobian term dropped",
        "torch/backends.py",
        [
            (
                "ds = p * (do @ vs.transpose(-2, -1) - delta[:, :, rows])",
                "ds = p * (do @ vs.transpose(-2, -1))",
            )
        ],
    ),
    (
        "tile layout: last key column of each tile dropped",
        "torch/backends.py",
        [("keep = cols < n\n", "keep = (cols < n) & (cols % block_size != block_size - 1)\n")],
    ),
    (
        "mask_report: causal violations counted on the diagonal",
        "masks/segments.py",
        [("allowed & (kv[None, :] > q[:, None])", "allowed & (kv[None, :] >= q[:, None])")],
    ),
    (
        "vision_pattern: longformer band one row short",
        "masks/vision.py",
        [('w = 2 * width if opts["window"] is None', 'w = 2 * width - 2 if opts["window"] is None')],
    ),
    (
        "sweep: a run gets the environment of the fork server's start, not the sweep's",
        "sweep.py",
        [("    os.environ.clear()\n    os.environ.update(environ)\n", "")],
    ),
]


def copy_tree(destination: Path, ref: str | None) -> None:
    """The package, its tests and what they read, from the working tree or from ``git archive ref``."""
    if ref is None:
        ignore = shutil.ignore_patterns("__pycache__", "browser", ".hypothesis")
        for name in COPIED:
            source = ROOT / name
            if source.is_dir():
                shutil.copytree(source, destination / name, ignore=ignore)
            elif source.exists():
                shutil.copy2(source, destination / name)
        return
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, *[n for n in COPIED if (ROOT / n).exists()]],
        capture_output=True,
        check=True,
    )
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive.stdout, check=True)
    shutil.rmtree(destination / "tests" / "browser", ignore_errors=True)


def test_files(copy: Path) -> list[str]:
    """Unit test files of the copy: :data:`FIRST` in that order, then the others by name."""
    present = sorted(p.name for p in (copy / "tests").glob("test_*.py"))
    ordered = [f for f in FIRST if f in present] + [f for f in present if f not in FIRST]
    return [f"tests/{f}" for f in ordered]


def run_suite(copy: Path, files: list[str], timeout: int) -> tuple[int, str, float]:
    """Run the unit suite in the copy; returns (exit status, output, seconds)."""
    env = {k: v for k, v in os.environ.items() if k != "SPARSEKIT_COMPILE_TESTS"}
    env["PYTHONPATH"] = str(copy)
    env["PYTHONHASHSEED"] = "0"
    command = [sys.executable, "-m", "pytest", *files, "-x", "-q", "-rfE", "-p", "no:randomly"]
    command += [f"--timeout={timeout}", "--no-header", "-W", "ignore::DeprecationWarning"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True)
    return done.returncode, done.stdout + done.stderr, time.perf_counter() - start


def first_failure(output: str) -> tuple[str, bool]:
    """The test (or file) that failed first, and whether it failed by the time limit."""
    hang = "Failed: Timeout" in output  # pytest-timeout's failure; -x stops at the first failure
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" ", 1)[1].split(" - ", 1)[0].removeprefix("tests/"), hang
    return "(exit status only)", hang


def check_imports(copy: Path) -> None:
    """The copy's sparsekit, not the working tree's, is the one the tests import."""
    env = dict(os.environ, PYTHONPATH=str(copy))
    code = "import sparsekit, sparsekit.torch; print(sparsekit.__file__); print(sparsekit.torch.__file__)"
    paths = subprocess.run([sys.executable, "-c", code], cwd=copy, env=env, capture_output=True, text=True)
    found = paths.stdout.split()
    if paths.returncode or len(found) != 2 or not all(Path(p).is_relative_to(copy) for p in found):
        raise SystemExit(
            f"mutants: the copy in {copy} is not the sparsekit imported: {paths.stdout}{paths.stderr}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default=None, help="copy this git commit instead of the working tree")
    parser.add_argument("-k", dest="select", default="", help="only faults whose name holds this text")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per test (default: 120)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the faultless run")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if args.select in m[0]]
    with tempfile.TemporaryDirectory(prefix="sparsekit-mutants-") as folder:
        copy = Path(folder)
        copy_tree(copy, args.ref)
        check_imports(copy)
        files = test_files(copy)
        stale = [
            (name, path, old)
            for name, path, edits in chosen
            for old, _ in edits
            if (copy / "sparsekit" / path).read_text().count(old) != 1
        ]
        for name, path, old in stale:
            print(f"mutants: stale fault {name!r}: {old!r} is not exactly once in sparsekit/{path}")
        if stale:
            return 2
        if not args.no_baseline:
            status, output, seconds = run_suite(copy, files, args.timeout)
            if status != 0:
                print(output[-4000:])
                print(f"mutants: the faultless copy fails (exit {status}, {seconds:.0f} s); fix that first")
                return 1
            print(f"faultless copy: suite passed in {seconds:.0f} s")
        rows, missed = [], 0
        for name, path, edits in chosen:
            target = copy / "sparsekit" / path
            original = target.read_text()
            planted = original
            for old, new in edits:
                planted = planted.replace(old, new)
            target.write_text(planted)
            try:
                status, output, seconds = run_suite(copy, files, args.timeout)
            finally:
                target.write_text(original)
            caught = status != 0
            test, hang = first_failure(output) if caught else ("-", False)
            missed += (not caught) or hang
            by = f"{test} (timeout)" if hang else test
            rows.append((name, "yes" if caught else "NO", by, f"{seconds:.0f}"))
            print(f"{'caught' if caught else 'MISSED'}: {name} <- {by} ({seconds:.0f} s)", flush=True)
    print()
    print("| fault | caught | by | seconds |")
    print("|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(re.sub(r"\|", "/", cell) for cell in row) + " |")
    print(
        f"\n{len(rows) - missed} of {len(rows)} faults caught by a failing test (none by the time limit)"
        if not missed
        else f"\n{missed} of {len(rows)} faults missed or caught only by the time limit"
    )
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())

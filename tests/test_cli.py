"""``python -m sparsekit masks``: the seed's output, files, and one-line errors with exit status 2."""

from __future__ import annotations

import csv
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from chapters import write_chapter
from reference import RULES, brute_force, brute_force_labels, family_labels

from sparsekit import resources as res
from sparsekit.cli import main

SEED_LINES = [
    "Normal Mask Sparsity: 49.9512%",
    "Strided Mask Sparsity: 95.4086%",
    "Fixed Mask Sparsity: 96.8750%",
    "Sliding Window Mask Sparsity: 96.8033%",
    "Dilated Sliding Window Mask Sparsity: 96.8292%",
]


def test_module_prints_the_seed_table():
    result = subprocess.run(
        [sys.executable, "-m", "sparsekit", "masks", "--no_graphic", "--skip_pattern_print"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines()[1:] == SEED_LINES


def test_rows_and_columns_are_listed(capsys):
    assert main(["masks", "--size", "6", "--window_size", "2", "--stride", "3", "--no_graphic"]) == 0
    out = capsys.readouterr().out
    assert "Strided mask non-zeros (row_first):\nRow 0: 0\nRow 1: 0, 1\nRow 2: 1, 2\nRow 3: 0, 2, 3\n" in out
    assert main(["masks", "--size", "4", "--order", "column_first", "--no_graphic"]) == 0
    out = capsys.readouterr().out
    assert "Normal mask non-zeros (column_first):\nColumn 0: 0, 1, 2, 3\nColumn 1: 1, 2, 3\n" in out


def test_pictures_are_written(tmp_path, capsys):
    out = tmp_path / "new" / "folder"
    argv = ["masks", "--size", "64", "--sample_size", "32", "--skip_pattern_print", "--out", str(out)]
    assert main(argv) == 0
    names = sorted(p.name for p in out.iterdir())
    assert "mask_comparison_32x32.png" in names and "strided_mask_32x32.png" in names
    assert len(names) == 6
    assert main([*argv, "--full_png"]) == 0
    assert (out / "dilated_sliding_window_mask_64x64.png").stat().st_size > 0
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


# ------------------------------------------------------------------------------------------------
# End to end: `python -m sparsekit ...` in subprocesses, every documented flag, pipes and errors
# ------------------------------------------------------------------------------------------------
SEED_RULES = {  # the seed's five masks at --window_size W --stride S --dilation D, by file key
    "normal": lambda w, s, d: ("causal", {}),
    "strided": lambda w, s, d: ("strided", {"window": w, "stride": s}),
    "fixed": lambda w, s, d: ("fixed", {"block": w, "summary": 1}),
    "sliding_window": lambda w, s, d: ("sliding_window", {"window": w}),
    "dilated_sliding_window": lambda w, s, d: ("dilated_sliding_window", {"window": w, "dilation": d}),
}
NAMES = ["Normal", "Strided", "Fixed", "Sliding Window", "Dilated Sliding Window"]
DISPLAY = dict(zip(SEED_RULES, NAMES, strict=True))


def seed_labels(key: str, n: int, w: int, s: int, d: int) -> np.ndarray:
    family, params = SEED_RULES[key](w, s, d)
    return brute_force_labels(family_labels(family, **params), n)


def tiny_notebook(path):
    """A chapter of two cells: literal parameters, and a record of what they give."""
    write_chapter(path, "size = 4\nwindow_size = 1", record="{'nnz': size * window_size}")


SOLVE = {  # extra flags -> the family the printed parameters describe
    "window": [],
    "sliding_window": [],
    "block_local": [],
    "random": ["--seed", "5"],
    "strided": ["--stride", "4"],
    "dilated_sliding_window": ["--dilation", "3"],
    "longformer": ["--global_width", "2"],
    "fixed": ["--summary", "2"],
    "bigbird": ["--split", "1,0,0", "--seed", "3"],
}

# (name, argv, message): each must exit 2 with exactly one line on stderr that holds the message.
# All go through cli.main in this process; those of END_TO_END also through `python -m sparsekit`.
ERRORS = [
    ("no command", [], "sparsekit: error: the following arguments are required: command"),
    ("unknown command", ["nothing"], "invalid choice: 'nothing'"),
    ("masks size", ["masks", "--size", "0"], "--size: must be an integer >= 1, got 0"),
    ("masks size text", ["masks", "--size", "ten"], "--size: expected an integer, got 'ten'"),
    ("masks stride", ["masks", "--stride", "-2"], "--stride: must be an integer >= 1"),
    ("masks dilation", ["masks", "--dilation", "0"], "--dilation: must be an integer >= 1"),
    (
        "masks window",
        ["masks", "--window_size", "0", "--no_graphic"],
        "--window_size: must be an integer >= 1",
    ),
    (
        "masks sample",
        ["masks", "--size", "16", "--sample_size", "32"],
        "--sample_size: must be an integer in [1, --size=16]",
    ),
    ("masks order", ["masks", "--order", "diagonal"], "invalid choice: 'diagonal'"),
    ("masks unknown flag", ["masks", "--bogus"], "unrecognized arguments: --bogus"),
    (
        "masks memory budget",
        ["masks", "--size", "1048576", "--full_png", "--skip_pattern_print", "--out", "{tmp}/never"],
        "sparsekit masks: error: labels at n=1048576 needs",
    ),
    (
        "solve sparsity",
        ["solve", "--size", "64", "--sparsity", "1.5", "--pattern", "window"],
        "sparsity must",
    ),
    ("solve size", ["solve", "--size", "x", "--sparsity", "0.5", "--pattern", "window"], "--size must be"),
    ("solve pattern", ["solve", "--size", "64", "--sparsity", "0.5", "--pattern", "nope"], "pattern must be"),
    ("solve stride", ["solve", "--size", "64", "--sparsity", "0.5", "--pattern", "strided"], "needs stride"),
    (
        "solve split",
        ["solve", "--size", "64", "--sparsity", "0.5", "--pattern", "bigbird", "--split", "1,a"],
        "--split",
    ),
    (
        "solve summary",
        ["solve", "--size", "8", "--sparsity", "0.5", "--pattern", "fixed", "--summary", "9"],
        "summary must be an integer in [0, n=8], got 9",
    ),
    ("solve missing size", ["solve", "--sparsity", "0.5", "--pattern", "window"], "required: --size"),
    ("resources read limit", ["resources", "--read_limit", "1"], "read_limit must be an integer >= 2"),
    ("resources products", ["resources", "--num_multiplications", "0"], "num_multiplications must be"),
    ("resources masks", ["resources", "--masks", "normal,bogus"], "unknown mask type 'bogus'"),
    ("resources axial", ["resources", "--masks", "axial", "--mask_size", "1000"], "axial needs a square"),
    ("resources zigzag", ["resources", "--zigzag", "--order", "tiled"], "--zigzag contradicts --order tiled"),
    ("resources window", ["resources", "--window_size", "-1", "--masks", "strided"], "window must be"),
    ("resources tile", ["resources", "--order", "tiled", "--tile", "0"], "--tile must be an integer >= 1"),
    ("resources size text", ["resources", "--mask_size", "x"], "argument --mask_size: invalid int value"),
    ("sweep notebook", ["sweep", "{tmp}/missing.ipynb", "-p", "size", "4"], "notebook not found"),
    ("sweep grid", ["sweep", "{tmp}/tiny.ipynb", "-p", "1size", "4"], "malformed -p"),
    (
        "sweep jobs",
        ["sweep", "{tmp}/tiny.ipynb", "-p", "size", "4", "--jobs", "0"],
        "--jobs must be at least 1",
    ),
    ("sweep empty grid", ["sweep", "{tmp}/tiny.ipynb"], "empty grid"),
]
# One of each way to fail: argparse, a subcommand's ValueError, the memory budget, a missing file.
END_TO_END = ("no command", "masks size text", "solve sparsity", "masks memory budget", "sweep notebook")

RUNS = {
    "masks": [
        "masks", "--size", "12", "--window_size", "4", "--stride", "3", "--dilation", "3",
        "--sample_size", "8", "--order", "column_first", "--out", "{tmp}/pictures",
    ],
    "masks full": [
        "masks", "--size", "12", "--window_size", "4", "--stride", "5", "--full_png",
        "--sample_size", "6", "--skip_pattern_print", "--out", "{tmp}/full",
    ],
    "masks quiet": ["masks", "--size", "12", "--no_graphic", "--skip_pattern_print"],
    "resources": [
        "resources", "--mask_size", "16", "--num_multiplications", "5", "--read_limit", "6",
        "--window_size", "3", "--stride", "4", "--order", "tiled", "--tile", "3", "--masks", "all",
        "--dilation", "2", "--global_width", "1", "--nz_per_row", "2", "--seed", "4", "--out", "{tmp}/res",
    ],
    "resources zigzag": ["resources", "--mask_size", "16", "--zigzag", "--masks", "normal", "--no_files"],
    "sweep": [
        "sweep", "{tmp}/tiny.ipynb", "-p", "size", "4,8", "--jobs", "2", "--out", "{tmp}/sweep",
        "--kernel", "python3", "--timeout", "120",
    ],
    **{f"solve {name}": ["solve", "--size", "16", "--sparsity", "0.6", "--pattern", name, *extra]
       for name, extra in SOLVE.items()},
    **{f"error {name}": argv for name, argv, _ in ERRORS if name in END_TO_END},
}  # fmt: skip
PIPES = {  # the first line of a long output, then the reader goes away
    "masks": "masks --no_graphic",
    "resources": "resources --mask_size 64 --masks all --no_files",
    "solve": "solve --size 64 --sparsity 0.5 --pattern bigbird",
}


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """Every command of RUNS and PIPES, run at once in subprocesses: ``name -> CompletedProcess``."""
    tmp = tmp_path_factory.mktemp("cli")
    tiny_notebook(tmp / "tiny.ipynb")
    python = [sys.executable, "-m", "sparsekit"]
    jobs = {name: [*python, *(a.replace("{tmp}", str(tmp)) for a in argv)] for name, argv in RUNS.items()}
    for name, argv in PIPES.items():
        command = " ".join(shlex.quote(a) for a in [*python, *argv.split()])
        jobs[f"pipe {name}"] = ["bash", "-c", f"set -o pipefail; {command} | head -1"]

    def run(argv):
        return subprocess.run(argv, capture_output=True, text=True, cwd=tmp, timeout=240)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = dict(zip(jobs, pool.map(run, jobs.values()), strict=True))
    return tmp, results


def test_masks_every_flag_end_to_end(cli):
    tmp, results = cli
    out = results["masks"]
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    n, w, s, d = 12, 4, 3, 3
    for key, name in DISPLAY.items():
        labels = seed_labels(key, n, w, s, d)
        assert f"{name} Mask Sparsity: {1 - np.count_nonzero(labels) / n**2:.4%}" in lines
        # --order column_first: one line per column, rows ascending.
        start = lines.index(f"{name} mask non-zeros (column_first):")
        listed = [f"Column {j}: " + ", ".join(map(str, np.flatnonzero(labels[:, j]))) for j in range(n)]
        listed = [line for j, line in enumerate(listed) if labels[:, j].any()]
        assert lines[start + 1 : start + 1 + len(listed)] == listed
    names = sorted(p.name for p in (tmp / "pictures").iterdir())
    assert names == sorted([f"{k}_mask_8x8.png" for k in SEED_RULES] + ["mask_comparison_8x8.png"])
    assert sum(line.startswith("wrote ") for line in lines) == 6


def test_masks_full_png_has_the_labels_pixel_by_pixel(cli):
    import matplotlib.pyplot as plt

    from sparsekit.plot import LABEL_COLORS

    tmp, results = cli
    assert results["masks full"].returncode == 0 and results["masks full"].stderr == ""
    colours = np.array([[int(c[k : k + 2], 16) for k in (1, 3, 5)] for c in LABEL_COLORS])
    for key in SEED_RULES:
        image = (plt.imread(tmp / "full" / f"{key}_mask_12x12.png")[..., :3] * 255).round().astype(int)
        assert image.shape == (12, 12, 3)
        decoded = np.argmin(np.abs(image[:, :, None, :] - colours).sum(axis=-1), axis=-1)
        np.testing.assert_array_equal(decoded, seed_labels(key, 12, 4, 5, 2))
    quiet = results["masks quiet"]
    assert quiet.returncode == 0 and quiet.stderr == "" and len(quiet.stdout.splitlines()) == 6


def test_solve_every_flag_end_to_end(cli):
    # The printed parameters, counted here by brute force, give the printed exact sparsity.
    n = 16
    for name in SOLVE:
        out = cli[1][f"solve {name}"]
        assert out.returncode == 0 and out.stderr == "", name
        fields = dict(line.split(": ", 1) for line in out.stdout.splitlines())
        assert (fields["pattern"], fields["size"], fields["target sparsity"]) == (name, "16", "60.0000%")
        p = {k: int(v) for k, v in fields.items() if k not in ("pattern", "size") and v.lstrip("-").isdigit()}
        if name in ("random", "bigbird"):
            assert p["seed"] == {"random": 5, "bigbird": 3}[name]
            assert name == "random" or p["diagonal_width"] == p["global_width"] == 0  # split 1,0,0
            nnz = p["nz_per_row"] * n  # distinct keys in every row
        elif name == "longformer":
            assert p["global_width"] == 2
            nnz = np.count_nonzero(
                brute_force(RULES["sliding_window"](p["window"]), n)
                | brute_force(RULES["global_tokens"](2), n)
            )
        else:
            given = {
                "strided": ("stride", 4),
                "dilated_sliding_window": ("dilation", 3),
                "fixed": ("summary", 2),
            }
            assert name not in given or given[name] in p.items()
            nnz = np.count_nonzero(brute_force(RULES[name](**p), n))
        assert fields["achieved sparsity"] == f"{1 - nnz / n**2:.4%} (exact)", name


def test_resources_every_flag_end_to_end(cli):
    from test_resources import reference

    tmp, results = cli
    out = results["resources"]
    assert out.returncode == 0 and out.stderr == ""
    lines = out.stdout.splitlines()
    assert lines[0] == "mask_size 16, num_multiplications 5, read_limit 6, order tiled"
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:-1]}
    assert list(rows) == list(res.MASK_TYPES) and lines[-1] == f"files written to {tmp / 'res'}/"
    # normal and strided(3, 4): the cells in 3 x 3 tiles, packed by the per-point reference.
    for name, rule in (("normal", RULES["causal"]()), ("strided", RULES["strided"](3, 4))):
        dense = brute_force(rule, 16)
        tiles = [(r, c) for r in range(0, 16, 3) for c in range(0, 16, 3)]
        cells = [(i, j) for r, c in tiles for i in range(r, min(16, r + 3)) for j in range(c, min(16, c + 3))]
        cells = np.array([cell for cell in cells if dense[cell]])
        sizes, _ = reference(cells, 5, 6)
        assert rows[name][:2] == [str(len(cells)), str(len(sizes))]
    assert rows["random"][0] == str(2 * 16) and rows["axial"][0] == str(16 * (4 + 4 - 1))
    written = sorted(p.name for p in (tmp / "res").iterdir())
    expected = [f"{m}_mask_5_read_limit_6_tiled{s}.txt" for m in res.MASK_TYPES for s in ("", "_analysis")]
    assert written == sorted(expected)
    zigzag = results["resources zigzag"]
    assert zigzag.returncode == 0 and zigzag.stdout.splitlines()[0].endswith("order zigzag")
    assert zigzag.stdout.splitlines()[2].split()[:2] == ["normal", str(16 * 17 // 2)]


def test_sweep_every_flag_end_to_end(cli):
    tmp, results = cli
    out = results["sweep"]
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{tmp / 'sweep' / 'summary.csv'} (2 ok, 0 failed)"
    with open(tmp / "sweep" / "summary.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted((int(r["size"]), int(r["nnz"]), r["status"]) for r in rows) == [(4, 4, "ok"), (8, 8, "ok")]


@pytest.mark.parametrize("name", list(PIPES))
def test_broken_pipe_ends_quietly(cli, name):
    out = cli[1][f"pipe {name}"]
    assert out.returncode == 0 and out.stderr == ""  # no traceback, no "Exception ignored"
    assert len(out.stdout.splitlines()) == 1


def main_here(argv: list[str], tmp, capsys) -> tuple[int, str, str]:
    """``sparsekit ARGV`` through ``cli.main`` in this process: exit status, stdout, stderr."""
    tiny_notebook(tmp / "tiny.ipynb")
    try:
        code = main([a.replace("{tmp}", str(tmp)) for a in argv])
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(("name", "argv", "message"), ERRORS, ids=[e[0] for e in ERRORS])
def test_every_error_exits_2_with_one_line(tmp_path, capsys, name, argv, message):
    code, out, err = main_here(argv, tmp_path, capsys)
    assert code == 2, err
    assert out == "" and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("name", END_TO_END)
def test_errors_end_to_end(cli, tmp_path, capsys, name):
    # `python -m sparsekit` exits 2 with exactly the line cli.main writes: no traceback, no warning.
    tmp, results = cli
    argv = next(e[1] for e in ERRORS if e[0] == name)
    code, _, err = main_here(argv, tmp_path, capsys)
    done = results[f"error {name}"]
    assert done.returncode == code == 2 and done.stdout == ""
    assert done.stderr == err.replace(str(tmp_path), str(tmp)), done.stderr
    assert not (tmp / "never").exists()

"""``python -m sparsekit masks``: the seed's output, files, and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["masks", "--size", "0"], "--size: must be an integer >= 1, got 0"),
        (["masks", "--size", "ten"], "--size: expected an integer, got 'ten'"),
        (["masks", "--stride", "-2"], "--stride: must be an integer >= 1"),
        (["masks", "--window_size", "0", "--no_graphic"], "--window_size: must be an integer >= 1"),
        (
            ["masks", "--size", "16", "--sample_size", "32"],
            r"--sample_size: must be an integer in [1, --size=16]",
        ),
        (["masks", "--order", "diagonal"], "invalid choice: 'diagonal'"),
        (["masks", "--bogus"], "unrecognized arguments: --bogus"),
        (["nothing"], "invalid choice: 'nothing'"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err

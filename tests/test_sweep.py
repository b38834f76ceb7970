"""Tests of sparsekit.sweep: grid parsing, record reading and a real papermill sweep."""

from __future__ import annotations

import csv
import math

import nbformat
import pytest
from chapters import write_chapter

from sparsekit.sweep import (
    SweepError,
    collect_records,
    main,
    parse_grid,
    parse_value,
    run_filename,
    run_sweep,
)


def make_notebook(path, *, with_parameters=True):
    """A tiny chapter: literal parameters, a check that fails for size=8 and window_size=3."""
    check = (
        "if size == 8 and window_size == 3:\n"
        "    raise ValueError(f'window_size={window_size} is not allowed with size={size}')\n"
        "nnz = size * window_size"
    )
    record = "{'nnz': nnz, 'density': nnz / size**2, 'name': f'w{window_size}'}"
    return write_chapter(path, "size = 4\nwindow_size = 1" if with_parameters else None, check, record=record)


def test_parse_value_int_then_float_then_str():
    assert parse_value("512") == 512 and isinstance(parse_value("512"), int)
    assert parse_value("0.5") == 0.5 and isinstance(parse_value("0.5"), float)
    assert parse_value("1e3") == 1000.0
    assert parse_value("causal") == "causal"
    assert parse_value(" 7 ") == 7


def test_parse_grid_forms():
    expected = {"size": [512, 1024], "window_size": [16, 32]}
    assert parse_grid([["size", "512,1024"], ["window_size", "16,32"]]) == expected
    assert parse_grid([["size", "512", "1024"], ["window_size=16,32"]]) == expected


@pytest.mark.parametrize(
    "specs",
    [
        [["size"]],
        [[]],
        [["size", ""]],
        [["size", "512,,1024"]],
        [["1size", "2"]],
        [["size", "1"], ["size", "2"]],
    ],
)
def test_parse_grid_rejects_malformed(specs):
    with pytest.raises(SweepError):
        parse_grid(specs)


def test_collect_records_reads_dicts_of_scalars():
    cell = nbformat.v4.new_code_cell("{}")
    cell.metadata["tags"] = ["record"]
    cell.outputs = [
        nbformat.v4.new_output(
            "execute_result",
            data={"text/plain": "{'a': np.int64(3), 'b': np.float64(0.5), 'c': nan, 'd': -1}"},
            execution_count=1,
        )
    ]
    other = nbformat.v4.new_code_cell("{'ignored': 1}")
    other.outputs = [
        nbformat.v4.new_output("execute_result", data={"text/plain": "{'x': 1}"}, execution_count=2)
    ]
    records = collect_records(nbformat.v4.new_notebook(cells=[cell, other]))
    assert records["a"] == 3 and records["b"] == 0.5 and records["d"] == -1
    assert math.isnan(records["c"])
    assert "x" not in records


def test_run_filename():
    name = run_filename("02_strided", {"size": 512, "mode": "a b/c"})
    assert name == "02_strided__size=512__mode=a_b_c.ipynb"


def test_sweep_runs_grid_in_parallel_and_reports_failure(tmp_path, capsys):
    notebook = make_notebook(tmp_path / "chapter.ipynb")
    out = tmp_path / "runs" / "chapter"
    csv_path = run_sweep(notebook, {"size": [4, 8], "window_size": [1, 3]}, out_dir=out, jobs=2, timeout=120)
    assert csv_path == out / "summary.csv"

    with open(csv_path, newline="") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        header = reader.fieldnames
    assert header == ["size", "window_size", "status", "error", "nnz", "density", "name"]
    assert [(r["size"], r["window_size"], r["status"]) for r in rows] == [
        ("4", "1", "ok"),
        ("4", "3", "ok"),
        ("8", "1", "ok"),
        ("8", "3", "failed"),
    ]
    assert [r["nnz"] for r in rows] == ["4", "12", "8", ""]
    assert float(rows[1]["density"]) == pytest.approx(12 / 16)
    assert rows[0]["name"] == "w1" and rows[0]["error"] == ""
    failed = rows[3]
    assert failed["error"].startswith("ValueError: window_size=3 is not allowed with size=8")
    assert "\n" not in failed["error"]

    # The failure is reported with its parameters; the others are not affected.
    err = capsys.readouterr().err
    assert "FAILED size=8 window_size=3" in err
    assert err.count("sweep: ok") == 3

    # Every run left one complete notebook; nothing partial or temporary is left behind.
    expected = {f"chapter__size={s}__window_size={w}.ipynb" for s in (4, 8) for w in (1, 3)}
    assert {p.name for p in out.glob("*.ipynb")} == expected
    assert not [p for p in out.rglob(".*") if p.is_file()]
    for name in expected:
        nbformat.validate(nbformat.read(str(out / name), as_version=4))
    assert (out / "summary.png").stat().st_size > 0


def test_each_run_sees_the_environment_of_its_start(tmp_path, monkeypatch):
    """A run's process may come from a server started by an earlier sweep: it still gets the
    environment variables as they are when the sweep starts, as a freshly started process would."""
    probe = "import os\n{'probe': os.environ.get('SPARSEKIT_SWEEP_PROBE', 'unset')}"
    path = write_chapter(tmp_path / "probe.ipynb", "tag = 'a'", record=probe)

    def probes(out):
        with open(run_sweep(path, {"tag": ["a"]}, out_dir=tmp_path / out, jobs=1), newline="") as handle:
            return [row["probe"] for row in csv.DictReader(handle)]

    monkeypatch.delenv("SPARSEKIT_SWEEP_PROBE", raising=False)
    assert probes("first") == ["unset"]
    monkeypatch.setenv("SPARSEKIT_SWEEP_PROBE", "set after the first sweep")
    assert probes("second") == ["set after the first sweep"]


def test_cli_rejects_missing_notebook(tmp_path, capsys):
    code = main([str(tmp_path / "nope.ipynb"), "-p", "size", "1,2"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "notebook not found" in err[0]


@pytest.mark.parametrize(
    "args",
    [["-p", "size"], ["-p", "size", "1,,2"], ["-p", "nosuch", "1"], []],
)
def test_cli_rejects_bad_grid(tmp_path, capsys, args):
    notebook = make_notebook(tmp_path / "chapter.ipynb")
    code = main([str(notebook), *args, "--out", str(tmp_path / "out")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweep: error:")
    assert not (tmp_path / "out").exists()


def test_cli_rejects_notebook_without_parameters(tmp_path, capsys):
    notebook = make_notebook(tmp_path / "chapter.ipynb", with_parameters=False)
    assert main([str(notebook), "-p", "size", "1"]) == 2
    assert "parameters" in capsys.readouterr().err

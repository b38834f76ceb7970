"""Resource calculator: the packing rule against a per-point reference, hand-checked cases, files, CLI."""

from __future__ import annotations

import numpy as np
import pytest

import sparsekit as sk
from sparsekit import resources as res


def reference(cells, m, r):
    """Per-point reference: the packing rule and the per-step figures, with Python sets."""
    steps, rows, cols = [], set(), set()
    for i, j in cells.tolist():
        grow = (i not in rows) + (j not in cols)
        if steps and len(steps[-1]) < m and len(rows) + len(cols) + grow <= r:
            steps[-1].append((i, j))
        else:
            steps.append([(i, j)])
            rows, cols = set(), set()
        rows.add(i)
        cols.add(j)
    figures = {"rows": [], "cols": [], "new_rows": [], "new_cols": []}
    before_r, before_c = set(), set()
    for step in steps:
        sr, sc = {i for i, _ in step}, {j for _, j in step}
        figures["rows"].append(len(sr))
        figures["cols"].append(len(sc))
        figures["new_rows"].append(len(sr - before_r))
        figures["new_cols"].append(len(sc - before_c))
        before_r, before_c = sr, sc
    return [len(s) for s in steps], figures


def random_cells(seed, n, density, shuffle):
    rng = np.random.default_rng(seed)
    mask = rng.random((n, n)) < density
    cells = np.argwhere(mask).astype(np.int64)
    if shuffle:
        cells = cells[rng.permutation(len(cells))]
    return cells


@pytest.mark.parametrize("seed", range(12))
# (3, 5) and (4, 7): r = 2m - 1, the largest read limit that can still bind (m new rows and columns).
@pytest.mark.parametrize("m, r", [(1, 2), (3, 4), (3, 5), (4, 7), (8, 5), (16, 10), (5, 1000), (64, 7)])
def test_matches_reference_step_by_step(seed, m, r):
    cells = random_cells(seed, n=3 + seed * 2, density=0.1 + 0.07 * (seed % 5), shuffle=seed % 2 == 1)
    a = res.analyze_cells(cells, m, r)
    sizes, figures = reference(cells, m, r)
    assert a.products.tolist() == sizes
    for name, values in figures.items():
        assert getattr(a, name).tolist() == values, name
    assert a.needed_rows == len(set(cells[:, 0].tolist()))
    assert a.needed_cols == len(set(cells[:, 1].tolist()))
    if a.num_steps:
        reads = np.add(figures["rows"], figures["cols"])
        assert a.max_step == int(np.argmax(reads))
        assert a.total_loads == sum(figures["new_rows"]) + sum(figures["new_cols"])
        assert a.reads.max() <= r and a.products.max() <= m


@pytest.mark.parametrize("order", res.ORDERS)
@pytest.mark.parametrize(
    "pattern", [sk.causal(), sk.strided(4, 3), sk.fixed(4), sk.bigbird(2, 3, 1, seed=1), sk.axial(5, 5)]
)
def test_patterns_match_reference(pattern, order):
    n = 25
    cells = res.ordered_nonzeros(pattern, n, order, tile=3)
    assert cells.shape == (pattern.nnz(n), 2)
    for m, r in [(7, 9), (16, 1000), (10, 12)]:
        a = res.analyze(pattern, n, m, r, order, tile=3)
        sizes, figures = reference(a.cells, m, r)
        assert a.products.tolist() == sizes
        assert a.rows.tolist() == figures["rows"] and a.new_cols.tolist() == figures["new_cols"]


def test_large_chunks_agree_with_reference(monkeypatch):
    monkeypatch.setattr(res, "_CHUNK", 37)  # many chunk borders inside and between steps
    for seed, (m, r) in enumerate([(8, 1000), (9, 6), (5, 1000), (30, 11)]):
        cells = random_cells(seed, 30, 0.2, shuffle=seed % 2 == 0)
        a = res.analyze_cells(cells, m, r)
        sizes, figures = reference(cells, m, r)
        assert a.products.tolist() == sizes
        assert [a.rows.tolist(), a.cols.tolist(), a.new_rows.tolist(), a.new_cols.tolist()] == [
            figures[k] for k in ("rows", "cols", "new_rows", "new_cols")
        ]


def test_hand_checked_causal_4():
    # Row-first products of causal(4): (0,0) (1,0) (1,1) (2,0) (2,1) (2,2) (3,0) (3,1) (3,2) (3,3).
    a = res.analyze(sk.causal(), 4, num_multiplications=4, read_limit=1000)
    assert a.bounds.tolist() == [0, 4, 8, 10]
    assert a.rows.tolist() == [3, 2, 1] and a.cols.tolist() == [2, 3, 2]
    assert a.new_rows.tolist() == [3, 1, 0] and a.new_cols.tolist() == [2, 1, 1]
    assert (a.max_step, a.max_reads, a.total_loads, a.lower_bound) == (0, 5, 8, 8)
    # A read limit of 4: (2,0) would need rows {0,1,2} + cols {0,1} = 5 reads, so it starts step 1.
    b = res.analyze(sk.causal(), 4, num_multiplications=4, read_limit=4)
    assert b.bounds.tolist() == [0, 3, 6, 9, 10]
    assert b.step(1).tolist() == [[2, 0], [2, 1], [2, 2]]
    assert b.reads.tolist() == [4, 4, 4, 2] and b.max_step == 0


def test_read_limit_two_gives_one_product_per_step_unless_shared():
    cells = np.array([[0, 0], [0, 0], [0, 1], [1, 1]])
    assert res.pack_steps(cells, 10, 2).tolist() == [0, 2, 3, 4]


def test_read_limit_one_below_two_per_product_still_binds():
    # Two products of distinct rows and columns read 4 > 3: with m = 2, r = 3 every step holds one.
    cells = np.array([[0, 0], [1, 1], [2, 2], [3, 3]])
    assert res.pack_steps(cells, 2, 3).tolist() == [0, 1, 2, 3, 4]
    assert res.pack_steps(cells, 2, 4).tolist() == [0, 2, 4]  # r = 2m: never binds


def test_orders_hand_checked():
    p = sk.causal()
    assert res.ordered_nonzeros(p, 3, "row_first").tolist() == [
        [0, 0],
        [1, 0],
        [1, 1],
        [2, 0],
        [2, 1],
        [2, 2],
    ]
    assert res.ordered_nonzeros(p, 3, "zigzag").tolist() == [[0, 0], [1, 1], [1, 0], [2, 0], [2, 1], [2, 2]]
    assert res.ordered_nonzeros(p, 3, "column_first").tolist() == [
        [0, 0], [1, 0], [2, 0], [1, 1], [2, 1], [2, 2]
    ]  # fmt: skip
    assert res.ordered_nonzeros(p, 3, "tiled", tile=2).tolist() == [
        [0, 0], [1, 0], [1, 1], [2, 0], [2, 1], [2, 2]
    ]  # fmt: skip
    assert res.ordered_nonzeros(sk.block_local(4), 4, "tiled", tile=2)[:4].tolist() == [
        [0, 0], [0, 1], [1, 0], [1, 1]
    ]  # fmt: skip


@pytest.mark.parametrize("name", res.MASK_TYPES)
@pytest.mark.parametrize("order", res.ORDERS)
def test_orders_list_the_predicate_cells_in_order(name, order):
    # Reference: the predicate on the whole grid (the definition), its cells listed as the order says;
    # tiles of 3 x 5 cells, tile rows top to bottom, tiles left to right, cells row-first inside.
    for n in (1, 9, 64, 100):  # squares, for axial
        p = res.build_mask(name, n, window_size=6, stride=5, global_width=1, nz_per_row=1).bind(n)
        idx = np.arange(n)
        dense = np.broadcast_to(np.asarray(p(idx[:, None], idx[None, :]), dtype=bool), (n, n))
        if order == "column_first":
            visit = [(i, j) for j in range(n) for i in range(n)]
        elif order == "tiled":
            tiles = [(r, c) for r in range(0, n, 3) for c in range(0, n, 5)]
            visit = [(i, j) for r, c in tiles for i in range(r, r + 3) for j in range(c, c + 5)]
        else:
            flip = order == "zigzag"
            visit = [(i, j) for i in range(n) for j in (range(n)[::-1] if flip and i % 2 else range(n))]
        expected = [[i, j] for i, j in visit if i < n and j < n and dense[i, j]]
        assert res.ordered_nonzeros(p, n, order, tile=(3, 5)).tolist() == expected


def test_tiled_needs_fewer_loads_on_causal():
    row = res.analyze(sk.causal(), 256, 64, 1000, "row_first")
    tiled = res.analyze(sk.causal(), 256, 64, 1000, "tiled")
    assert tiled.total_loads < row.total_loads / 3


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: res.pack_steps(np.zeros((1, 2), int), 0, 10), "num_multiplications must be an integer >= 1"),
        (lambda: res.pack_steps(np.zeros((1, 2), int), 4, 1), "read_limit must be an integer >= 2"),
        (lambda: res.pack_steps(np.zeros((3,), int), 4, 4), "cells must be an array"),
        (lambda: res.analyze(sk.causal(), 8, order="diagonal"), "order must be one of"),
        (lambda: res.analyze(sk.causal(), 0), "n must be an integer >= 1"),
        (lambda: res.build_mask("axial", 10), "axial needs a square mask_size"),
        (lambda: res.build_mask("nope", 10), "mask type must be one of"),
    ],
)
def test_bad_values(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_empty_mask():
    a = res.analyze(sk.window(0), 8)
    assert (a.nnz, a.num_steps, a.max_step, a.total_loads) == (0, 0, -1, 0)


def test_write_report(tmp_path):
    a = res.analyze(sk.causal(), 4, 4, 4, "zigzag")
    points, analysis = res.write_report(a, tmp_path / "new" / "dir", "normal", {"window_size": 32})
    assert points.name == "normal_mask_4_read_limit_4_zigzag.txt"
    assert analysis.name == "normal_mask_4_read_limit_4_zigzag_analysis.txt"
    lines = points.read_text().splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert body == [f"step {t}: " + " ".join(f"({i},{j})" for i, j in a.step(t).tolist()) for t in range(4)]
    assert "# window_size: 32" in lines and "# read_limit: 4" in lines
    text = analysis.read_text()
    assert f"max case: step {a.max_step}" in text
    assert f"reuse ratio (total loads / lower bound): {a.reuse_ratio:.4f}" in text
    table = text.split("delta_rows delta_cols\n")[1].splitlines()
    assert len(table) == a.num_steps and table[0].split()[:4] == ["0", "3", "2", "2"]
    assert sorted(p.name for p in (tmp_path / "new" / "dir").iterdir()) == sorted(
        [points.name, analysis.name]
    )
    assert res.report_names("strided", 64, 1000) == (
        "strided_mask_64_read_limit_1000.txt",
        "strided_mask_64_read_limit_1000_analysis.txt",
    )


def test_cli_writes_files(tmp_path, capsys):
    code = res.main(
        ["--mask_size", "64", "--masks", "normal,axial,random", "--zigzag", "--out", str(tmp_path)]
    )
    assert code == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(
        f"{m}_mask_64_read_limit_1000_zigzag{s}.txt"
        for m in ("normal", "axial", "random")
        for s in ("", "_analysis")
    )
    out = capsys.readouterr().out
    assert "normal" in out and "ratio" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--read_limit", "1"], "read_limit must be an integer >= 2"),
        (["--num_multiplications", "0"], "num_multiplications must be an integer >= 1"),
        (["--masks", "normal,bogus"], "unknown mask type 'bogus'"),
        (["--masks", "axial", "--mask_size", "1000"], "axial needs a square mask_size"),
        (["--zigzag", "--order", "tiled"], "--zigzag contradicts --order tiled"),
        (["--window_size", "-1", "--masks", "strided"], "window must be an integer >= 0"),
    ],
)
def test_cli_bad_values_exit_2(tmp_path, capsys, argv, message):
    assert res.main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "o").exists()


def test_module_exit_codes(tmp_path):
    import subprocess
    import sys

    bad = subprocess.run(
        [sys.executable, "-m", "sparsekit.resources", "--read_limit", "1", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("resources: error: --read_limit")
    good = subprocess.run(
        [sys.executable, "-m", "sparsekit.resources", "--mask_size", "32", "--no_files"],
        capture_output=True,
        text=True,
    )
    assert good.returncode == 0 and "strided" in good.stdout

"""Rectangular tiles and the capacity-aware lower bound of the resource calculator."""

from __future__ import annotations

import numpy as np
import pytest

import sparsekit as sk
from sparsekit import resources as res


def tiled_by_brute_force(dense: np.ndarray, rows: int, cols: int) -> list[tuple[int, int]]:
    """Allowed cells sorted by tile row, tile column, then row-first inside the tile."""
    cells = [(i, j) for i in range(dense.shape[0]) for j in range(dense.shape[1]) if dense[i, j]]
    return sorted(cells, key=lambda c: (c[0] // rows, c[1] // cols, c[0], c[1]))


@pytest.mark.parametrize("tile", [(1, 1), (2, 3), (3, 2), (4, 4), (5, 16), (16, 5)])
@pytest.mark.parametrize("pattern", [sk.causal(), sk.strided(3, 4), sk.fixed(4), sk.sliding_window(5)])
def test_rectangular_tiles_match_brute_force(pattern, tile):
    n = 13
    got = res.ordered_nonzeros(pattern, n, "tiled", tile=tile)
    assert [tuple(c) for c in got.tolist()] == tiled_by_brute_force(pattern.dense(n), *tile)


def test_square_side_is_the_same_as_a_square_pair():
    p = sk.strided(8, 8)
    a = res.analyze(p, 64, 16, 1000, "tiled", tile=4)
    b = res.analyze(p, 64, 16, 1000, "tiled", tile=(4, 4))
    np.testing.assert_array_equal(a.cells, b.cells)
    assert a.tile == 4 and b.tile == (4, 4)
    # The default keeps its old value: floor(sqrt(num_multiplications)).
    assert res.analyze(p, 64, 64, 1000, "tiled").tile == 8


@pytest.mark.parametrize(
    "tile, message",
    [(0, "tile must be"), ((0, 4), "tile rows"), ((4, 0), "tile cols"), ((1, 2, 3), "pair"), ("8", "tile")],
)
def test_bad_tiles_name_the_parameter(tile, message):
    with pytest.raises(ValueError, match=message):
        res.analyze(sk.causal(), 16, 4, 1000, "tiled", tile=tile)


def test_capacity_lower_bound_by_hand():
    a = res.analyze(sk.causal(), 16, 4, 1000)
    assert a.nnz == 136 and a.lower_bound == 32
    # capacity 3: ceil(136 / 9) = 16 segments, 15 of them full: 45 loads.
    assert a.capacity_lower_bound(3) == 45
    # capacity 16 holds everything: only the plain bound remains.
    assert a.capacity_lower_bound(16) == 32
    with pytest.raises(ValueError, match="capacity"):
        a.capacity_lower_bound(0)


@pytest.mark.parametrize("order", res.ORDERS)
def test_every_schedule_respects_the_capacity_bound(order):
    # The calculator's schedule holds the previous step's vectors and the current step's: at most
    # twice the largest step. Its loads can never beat the bound for that capacity.
    for pattern in (sk.causal(), sk.strided(8, 8), sk.fixed(8)):
        a = res.analyze(pattern, 128, 16, 1000, order)
        assert a.total_loads >= a.capacity_lower_bound(2 * a.max_reads)

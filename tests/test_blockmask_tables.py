"""FlexAttention block tables from one period equal a brute-force count of every tile.

The periodic engine evaluates only the tile diagonals near the main one and folds the far ones; these
tests rebuild the tables from the definition (count each tile's allowed cells with a plain double loop
over the cells, then list partial and full tiles as FlexAttention does) at lengths with many far
diagonals and clipped last tiles.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import RULES, brute_force

pytest.importorskip("torch")

import sparsekit as sk  # noqa: E402
import sparsekit.torch as skt  # noqa: E402

CASES = [
    ("causal", {}),
    ("strided", {"window": 5, "stride": 7}),
    ("strided", {"window": 16, "stride": 16}),
    ("fixed", {"block": 12, "summary": 3}),
    ("sliding_window", {"window": 9}),
    ("dilated_sliding_window", {"window": 6, "dilation": 5}),
    ("block_local", {"block": 24}),
]


def brute_tables(mask: np.ndarray, b: int) -> dict[str, np.ndarray]:
    """Tables by definition: tiles that stick out past n are never full (FlexAttention pads them)."""
    n = mask.shape[0]
    nb = -(-n // b)
    status = np.zeros((nb, nb), dtype=np.int64)
    for bi in range(nb):
        for bj in range(nb):
            tile = mask[bi * b : (bi + 1) * b, bj * b : (bj + 1) * b]
            inside = tile.shape == (b, b)
            status[bi, bj] = 0 if not tile.any() else 2 if tile.all() and inside else 1
    tables = {}
    for prefix, code in (("", 1), ("full_", 2)):
        for axis, grid in (("kv", status), ("q", status.T)):
            rows = [[j for j in range(nb) if grid[i, j] == code] for i in range(nb)]
            tables[f"{prefix}{axis}_num_blocks"] = np.array([len(r) for r in rows])
            tables[f"{prefix}{axis}_indices"] = np.array(
                [r + [j for j in range(nb) if j not in r] for r in rows]
            ).reshape(nb, nb)
    return tables


@pytest.mark.parametrize(("family", "params"), CASES)
@pytest.mark.parametrize(("n", "b"), [(512, 16), (517, 16), (300, 8)])
def test_block_tables_equal_brute_force_tile_counts(family, params, n, b):
    pattern = getattr(sk, family)(**params)
    expected = brute_tables(brute_force(RULES[family](**params), n), b)
    got = skt.block_tables(pattern, n, b)
    assert set(got) == set(expected)
    for name, table in expected.items():
        np.testing.assert_array_equal(got[name], table, err_msg=f"{pattern.name} n={n} b={b}: {name}")

"""Every pattern against a brute-force double loop, and every view against the dense mask."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import RULES, brute_force, brute_force_labels, family_labels, labelled, union_labels

import sparsekit as sk

small = st.integers(min_value=0, max_value=12)
positive = st.integers(min_value=1, max_value=12)
lengths = st.integers(min_value=1, max_value=40)

FAMILIES = {
    "causal": (sk.causal, {}),
    "strided": (sk.strided, {"window": small, "stride": positive}),
    "fixed": (sk.fixed, {"block": positive, "summary": small}),
    "sliding_window": (sk.sliding_window, {"window": small}),
    "dilated_sliding_window": (sk.dilated_sliding_window, {"window": small, "dilation": positive}),
    "window": (sk.window, {"diagonal_width": small}),
    "global_tokens": (sk.global_tokens, {"width": small}),
    "block_local": (sk.block_local, {"block": positive}),
}


def check_views(pattern: sk.Pattern, n: int, expected: np.ndarray, labels: np.ndarray | None = None) -> None:
    """Every view of ``pattern`` at length ``n`` agrees with the dense reference ``expected`` (and the
    labelled mask, cell by cell, with ``labels`` when given)."""
    np.testing.assert_array_equal(pattern.dense(n), expected)
    got = pattern.labels(n)
    assert got.dtype == np.uint8
    np.testing.assert_array_equal(got > 0, expected)
    assert set(np.unique(got)) <= {0, 1, 2, 3}
    if labels is not None:
        np.testing.assert_array_equal(got, labels)
    counts = pattern.row_counts(n)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected.sum(axis=1))
    assert pattern.nnz(n) == int(expected.sum())
    nnz = int(expected.sum())
    assert pattern.sparsity(n) == (n * n - nnz) / (n * n)  # exactly rounded, no 1 - x cancellation
    assert pattern.density(n) == nnz / (n * n)
    for b in (1, 3, 4, 16, 128):
        nb = -(-n // b)
        ref = np.array(
            [[expected[i * b : (i + 1) * b, j * b : (j + 1) * b].sum() for j in range(nb)] for i in range(nb)]
        ).reshape(nb, nb)
        np.testing.assert_array_equal(pattern.block_counts(n, b), ref)
        area = np.array(
            [[expected[i * b : (i + 1) * b, j * b : (j + 1) * b].size for j in range(nb)] for i in range(nb)]
        ).reshape(nb, nb)
        status = np.where(ref == 0, 0, np.where(ref == area, 2, 1))
        np.testing.assert_array_equal(pattern.blocks(n, b), status)
    np.testing.assert_array_equal(pattern.nonzeros(n), np.argwhere(expected))
    by_column = np.argwhere(expected.T)[:, ::-1]
    np.testing.assert_array_equal(pattern.nonzeros(n, order="column_first"), by_column)
    idx = np.arange(n)
    np.testing.assert_array_equal(pattern.bind(n)(idx[:, None], idx[None, :]), expected)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_matches_brute_force(family):
    factory, params = FAMILIES[family]

    @given(st.fixed_dictionaries(params), lengths)
    def run(kwargs, n):
        if family == "fixed":
            kwargs["summary"] = min(kwargs["summary"], kwargs["block"])
        if family == "global_tokens" and kwargs["width"] > n:
            with pytest.raises(ValueError, match="width"):
                factory(**kwargs).dense(n)
            return
        labels = brute_force_labels(family_labels(family, **kwargs), n)
        check_views(factory(**kwargs), n, brute_force(RULES[family](**kwargs), n), labels)

    run()


@given(st.integers(1, 7), st.integers(1, 7))
def test_axial_matches_brute_force(height, width):
    n = height * width
    labels = brute_force_labels(family_labels("axial", height=height, width=width), n)
    check_views(sk.axial(height, width), n, brute_force(RULES["axial"](height, width), n), labels)


@given(lengths, st.integers(0, 40), st.integers(0, 2**31))
def test_random_has_exact_row_counts_and_is_reproducible(n, k, seed):
    k = min(k, n)
    p = sk.random(k, seed=seed)
    dense = p.dense(n)
    np.testing.assert_array_equal(dense.sum(axis=1), np.full(n, k))
    np.testing.assert_array_equal(sk.random(k, seed=seed).dense(n), dense)
    check_views(p, n, dense)
    table = p.bind(n).table
    rule = lambda i, j: j in set(table[i].tolist())  # noqa: E731
    check_views(p, n, brute_force(rule, n), brute_force_labels(labelled(rule, lambda i, j: 3), n))


def column_chi2(tables: list[np.ndarray], n: int) -> float:
    """Chi-square statistic of the column counts of ``tables`` (rows of ``k`` distinct columns in
    ``[0, n)``) against a uniform draw. A column is in a row at most once, with probability ``p = k / n``,
    so its count has variance ``rows * p * (1 - p)``: each term is divided by ``E * (1 - p)``."""
    hits = np.bincount(np.concatenate([t.ravel() for t in tables]), minlength=n)
    rows, k = sum(t.shape[0] for t in tables), tables[0].shape[1]
    expected, p = rows * k / n, k / n
    return float(((hits - expected) ** 2).sum() / (expected * (1 - p)))


def chi2_quantile(dof: int, z: float) -> float:
    """Quantile of the chi-square distribution at the normal quantile ``z`` (Wilson-Hilferty)."""
    return dof * (1 - 2 / (9 * dof) + z * (2 / (9 * dof)) ** 0.5) ** 3


@pytest.mark.parametrize("k", [8, 40])  # Floyd's draw (k <= 32) and the partition draw
def test_random_is_uniform_over_columns(k):
    # 100 seeded draws of 64 rows: every column expected 100 * k times. The statistic must stay below
    # the 99.9th percentile of chi-square with 63 degrees of freedom (about 103.4) ...
    n, seeds = 64, range(100)
    limit = chi2_quantile(n - 1, 3.0902)
    assert limit == pytest.approx(103.44, abs=0.1)  # the tabulated 99.9th percentile of chi2(63)
    assert column_chi2([sk.random(k, seed=s).bind(n).table for s in seeds], n) < limit
    # ... while a draw biased by one column, never the last one, lands far above it (about 100 * k).
    rng = np.random.default_rng(0)
    biased = [np.array([rng.choice(n - 1, size=k, replace=False) for _ in range(n)]) for _ in seeds]
    assert column_chi2(biased, n) > 5 * limit


def test_large_random_k_uses_the_partition_draw():
    p = sk.random(50, seed=3)
    np.testing.assert_array_equal(p.row_counts(80), np.full(80, 50))
    np.testing.assert_array_equal(p.dense(80).sum(axis=1), np.full(80, 50))


@given(lengths, st.integers(0, 6), st.integers(0, 9), st.integers(0, 5), st.integers(0, 99))
def test_bigbird_is_the_union_of_its_parts(n, k, width, g, seed):
    k, g = min(k, n), min(g, n)
    p = sk.bigbird(k, width, g, seed=seed)
    table = sk.random(k, seed=seed).bind(n).table
    drawn = labelled(lambda i, j: j in set(table[i].tolist()), lambda i, j: 3)
    labels = union_labels(
        drawn, family_labels("window", diagonal_width=width), family_labels("global_tokens", width=g)
    )
    expected = (
        sk.random(k, seed=seed).dense(n)
        | brute_force(RULES["window"](width), n)
        | brute_force(RULES["global_tokens"](g), n)
    )
    check_views(p, n, expected, brute_force_labels(labels, n))


@given(lengths, st.integers(0, 9), st.integers(0, 5))
def test_longformer_is_window_or_global(n, window, g):
    g = min(g, n)
    expected = brute_force(RULES["sliding_window"](window), n) | brute_force(RULES["global_tokens"](g), n)
    labels = union_labels(
        family_labels("sliding_window", window=window), family_labels("global_tokens", width=g)
    )
    check_views(sk.longformer(window, g), n, expected, brute_force_labels(labels, n))


@given(lengths, st.lists(st.integers(0, 39), max_size=5))
def test_global_indices(n, indices):
    indices = [i for i in indices if i < n]
    chosen = set(indices)
    rule = lambda i, j: i in chosen or j in chosen  # noqa: E731
    labels = brute_force_labels(labelled(rule, lambda i, j: 3), n)
    check_views(sk.global_tokens(indices=indices), n, brute_force(rule, n), labels)


@given(lengths, st.integers(0, 6), st.integers(1, 6), st.integers(1, 6))
def test_composition_or_and_not(n, window, stride, block):
    a, b = sk.strided(window, stride), sk.fixed(block)
    da, db = a.dense(n), b.dense(n)
    la = brute_force_labels(family_labels("strided", window=window, stride=stride), n)
    lb = brute_force_labels(family_labels("fixed", block=block, summary=1), n)
    # Unions and intersections keep each cell's most specific label; a complement labels its cells 2.
    most_specific = np.where((la > 0) & (lb > 0), np.minimum(la, lb), np.maximum(la, lb))
    check_views(a | b, n, da | db, most_specific)
    check_views(a & b, n, da & db, np.where((la > 0) & (lb > 0), most_specific, 0))
    check_views(~a, n, ~da, np.where(la > 0, 0, 2))
    check_views(
        (a | sk.random(min(2, n), seed=1)) & ~b, n, (da | sk.random(min(2, n), seed=1).dense(n)) & ~db
    )


def test_mixed_union_with_globals_and_random():
    n = 70
    p = sk.random(3, seed=4) | sk.global_tokens(indices=[1, 20, 69]) | sk.fixed(6) | sk.random(2, seed=9)
    glob = brute_force(lambda i, j: i in (1, 20, 69) or j in (1, 20, 69), n)
    expected = sk.random(3, seed=4).dense(n) | glob | sk.fixed(6).dense(n) | sk.random(2, seed=9).dense(n)
    tables = [sk.random(k, seed=s).bind(n).table for k, s in ((3, 4), (2, 9))]
    drawn = [labelled(lambda i, j, t=t: j in set(t[i].tolist()), lambda i, j: 3) for t in tables]
    glob_labels = labelled(lambda i, j: i in (1, 20, 69) or j in (1, 20, 69), lambda i, j: 3)
    labels = union_labels(*drawn, glob_labels, family_labels("fixed", block=6, summary=1))
    check_views(p, n, expected, brute_force_labels(labels, n))


def test_labels_follow_the_seed_codes():
    labels = sk.strided(window=3, stride=4).labels(9)
    assert labels[5, 5] == sk.DIAGONAL
    assert labels[5, 3] == sk.LOCAL
    assert labels[8, 4] == sk.GLOBAL  # offset 4 is a multiple of the stride, outside the window
    assert labels[3, 5] == sk.NO_ATTENTION
    fixed = sk.fixed(block=4).labels(12)
    assert fixed[9, 8] == sk.LOCAL and fixed[9, 3] == sk.GLOBAL and fixed[9, 2] == 0
    # In a union the most specific label wins: the window's diagonal (1) over the global code (3).
    bird = sk.bigbird(0, 3, 2).labels(10)
    assert bird[0, 0] == sk.DIAGONAL and bird[0, 1] == sk.LOCAL and bird[0, 7] == sk.GLOBAL


SEED_TABLE = {
    "Normal": (sk.causal(), "49.9512%"),
    "Strided": (sk.strided(32, 32), "95.4086%"),
    "Fixed": (sk.fixed(32), "96.8750%"),
    "Sliding Window": (sk.sliding_window(32), "96.8033%"),
    "Dilated Sliding Window": (sk.dilated_sliding_window(32, 2), "96.8292%"),
}


@pytest.mark.parametrize("name", list(SEED_TABLE))
def test_seed_sparsity_table(name):
    pattern, printed = SEED_TABLE[name]
    assert f"{pattern.sparsity(1024):.4%}" == printed


def test_structured_views_at_large_n_use_no_dense_mask():
    sk_budget = sk.set_memory_budget(1 << 20)  # 1 MiB: any n x n materialization would be refused
    try:
        n = 1 << 20
        assert sk.sliding_window(512).nnz(n) == n * 513 - 2 * sum(range(1, 257))
        assert sk.causal().nnz(n) == n * (n + 1) // 2
        # Longformer by rows, independently: the band |i - j| <= 32, plus the global columns 0 and 1
        # outside the band, and the two global rows whole.
        m, rows = 131072, np.arange(131072)
        band = 1 + np.minimum(rows, 32) + np.minimum(m - 1 - rows, 32)
        expected = np.where(rows < 2, m, band + (rows > 32) + (rows > 33))
        assert sk.longformer(64, 2).nnz(m) == int(expected.sum())
        blocks = sk.fixed(32).blocks(131072, 128)
        assert blocks.shape == (1024, 1024) and blocks[5, 3] == 1 and blocks[3, 5] == 0
        with pytest.raises(ValueError, match="memory budget"):
            sk.causal().dense(2048)
    finally:
        sk.set_memory_budget(sk_budget)


def test_dense_refuses_over_budget_with_pointer_to_exact_views():
    with pytest.raises(ValueError, match=r"row_counts\(n\), nnz\(n\), sparsity\(n\) or blocks\(n\)"):
        sk.strided(32, 32).dense(100_000, max_bytes=2**30)


def test_predicate_accepts_python_ints_and_rejects_floats():
    p = sk.strided(4, 4)
    assert bool(p(5, 1)) and not bool(p(1, 5))
    with pytest.raises(ValueError, match="integer token indices"):
        p(np.array([1.5]), np.array([0]))


def test_random_predicate_needs_a_length():
    with pytest.raises(ValueError, match="depends on the sequence length"):
        sk.random(2, seed=0)(np.arange(3), np.arange(3))
    assert sk.random(2, seed=0, size=5)(np.arange(5)[:, None], np.arange(5)).sum() == 10


BAD_PARAMETERS = [
    (lambda: sk.strided(-1, 4), "window must be an integer >= 0, got -1"),
    (lambda: sk.strided(4, 0), "stride must be an integer >= 1, got 0"),
    (lambda: sk.strided(4.5, 4), "window must be an integer"),
    (lambda: sk.strided(True, 4), "window must be an integer"),
    (lambda: sk.fixed(0), "block must be an integer >= 1"),
    (lambda: sk.fixed(4, summary=5), r"summary must be an integer in \[0, 4\], got 5"),
    (lambda: sk.dilated_sliding_window(4, 0), "dilation must be an integer >= 1"),
    (lambda: sk.sliding_window("8"), "window must be an integer"),
    (lambda: sk.window(-2), "diagonal_width must be an integer >= 0"),
    (lambda: sk.block_local(-1), "block must be an integer >= 1"),
    (lambda: sk.axial(0, 4), "height must be an integer >= 1"),
    (lambda: sk.axial(4, 4).dense(15), "n must equal height \\* width"),
    (lambda: sk.random(5, seed=0).dense(4), r"nz_per_row must be an integer in \[0, n=4\], got 5"),
    (lambda: sk.random(2, seed=-1), "seed must be an integer >= 0"),
    (lambda: sk.global_tokens(width=9).nnz(8), r"global width must be an integer in \[0, n=8\], got 9"),
    (lambda: sk.global_tokens(indices=[8]).nnz(8), r"global indices must lie in \[0, n - 1 = 7\]"),
    (lambda: sk.global_tokens(), "exactly one of width= or indices="),
    (lambda: sk.causal().dense(0), "n must be an integer >= 1, got 0"),
    (lambda: sk.causal().blocks(8, block_size=0), "block_size must be an integer >= 1"),
    (lambda: sk.causal().nonzeros(8, order="diagonal"), "order must be 'row_first' or 'column_first'"),
    (lambda: sk.causal() | 3, "can only combine sparsekit patterns"),
]


@pytest.mark.parametrize(("make", "message"), BAD_PARAMETERS)
def test_bad_parameters_name_the_parameter_and_range(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_names_describe_the_parameters():
    assert sk.strided(32, 16).name == "strided(window=32, stride=16)"
    assert (
        sk.bigbird(2, 3, 1, seed=5).name == "bigbird(nz_per_row=2, diagonal_width=3, global_width=1, seed=5)"
    )
    assert (sk.causal() | sk.fixed(4)).name == "(causal() | fixed(block=4, summary=1))"


def test_block_summary_counts_tiles():
    summary = sk.sliding_window(512).block_summary(1024, 128)
    layout = sk.sliding_window(512).blocks(1024, 128)
    assert summary["tiles"] == 64 == summary["empty"] + summary["partial"] + summary["full"]
    assert summary["full"] == int((layout == 2).sum()) and summary["empty"] == int((layout == 0).sum())
    assert sk.causal().block_sparsity(1024, 128) == 28 / 64


def test_axial_token_checks_the_grid():
    grid = sk.axial(4, 6)
    assert grid.token(2, 5) == 17
    with pytest.raises(ValueError, match=r"row must be an integer in \[0, 3\], got 4"):
        grid.token(4, 0)


@pytest.mark.parametrize("b", [1, 3, 16, 40])
def test_tile_density_counts_the_cells_of_non_empty_tiles(b):
    n = 50
    for p in (sk.sliding_window(5), sk.strided(4, 7), sk.random(2, seed=1), sk.causal()):
        dense = p.dense(n)
        tiles = -(-n // b)
        padded = np.zeros((tiles * b, tiles * b), bool)
        padded[:n, :n] = dense
        touched = padded.reshape(tiles, b, tiles, b).any(axis=(1, 3))
        inside = np.repeat(np.repeat(touched, b, axis=0), b, axis=1)[:n, :n]
        assert p.tile_density(n, b) == pytest.approx(inside.mean())
        assert p.tile_density(n, b) >= p.density(n)

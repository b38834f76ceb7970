"""Closed-form counts (nnz, sparsity, block summary) against brute force and the O(n) row counts.

The closed forms are arithmetic over one period; they must agree with a plain double loop over the cells
(``tests/reference.py``) at many small and awkward lengths (primes, non-multiples of every period and
block size), and with an independent sum over diagonals at lengths far beyond any dense mask.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference import RULES, brute_force

import sparsekit as sk
from sparsekit.masks.segments import paraphrase_fusion

# Family, parameters: periods 1, 5, 7, 12, 10 and windows that divide none of the lengths below.
STRUCTURED = [
    ("causal", {}),
    ("strided", {"window": 5, "stride": 7}),
    ("strided", {"window": 0, "stride": 3}),
    ("strided", {"window": 9, "stride": 1}),
    ("fixed", {"block": 12, "summary": 3}),
    ("fixed", {"block": 5, "summary": 0}),
    ("fixed", {"block": 4, "summary": 4}),
    ("sliding_window", {"window": 9}),
    ("sliding_window", {"window": 0}),
    ("window", {"diagonal_width": 0}),
    ("window", {"diagonal_width": 7}),
    ("dilated_sliding_window", {"window": 6, "dilation": 3}),
    ("dilated_sliding_window", {"window": 3, "dilation": 10}),
    ("block_local", {"block": 10}),
    ("global_tokens", {"width": 5}),
]
LENGTHS = [1, 2, 3, 11, 13, 37, 60, 61, 97]
BLOCKS = [1, 4, 16, 33, 128]


def make(family: str, params: dict) -> sk.Pattern:
    return getattr(sk, family)(**params)


def tile_layout(mask: np.ndarray, b: int) -> np.ndarray:
    """Brute-force tile status from a dense mask: 0 empty, 1 partial, 2 full (clipped edge tiles)."""
    n = mask.shape[0]
    nb = -(-n // b)
    status = np.zeros((nb, nb), dtype=np.uint8)
    for bi in range(nb):
        for bj in range(nb):
            tile = mask[bi * b : (bi + 1) * b, bj * b : (bj + 1) * b]
            status[bi, bj] = 0 if not tile.any() else 2 if tile.all() else 1
    return status


def summary_of(layout: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(np.count_nonzero(layout == code)) for code in range(3))


@pytest.mark.parametrize(("family", "params"), STRUCTURED)
def test_closed_nnz_and_block_summary_match_brute_force(family, params):
    p = make(family, params)
    for n in LENGTHS:
        if params.get("width", 0) > n and family == "global_tokens":
            continue  # more global tokens than the length: refused by bind
        mask = brute_force(RULES[family](**params), n)
        closed = p._nnz_closed(n)
        assert closed is not None, f"{p.name} has no closed nnz"
        assert closed == int(mask.sum()) == int(p.row_counts(n).sum()), (p.name, n)
        assert p.sparsity(n) == (n * n - int(mask.sum())) / (n * n)
        for b in BLOCKS:
            expected = summary_of(tile_layout(mask, b))
            assert p._block_summary_closed(n, b) == expected, (p.name, n, b)
            assert (p.blocks(n, b) == tile_layout(mask, b)).all(), (p.name, n, b)


@pytest.mark.parametrize(
    ("height", "width"), [(1, 1), (1, 9), (9, 1), (3, 7), (7, 3), (5, 5), (4, 16), (9, 4), (3, 8), (5, 2)]
)
def test_axial_closed_forms(height, width):
    p, n = sk.axial(height, width), height * width
    mask = brute_force(RULES["axial"](height, width), n)
    assert p.nnz(n) == int(mask.sum())
    for b in BLOCKS + [2, 8]:  # grid rows of whole tiles, tiles of whole grid rows, neither
        assert p._block_summary_closed(n, b) == summary_of(tile_layout(mask, b)), (n, b)


@pytest.mark.parametrize("indices", [[0], [3, 4, 5, 6], [0, 7, 8, 30, 31, 60]])
def test_global_indices_closed_forms(indices):
    p = sk.global_tokens(indices=indices)
    for n in (61, 64, 97):
        flags = np.isin(np.arange(n), indices)
        mask = flags[:, None] | flags[None, :]
        assert p.nnz(n) == int(mask.sum())
        for b in BLOCKS:
            assert p._block_summary_closed(n, b) == summary_of(tile_layout(mask, b)), (n, b)


@pytest.mark.parametrize(("window", "width"), [(0, 0), (6, 3), (9, 1), (4, 40), (200, 7)])
def test_longformer_closed_nnz(window, width):
    p = sk.longformer(window, width)
    band, glob = RULES["sliding_window"](window), RULES["global_tokens"](width)
    for n in (1, 7, 13, 40, 61, 97):
        if width > n:
            continue
        mask = brute_force(lambda i, j: band(i, j) or glob(i, j), n)
        assert p._nnz_closed(n) == int(mask.sum()) == int(p.row_counts(n).sum()), n
        for b in BLOCKS:
            assert p._block_summary_closed(n, b) == summary_of(tile_layout(mask, b)), (n, b)


@pytest.mark.parametrize(
    ("core", "width"), [("strided", 9), ("causal", 4), ("fixed", 13), ("dilated_sliding_window", 5)]
)
def test_union_with_leading_global_tokens_closed_block_summary(core, width):
    params = dict(STRUCTURED)[core] if core != "strided" else {"window": 5, "stride": 7}
    p = make(core, params) | sk.global_tokens(width)
    rule, glob = RULES[core](**params), RULES["global_tokens"](width)
    for n in (13, 61, 97):
        mask = brute_force(lambda i, j: rule(i, j) or glob(i, j), n)
        for b in BLOCKS:
            assert p._block_summary_closed(n, b) == summary_of(tile_layout(mask, b)), (n, b)


@pytest.mark.parametrize(
    "layout",
    [
        {"num_paraphrases": 3, "tokens_per_paraphrase": 5},
        {"lengths": [4, 1, 7], "separator_tokens": 2, "prefix_tokens": 3, "num_generated_tokens": 5},
        {"lengths": [9], "prefix_tokens": 2},
        {"lengths": [2, 3], "separator_tokens": 1, "num_generated_tokens": 11},
    ],
)
def test_paraphrase_fusion_closed_nnz(layout):
    p = paraphrase_fusion(**layout)
    n = p.length
    span_of = p.segment_ids()
    generated = p.generation_start
    prefix = p.prefix_tokens

    def rule(i, j):
        return j <= i and (i >= generated or j < prefix or span_of[i] == span_of[j])

    mask = brute_force(rule, n)
    assert p._nnz_closed(n) == int(mask.sum()) == int(p.row_counts(n).sum())
    for b in BLOCKS + [2, 3, 7]:  # tiles straddling span boundaries, whole spans in one tile
        assert p._block_summary_closed(n, b) == summary_of(tile_layout(mask, b)), b


def test_paraphrase_fusion_closed_forms_at_a_trillion_tokens():
    # No per-token array: the layout alone (a table of 2**40 starts would need 8 TiB).
    p = paraphrase_fusion(
        num_paraphrases=8, tokens_per_paraphrase=2**37, separator_tokens=4, prefix_tokens=100
    )
    n = p.length
    # Prefix triangle, then each paraphrase (and separator) sees the prefix and its own triangle.
    pieces = [(2**37, 100)] * 8 + [(4, 100)] * 7
    assert p.nnz(n) == 100 * 101 // 2 + sum(size * prefix + size * (size + 1) // 2 for size, prefix in pieces)
    summary = p.block_summary(n, 128)
    assert summary["empty"] + summary["partial"] + summary["full"] == summary["tiles"] == (-(-n // 128)) ** 2


def diagonal_nnz(allowed, n: int) -> int:
    """Independent count of a pattern that depends only on d = i - j: sum of (n - |d|) over allowed d."""
    d = np.arange(-(n - 1), n, dtype=np.int64)
    keep = allowed(d)
    return int(((n - np.abs(d[keep])).astype(object)).sum())


@pytest.mark.parametrize(
    ("p", "allowed"),
    [
        (sk.causal(), lambda d: d >= 0),
        (sk.strided(128, 128), lambda d: (d >= 0) & ((d < 128) | (d % 128 == 0))),
        (sk.strided(5, 7), lambda d: (d >= 0) & ((d < 5) | (d % 7 == 0))),
        (sk.sliding_window(512), lambda d: np.abs(d) <= 256),
        (sk.dilated_sliding_window(512, 2), lambda d: (np.abs(d) % 2 == 0) & (np.abs(d) // 2 <= 256)),
    ],
)
def test_closed_nnz_at_large_awkward_n_matches_diagonal_sum(p, allowed):
    for n in (1_000_003, 999_983):
        assert p.nnz(n) == diagonal_nnz(allowed, n)


def test_huge_n_is_exact_python_integer():
    n = 2**40
    assert sk.causal().nnz(n) == n * (n + 1) // 2
    assert sk.block_local(128).nnz(n) == n * 128
    assert sk.fixed(128, 1).nnz(n) == (n // 128) * 128 * 129 // 2 + 128 * ((n // 128) * (n // 128 - 1) // 2)
    # One rounding only: the float is the correctly rounded quotient of two exact integers.
    nnz = sk.sliding_window(512).nnz(n)
    assert nnz == n * 513 - 2 * (256 * 257 // 2)
    assert sk.sliding_window(512).sparsity(n) == (n * n - nnz) / (n * n)
    summary = sk.causal().block_summary(n, 128)
    tiles = n // 128
    assert summary["partial"] == tiles and summary["full"] == tiles * (tiles - 1) // 2
    assert summary["empty"] + summary["partial"] + summary["full"] == summary["tiles"] == tiles * tiles


COMPOSITES = [
    sk.strided(3, 5) | sk.block_local(7),
    sk.sliding_window(10) & sk.fixed(6, 2),
    ~sk.strided(4, 6),
    ~sk.global_tokens(3),
    sk.causal() & ~sk.sliding_window(4),
]


@pytest.mark.parametrize("p", COMPOSITES, ids=lambda p: p.name)
def test_composites_exact_and_chunked_under_a_tiny_budget(p):
    for n in (13, 61, 97):
        mask = p.dense(n)  # dense is checked against brute force by the pattern tests
        assert p.nnz(n) == int(mask.sum())
        closed = p._block_summary_closed(n, 16)
        if closed is not None:
            assert closed == summary_of(tile_layout(mask, 16))
    previous = sk.set_memory_budget(1024)  # too small for row counts: chunked evaluation
    try:
        for n in (61, 97):
            assert p.nnz(n) == int(p.dense(n, max_bytes=n * n).sum())
    finally:
        sk.set_memory_budget(previous)

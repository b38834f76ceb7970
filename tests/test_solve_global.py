"""BigBird solvers against brute force: every parameter triple counted on dense masks."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

import sparsekit as sk
from sparsekit import solve as sv


def dense_parts(n: int, seed: int):
    """Dense boolean masks of every random, band and global part at length n (cell by cell)."""
    i, j = np.indices((n, n))
    randoms = {k: sk.random(k, seed, size=n).dense(n) for k in range(n + 1)}
    widths = [0] + [2 * h + 1 for h in range(n)]
    bands = {w: (np.abs(i - j) <= w // 2) & (w > 0) for w in widths}
    globals_ = {g: (i < g) | (j < g) for g in range(n + 1)}
    return randoms, bands, globals_


def brute_force_best(n: int, target: float, split, seed: int = 0):
    """The documented rank over every allowed triple: distance, split deviation, size, params."""
    randoms, bands, globals_ = dense_parts(n, seed)
    raw = [Fraction(float(x)) for x in split]
    shares = [x / sum(raw) for x in raw]
    goal = (1 - Fraction(target)) * n * n
    best = None
    for k, r in randoms.items():
        for w, b in bands.items():
            for g, gl in globals_.items():
                if (shares[0] == 0 and k) or (shares[1] == 0 and w) or (shares[2] == 0 and g):
                    continue
                nnz = int(np.count_nonzero(r | b | gl))
                areas = [int(r.sum()), int(b.sum()), int(gl.sum())]
                deviation = sum(abs(a - f * goal) for a, f in zip(areas, shares, strict=True))
                key = (abs(nnz - goal), deviation, nnz, (k, w, g))
                best = key if best is None or key < best else best
    return best


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("split", [(1, 1, 1), (2, 1, 1), (0, 1, 3), (1, 0, 0)])
def test_bigbird_exact_is_the_global_optimum_by_brute_force(n, split):
    for target in (0.0, 0.2, 0.5, 0.7, 0.93, 1.0):
        sol = sv.bigbird_exact(n, target, split=split, seed=2)
        _, _, nnz, params = brute_force_best(n, target, split, seed=2)
        got = sol.params
        assert (got["nz_per_row"], got["diagonal_width"], got["global_width"]) == params
        assert round((1 - sol.achieved) * n * n) == nnz
        assert sol.optimal and sol.method == "enumeration"


def test_issue_example_is_exact():
    # The old local search stopped at (0, 1, 1), +2 pp; (3, 0, 0) is exact.
    sol = sv.bigbird_exact(10, 0.70)
    assert sol.error == pytest.approx(0.0, abs=1e-15)
    dense = sk.bigbird(**sol.params).dense(10)
    assert np.count_nonzero(dense) == 30


def test_enumeration_ends_and_local_search_says_so():
    n = sv.ENUMERATE_MAX_N + 1
    sol = sv.bigbird_exact(n, 0.9)
    assert not sol.optimal and sol.method == "local search"
    assert sk.bigbird(**sol.params).sparsity(n) == sol.achieved
    assert abs(sol.error) <= 1 / n  # within one random key per row


def test_split_is_normalised():
    a = sv.bigbird_exact(40, 0.8, split=(1, 1, 1))
    b = sv.bigbird_exact(40, 0.8, split=(1 / 3, 1 / 3, 1 / 3))
    c = sv.bigbird_exact(40, 0.8, split=(5, 5, 5))
    assert a.params == b.params == c.params


# ------------------------------------------------------------------------------------------------
# Adjustments for the seed-style construction
# ------------------------------------------------------------------------------------------------
def test_seed_polynomial_is_not_monotone():
    # History: the seed's least-squares polynomial falls between 0.8 and 0.9 at n = 1000.
    poly = sv.fit_adjustment_seed(1000)
    assert poly(0.8) > poly(0.9)


@pytest.mark.parametrize("n", [64, 256])
def test_fitted_adjustment_makes_the_seed_style_monotone(n):
    adjust = sv.fit_adjustment(n)
    grid = np.linspace(0, 1, 401)
    given = adjust(grid)
    assert np.all(np.diff(given) >= 0)
    real = [sv.bigbird_seed_style(n, float(s), adjust).achieved for s in grid]
    assert np.all(np.diff(real) >= 0)
    assert adjust.real[0] == 0 and np.all(np.diff(adjust.real) > 0)


def test_fitted_adjustment_beats_the_seed_polynomial_at_its_length():
    n = 300
    targets = np.linspace(0.3, 0.99, 24)
    fitted = sv.fit_adjustment(n)
    poly = sv.fit_adjustment_seed(n)
    err_fit = [abs(sv.bigbird_seed_style(n, float(s), fitted).error) for s in targets]
    err_poly = [abs(sv.bigbird_seed_style(n, float(s), poly).error) for s in targets]
    assert max(err_fit) < 0.01 < max(err_poly)


def test_fit_adjustment_bad_grid():
    with pytest.raises(ValueError, match="sparsity"):
        sv.fit_adjustment(20, grid=[0.0, 1.5])
    with pytest.raises(ValueError, match="grid"):
        sv.fit_adjustment(20, grid=[0.5])


# ------------------------------------------------------------------------------------------------
# Product rule
# ------------------------------------------------------------------------------------------------
def test_product_rule_split_multiplies_to_the_target():
    for s in (0.0, 0.3, 0.729, 0.99, 1.0):
        for split in ((1, 1, 1), (2, 1, 1), (0, 1, 3)):
            parts = sv.product_rule_split(s, split)
            assert np.prod(parts) == pytest.approx(s)
    assert sv.product_rule_split(0.5, (0, 1, 0)) == (1.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="split"):
        sv.product_rule_split(0.5, (0, 0, 0))


def test_product_rule_union_is_counted_exactly():
    n = 200
    for s in (0.3, 0.6, 0.9, 0.99):
        sol = sv.bigbird_product_rule(n, s, seed=1)
        dense = sk.bigbird(**sol.params).dense(n)
        assert sol.achieved == pytest.approx(1 - np.count_nonzero(dense) / n**2)
        same = sv.bigbird_seed_style(n, s, lambda t: t ** (1 / 3), seed=1)
        assert same.params == sol.params
        assert not sol.optimal and sol.method == "product rule"
        # Independent parts would give exactly s; the real union stays within a few points.
        assert abs(sol.error) < 0.05


def test_search_can_be_forced_and_local_is_never_better():
    for n in (12, 30):
        for s in (0.3, 0.7, 0.95):
            local = sv.bigbird_exact(n, s, search="local")
            best = sv.bigbird_exact(n, s, search="enumerate")
            assert local.method == "local search" and best.method == "enumeration"
            assert abs(best.error) <= abs(local.error) + 1e-15
    with pytest.raises(ValueError, match="search"):
        sv.bigbird_exact(12, 0.5, search="fast")

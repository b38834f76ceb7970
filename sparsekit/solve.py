"""From a target sparsity to exact pattern parameters.

A pattern family is usually described by an integer parameter (a window width, a block length, a
number of random keys per row), but what one budgets for is the *sparsity*, the fraction of masked
cells. This module inverts that relation exactly:

* closed forms for BigBird's three parts: random attention keeps ``nz_per_row`` keys in every row,
  the band of width ``w`` covers ``n (1 + 2h) - h (h + 1)`` cells with ``h = w // 2``, and ``g``
  global tokens cover ``2 g n - g**2`` cells; :func:`solve_random`, :func:`solve_window` and
  :func:`solve_global` invert them with the quadratic formula and then check the neighbours of the
  rounded root against the exact count;
* :func:`solve_parameter`, a generic inverse for any family whose number of non-zeros is monotone
  in one integer parameter, by binary search over sparsekit's exact counts;
* :func:`solve`, one entry point by family name;
* BigBird by its *total* sparsity, three ways: the seed project's way (:func:`bigbird_seed_style`,
  the same target for each part, optionally corrected by a map: the seed's polynomial
  :func:`fit_adjustment_seed`, not monotone, kept as history; the monotone :func:`fit_adjustment`),
  the product rule (:func:`bigbird_product_rule`, each part ``s ** (1/3)``), and an exact way
  (:func:`bigbird_exact`) that counts the union, overlaps included, and searches the integer
  parameters: every triple up to ``n = ENUMERATE_MAX_N`` (globally optimal), a local search above.

**Which parameter wins.** Every solver returns the parameter whose *exact* sparsity at length ``n``
is closest to the target. Distances are compared exactly, as fractions, so ties are real ties. On a
tie the **sparser** candidate (fewer non-zeros) wins; if two parameters give the same mask size,
the smaller parameter wins. BigBird's exact solver puts one rule between distance and sparsity:
the parts that follow the budget split more closely win (see :func:`bigbird_exact`).

**Targets out of reach.** A target must be a number in ``[0, 1]``; anything else (NaN included)
raises ``ValueError`` naming ``sparsity``. A target in ``[0, 1]`` that the family cannot reach (a
causal family is never denser than causal attention) is *clamped*: the closest achievable
parameter is the end of the family's range, and the :class:`Solution` says so in ``note``.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from typing import Any

import numpy as np

from ._validate import check_fraction, check_int, check_size
from .masks.local import block_local, dilated_sliding_window, sliding_window, window
from .masks.longrange import BigBird, bigbird, global_tokens, longformer, random
from .masks.sparse_transformer import fixed, strided
from .pattern import Pattern

_fixed_factory = fixed  # inside solve() the name ``fixed`` is its ``**fixed`` keywords

__all__ = [
    "PATTERNS",
    "Solution",
    "add_parser",
    "band_area",
    "Adjustment",
    "ENUMERATE_MAX_N",
    "bigbird_exact",
    "bigbird_product_rule",
    "bigbird_seed_style",
    "fit_adjustment",
    "fit_adjustment_seed",
    "product_rule_split",
    "global_area",
    "main",
    "random_nz_per_row",
    "solve",
    "solve_global",
    "solve_parameter",
    "solve_random",
    "solve_window",
]

#: Family names understood by :func:`solve` and ``python -m sparsekit solve --pattern``.
PATTERNS = (
    "random",
    "window",
    "global",
    "strided",
    "fixed",
    "sliding_window",
    "dilated_sliding_window",
    "longformer",
    "block_local",
    "bigbird",
)

_FACTORIES: dict[str, Callable[..., Pattern]] = {
    "random": random,
    "window": window,
    "global_tokens": global_tokens,
    "strided": strided,
    "fixed": fixed,
    "sliding_window": sliding_window,
    "dilated_sliding_window": dilated_sliding_window,
    "longformer": longformer,
    "block_local": block_local,
    "bigbird": bigbird,
}


@dataclass(frozen=True)
class Solution:
    """The parameters chosen for a target sparsity, and the exact sparsity they give.

    Attributes
    ----------
    pattern_name : str
        The sparsekit factory, e.g. ``"window"`` or ``"bigbird"``.
    params : dict
        Keyword arguments of that factory (the solved parameter and the fixed ones).
    target : float
        The sparsity asked for, in ``[0, 1]``.
    achieved : float
        The exact sparsity of ``pattern().sparsity(n)``.
    error : float
        ``achieved - target`` (negative: denser than asked).
    n : int
        The sequence length the parameters were solved for.
    note : str
        Empty, or why the target could not be approached more closely (clamped to the end of the
        family's range).
    optimal : bool
        ``True`` when no other parameter of the searched set ranks better (every single-parameter
        solver, and :func:`bigbird_exact` when it enumerates); ``False`` for a local optimum or a
        rule that does not search (seed style, product rule).
    method : str
        How the parameters were found, e.g. ``"closed form"``, ``"enumeration"``, ``"local search"``.
    """

    pattern_name: str
    params: dict
    target: float
    achieved: float
    error: float
    n: int = 0
    note: str = field(default="", compare=False)
    optimal: bool = field(default=True, compare=False)
    method: str = field(default="", compare=False)

    def pattern(self) -> Pattern:
        """The sparsekit pattern these parameters describe (random parts bound to ``n``)."""
        p = _FACTORIES[self.pattern_name](**self.params)
        return p.bind(self.n) if self.n else p

    def describe(self) -> str:
        """One line: ``window(diagonal_width=41) at n=1024: sparsity 96.0413% (error +0.0413%)``."""
        args = ", ".join(f"{k}={v}" for k, v in self.params.items())
        return (
            f"{self.pattern_name}({args}) at n={self.n}: sparsity {self.achieved:.4%} "
            f"(target {self.target:.4%}, error {self.error:+.4%})"
        )


# --------------------------------------------------------------------------------------------------
# Exact comparison of candidates
# --------------------------------------------------------------------------------------------------
def _target_nnz(n: int, sparsity: float) -> Fraction:
    """The ideal number of non-zeros, ``(1 - sparsity) * n**2``, as an exact fraction."""
    return (1 - Fraction(sparsity)) * n * n


def _rank(nnz: int, goal: Fraction, params: tuple) -> tuple:
    """Sort key of a candidate: distance to the goal, then fewer non-zeros, then smaller params."""
    return (abs(nnz - goal), nnz, params)


def _solution(name: str, params: dict, n: int, sparsity: float, nnz: int, note: str = "") -> Solution:
    achieved = (n * n - nnz) / (n * n)
    return Solution(name, dict(params), sparsity, achieved, achieved - sparsity, n, note)


def _clamp_note(best_nnz: int, goal: Fraction, lowest: int, highest: int, n: int) -> str:
    if goal > highest and best_nnz == highest:
        return f"target denser than the family allows at n={n}: clamped to its densest mask"
    if goal < lowest and best_nnz == lowest:
        return f"target sparser than the family allows at n={n}: clamped to its sparsest mask"
    return ""


# --------------------------------------------------------------------------------------------------
# Closed forms
# --------------------------------------------------------------------------------------------------
def random_nz_per_row(n: int, sparsity: float) -> int:
    """Random keys per row for a target sparsity: ``round(n * (1 - sparsity))``.

    Each row keeps exactly ``nz_per_row`` of ``n`` keys, so the sparsity is ``1 - nz_per_row / n``
    and this rounding is already the closest achievable value (Python rounds halves to even).

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    sparsity : float
        Target fraction of masked cells; in ``[0, 1]``.
    """
    n = check_size(n)
    sparsity = check_fraction("sparsity", sparsity)
    return round(n * (1 - sparsity))


def band_area(n: int, diagonal_width: int) -> int:
    """Cells of BigBird's band :func:`~sparsekit.window` at length ``n``.

    With ``h = min(diagonal_width // 2, n - 1)`` the band holds ``n (1 + 2h) - h (h + 1)`` cells
    (the diagonal plus ``2h`` off-diagonals, less the two corner triangles of ``h (h + 1) / 2``
    cells each); width 0 holds none. Once ``h`` reaches ``n - 1`` the band is the full matrix.

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    diagonal_width : int
        Band width; ``>= 0``.
    """
    n = check_size(n)
    diagonal_width = check_int("diagonal_width", diagonal_width, low=0)
    if diagonal_width == 0:
        return 0
    h = min(diagonal_width // 2, n - 1)
    return n * (1 + 2 * h) - h * (h + 1)


def global_area(n: int, global_width: int) -> int:
    """Cells of ``g`` global tokens at length ``n``: ``2 g n - g**2`` (``g`` rows plus ``g`` columns).

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    global_width : int
        Number of leading global tokens; in ``[0, n]``.
    """
    n = check_size(n)
    g = check_int("global_width", global_width, low=0, high=n)
    return 2 * g * n - g * g


def _closest(name: str, key: str, n: int, sparsity: float, candidates, count) -> Solution:
    goal = _target_nnz(n, sparsity)
    scored = [(_rank(count(c), goal, (c,)), c) for c in sorted(set(candidates))]
    (_, nnz, _), best = min(scored)
    pattern = _FACTORIES[name](**{key: best}) if name != "random" else random(best, 0, n)
    exact = pattern.nnz(n)
    if exact != nnz:  # the closed form and sparsekit's exact count must agree
        raise AssertionError(f"{name}: closed form {nnz} != exact count {exact} at n={n}")
    return nnz, best


def solve_random(n: int, sparsity: float, seed: int = 0) -> Solution:
    """Random attention for a target sparsity: the ``nz_per_row`` closest to it.

    Every row keeps exactly ``nz_per_row`` keys, so sparsity ``1 - k / n`` is reached for every
    ``k`` in ``[0, n]``: the target is never out of range, only rounded to a multiple of ``1 / n``.
    On a tie (the target exactly halfway) the sparser, smaller ``k`` wins.

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    sparsity : float
        Target fraction of masked cells; in ``[0, 1]``.
    seed : int
        Seed of the random draw, kept in the solution's parameters.

    Returns
    -------
    Solution
        ``params = {"nz_per_row": k, "seed": seed, "size": n}``.
    """
    n = check_size(n)
    sparsity = check_fraction("sparsity", sparsity)
    seed = check_int("seed", seed, low=0)
    k0 = random_nz_per_row(n, sparsity)
    candidates = [min(n, max(0, k)) for k in (k0 - 1, k0, k0 + 1)]
    nnz, k = _closest("random", "nz_per_row", n, sparsity, candidates, lambda k: k * n)
    return _solution("random", {"nz_per_row": k, "seed": seed, "size": n}, n, sparsity, nnz)


def _half_width_root(n: int, area: float) -> float:
    """Smaller root ``h`` of ``n (1 + 2h) - h (h + 1) = area``, i.e. of ``h^2 + (1 - 2n) h + area - n``."""
    disc = 4.0 * n * n - 4.0 * area + 1.0  # (2n - 1)^2 - 4 (area - n)
    return ((2 * n - 1) - math.sqrt(max(disc, 0.0))) / 2


def solve_window(n: int, sparsity: float) -> Solution:
    """BigBird's band for a target sparsity: the ``diagonal_width`` closest to it.

    The ideal area ``a = (1 - sparsity) n**2`` is inverted with the quadratic formula,
    ``h = ((2n - 1) - sqrt(4 n**2 s + 1)) / 2`` (``s`` the sparsity); the half-widths around the
    root and the empty band (width 0) are then compared by their exact counts. Widths ``2h`` and
    ``2h + 1`` give the same band, so the odd width ``2h + 1``, the band's real width, is returned.
    The band reaches every sparsity from 1 (width 0) to 0 (``h = n - 1``), so only rounding limits
    the result; on a tie the sparser band wins.

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    sparsity : float
        Target fraction of masked cells; in ``[0, 1]``.

    Returns
    -------
    Solution
        ``params = {"diagonal_width": w}`` with ``w`` 0 or odd, at most ``2n - 1``.
    """
    n = check_size(n)
    sparsity = check_fraction("sparsity", sparsity)
    root = _half_width_root(n, (1 - sparsity) * n * n)
    base = math.floor(root)
    halves = [min(n - 1, max(0, h)) for h in range(base - 1, base + 3)]
    candidates = [0] + [2 * h + 1 for h in halves]
    nnz, w = _closest("window", "diagonal_width", n, sparsity, candidates, lambda w: band_area(n, w))
    return _solution("window", {"diagonal_width": w}, n, sparsity, nnz)


def solve_global(n: int, sparsity: float) -> Solution:
    """Global tokens for a target sparsity: the ``width`` closest to it.

    ``2 g n - g**2 = a`` with ``a = (1 - sparsity) n**2`` has the root ``g = n (1 - sqrt(sparsity))``
    in ``[0, n]``; its neighbours are compared by their exact counts, and on a tie the sparser (smaller
    ``g``) wins. Widths ``0 .. n`` reach every sparsity from 1 to 0.

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    sparsity : float
        Target fraction of masked cells; in ``[0, 1]``.

    Returns
    -------
    Solution
        ``pattern_name = "global_tokens"``, ``params = {"width": g}``.
    """
    n = check_size(n)
    sparsity = check_fraction("sparsity", sparsity)
    root = n * (1 - math.sqrt(sparsity))
    base = math.floor(root)
    candidates = [min(n, max(0, g)) for g in range(base - 1, base + 3)]
    nnz, g = _closest("global_tokens", "width", n, sparsity, candidates, lambda g: global_area(n, g))
    return _solution("global_tokens", {"width": g}, n, sparsity, nnz)


# --------------------------------------------------------------------------------------------------
# Generic monotone inverse
# --------------------------------------------------------------------------------------------------
def solve_parameter(
    factory: Callable[..., Pattern],
    param_name: str,
    n: int,
    target: float,
    low: int,
    high: int,
    **fixed: Any,
) -> Solution:
    """Invert any family whose number of non-zeros is monotone in one integer parameter.

    ``factory(**{param_name: p}, **fixed)`` is counted exactly with ``Pattern.nnz(n)`` (closed form
    for the structured families), and a binary search over ``p`` in ``[low, high]`` finds the two
    mask sizes on either side of the ideal ``(1 - target) n**2``; the closer wins, the sparser on a
    tie, and for a mask size reached by several ``p`` the smallest ``p``. The direction (density
    increasing or decreasing in ``p``) is read from the two ends of the range. About
    ``3 log2(high - low)`` counts are made, so ``n = 2**20`` takes a fraction of a second for the
    closed-form families.

    Parameters
    ----------
    factory : callable
        A sparsekit factory such as :func:`~sparsekit.strided`.
    param_name : str
        Its keyword to solve for, e.g. ``"window"``.
    n : int
        Sequence length; ``>= 1``.
    target : float
        Target sparsity; in ``[0, 1]``.
    low, high : int
        Range of the parameter, ``low <= high``; density must be monotone over it.
    **fixed
        The factory's other keyword arguments.

    Returns
    -------
    Solution
        Targets outside the range's sparsities are clamped to its end (see ``note``).

    Raises
    ------
    ValueError
        For a bad target, range or length, and when the two ends and the middle show the density
        is not monotone (equal ends around a different middle).
    """
    n = check_size(n)
    target = check_fraction("sparsity", target)
    low = check_int("low", low)
    high = check_int("high", high, low=low)
    name = getattr(factory, "__name__", "pattern")
    cache: dict[int, int] = {}

    def count(p: int) -> int:
        if p not in cache:
            cache[p] = factory(**{param_name: p}, **fixed).nnz(n)
        return cache[p]

    goal = _target_nnz(n, target)
    f_low, f_high = count(low), count(high)
    if f_low == f_high and count((low + high) // 2) != f_low:
        raise ValueError(
            f"{name}: density is not monotone in {param_name} over [{low}, {high}] "
            f"(equal at both ends, different in the middle); pass a range where it is"
        )
    sign = 1 if f_high >= f_low else -1  # key(p) = sign * nnz(p) is non-decreasing in p

    def first_at_least(key: Fraction | int) -> int | None:
        """Smallest p with sign * count(p) >= key, or None."""
        if sign * count(high) < key:
            return None
        lo, hi = low, high
        while lo < hi:
            mid = (lo + hi) // 2
            if sign * count(mid) >= key:
                hi = mid
            else:
                lo = mid + 1
        return lo

    candidates = []
    p = first_at_least(sign * goal)
    if p is None:
        candidates.append(first_at_least(sign * count(high)))
    else:
        candidates.append(p)
        if p > low:
            candidates.append(first_at_least(sign * count(p - 1)))
    (_, nnz, _), best = min((_rank(count(c), goal, (c,)), c) for c in candidates)
    note = _clamp_note(nnz, goal, min(f_low, f_high), max(f_low, f_high), n)
    params = {param_name: best, **fixed}
    return _solution(name, params, n, target, nnz, note)


def _argmin_unimodal(count: Callable[[int], int], low: int, high: int) -> int:
    """A minimiser of a unimodal integer function on ``[low, high]`` (ternary search, then a scan)."""
    lo, hi = low, high
    while hi - lo > 8:
        m1, m2 = lo + (hi - lo) // 3, hi - (hi - lo) // 3
        if count(m1) <= count(m2):
            hi = m2
        else:
            lo = m1
    return min(range(lo, hi + 1), key=lambda p: (count(p), p))


def _solve_two_branches(factory, param_name, n, target, low, high, **fixed) -> Solution:
    """Density falls then rises (fixed attention's block): solve each monotone branch, keep the best."""
    cache: dict[int, int] = {}

    def count(p: int) -> int:
        if p not in cache:
            cache[p] = factory(**{param_name: p}, **fixed).nnz(n)
        return cache[p]

    m = _argmin_unimodal(count, low, high)
    goal = _target_nnz(n, target)
    branches = [
        solve_parameter(factory, param_name, n, target, lo, hi, **fixed) for lo, hi in ((low, m), (m, high))
    ]
    best = min(
        branches,
        key=lambda s: _rank(round((1 - s.achieved) * n * n), goal, (s.params[param_name],)),
    )
    f_min, f_max = count(m), max(count(low), count(high))
    note = _clamp_note(round((1 - best.achieved) * n * n), goal, f_min, f_max, n)
    return Solution(best.pattern_name, best.params, best.target, best.achieved, best.error, n, note)


# --------------------------------------------------------------------------------------------------
# BigBird
# --------------------------------------------------------------------------------------------------
def _bigbird_solution(n, sparsity, k, w, g, seed, nnz, note="", optimal=False, method="") -> Solution:
    params = {"nz_per_row": k, "diagonal_width": w, "global_width": g, "seed": seed}
    return replace(_solution("bigbird", params, n, sparsity, nnz, note), optimal=optimal, method=method)


def _as_adjust(adjust: Any) -> Callable[[float], float] | None:
    if adjust is None or callable(adjust):
        return adjust
    coefficients = np.asarray(adjust, dtype=float)
    if coefficients.ndim != 1 or coefficients.size == 0:
        raise ValueError("adjust must be a callable, an np.poly1d or a 1-d sequence of coefficients")
    return np.poly1d(coefficients)


def _solve_parts(n: int, given: Sequence[float], seed: int) -> tuple[int, int, int]:
    """Random, band and global parameters, each solved on its own for its given sparsity."""
    k = solve_random(n, given[0], seed).params["nz_per_row"]
    w = solve_window(n, given[1]).params["diagonal_width"]
    g = solve_global(n, given[2]).params["width"]
    return k, w, g


def bigbird_seed_style(n: int, sparsity: float, adjust: Any = None, seed: int = 0) -> Solution:
    """BigBird as the seed project builds it: the same target sparsity for each of the three parts.

    The given sparsity ``s' = adjust(sparsity)`` (clipped to ``[0, 1]``; ``s' = sparsity`` without
    ``adjust``) is handed to :func:`solve_random`, :func:`solve_window` and :func:`solve_global`
    separately, and the three parts are united. The union is denser than each part, so without a
    correction the real sparsity falls short of the target; ``adjust`` corrects that:
    :func:`fit_adjustment`, ``lambda s: s ** (1 / 3)`` (the product rule, see
    :func:`product_rule_split`) or the seed's polynomial from :func:`fit_adjustment_seed`.
    ``achieved`` is the union's exact sparsity; nothing is searched, so ``optimal`` is ``False``.

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    sparsity : float
        Target total sparsity; in ``[0, 1]``.
    adjust : callable, np.poly1d or sequence of float, optional
        Map from the target to the sparsity given to each part (coefficients highest power first).
    seed : int
        Seed of the random part.
    """
    n = check_size(n)
    sparsity = check_fraction("sparsity", sparsity)
    seed = check_int("seed", seed, low=0)
    fn = _as_adjust(adjust)
    given = sparsity if fn is None else min(1.0, max(0.0, float(fn(sparsity))))
    k, w, g = _solve_parts(n, (given,) * 3, seed)
    nnz = bigbird(k, w, g, seed, size=n).nnz(n)
    note = "" if fn is None else f"each part given sparsity {given:.4%}"
    return _bigbird_solution(n, sparsity, k, w, g, seed, nnz, note, method="seed style")


def _check_grid(grid: Sequence[float] | None, default: int) -> np.ndarray:
    values = np.linspace(0.0, 1.0, default) if grid is None else np.asarray(grid, dtype=float).ravel()
    for s in values:
        check_fraction("sparsity", float(s))
    if values.size < 2:
        raise ValueError(f"grid must hold at least 2 sparsities, got {values.size}")
    return np.sort(values)


def fit_adjustment_seed(
    n: int, degree: int = 5, grid: Sequence[float] | None = None, seed: int = 0
) -> np.poly1d:
    """The seed project's correction: a polynomial ``given = adjust(real)`` fitted by least squares.

    For every given sparsity ``s'`` of ``grid`` (default ``0, 0.05, ..., 1``) the seed-style BigBird
    (:func:`bigbird_seed_style` without adjustment) is built and its exact real sparsity measured;
    ``np.polyfit(real, given, degree)`` then maps a wanted real sparsity to the sparsity to give
    each part. Kept as history: the given sparsities up to about 0.25 all give real sparsity 0, so
    the fit sees many ``given`` values at one ``real`` and the curve is **not monotone** (asking for
    a sparser union can give a denser one). :func:`fit_adjustment` is the monotone replacement.

    Parameters
    ----------
    n : int
        Length to fit at; ``>= 1``.
    degree : int
        Polynomial degree; in ``[1, len(grid) - 1]``.
    grid : sequence of float, optional
        Given sparsities, each in ``[0, 1]``, at least 2.
    seed : int
        Seed of the random part.

    Returns
    -------
    np.poly1d
        ``adjust``; ``adjust.coefficients`` lists them highest power first.
    """
    n = check_size(n)
    given = _check_grid(grid, 21)
    degree = check_int("degree", degree, low=1, high=max(1, given.size - 1))
    real = [bigbird_seed_style(n, float(s), None, seed).achieved for s in given]
    return np.poly1d(np.polyfit(np.asarray(real), given, degree))


def _isotonic(values: np.ndarray) -> np.ndarray:
    """Least-squares non-decreasing fit of ``values`` (pool adjacent violators, equal weights)."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run
    for v in values:
        blocks.append([float(v), 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return np.concatenate([np.full(int(c), t / c) for t, c in blocks])


@dataclass(frozen=True, eq=False)
class Adjustment:
    """A monotone map from the wanted real sparsity to the sparsity given to each BigBird part.

    Built by :func:`fit_adjustment`; calling it interpolates linearly between the knots
    (``numpy.interp``; clamped at the ends), so it is non-decreasing.

    Attributes
    ----------
    real : numpy.ndarray
        Real (union) sparsities of the knots, strictly increasing, starting at 0.
    given : numpy.ndarray
        Sparsity given to each part at each knot, non-decreasing.
    n : int
        The length it was fitted at.
    """

    real: np.ndarray
    given: np.ndarray
    n: int

    def __call__(self, sparsity: Any) -> Any:
        """The sparsity to give each part for a wanted real sparsity (scalar or array)."""
        return np.interp(sparsity, self.real, self.given)


def fit_adjustment(n: int, grid: Sequence[float] | None = None, seed: int = 0) -> Adjustment:
    """A monotone correction for :func:`bigbird_seed_style`, fitted at length ``n``.

    For every given sparsity of ``grid`` (default ``0, 0.01, ..., 1``) the seed-style union is
    built and its exact real sparsity measured. Real sparsity grows with the given one up to the
    noise of the random draws, so the measured curve is first made non-decreasing (isotonic
    regression); then only the points with real sparsity ``> 0`` are kept, with one anchor
    ``(0, g0)``, ``g0`` the largest given sparsity whose real sparsity is 0 (0 if none), and knots
    of equal real sparsity are merged (mean of their given ones). The inverse is the linear
    interpolation between the knots, so ``adjust`` is non-decreasing and
    ``bigbird_seed_style(n, s, adjust)`` gets sparser as ``s`` grows (up to the random draws).

    Parameters
    ----------
    n : int
        Length to fit at; ``>= 1``.
    grid : sequence of float, optional
        Given sparsities, each in ``[0, 1]``, at least 2.
    seed : int
        Seed of the random part.

    Returns
    -------
    Adjustment
        A callable ``adjust(s)``.
    """
    n = check_size(n)
    given = _check_grid(grid, 101)
    seed = check_int("seed", seed, low=0)
    real = _isotonic(np.array([bigbird_seed_style(n, float(s), None, seed).achieved for s in given]))
    zero = real <= 0
    anchor = float(given[zero].max()) if zero.any() else 0.0
    xs, inverse = np.unique(np.concatenate([[0.0], real[~zero]]), return_inverse=True)
    ys = np.bincount(inverse, weights=np.concatenate([[anchor], given[~zero]])) / np.bincount(inverse)
    return Adjustment(real=xs, given=np.maximum.accumulate(ys), n=n)


def product_rule_split(sparsity: float, split: Sequence[float] = (1, 1, 1)) -> tuple[float, float, float]:
    """Sparsities for the three parts whose product is ``sparsity``: ``s ** share`` each.

    A cell is masked in the union only when every part masks it. If the parts placed their cells
    independently, the union's sparsity would be the product of the parts' sparsities; giving
    part ``i`` the sparsity ``s ** f_i`` with shares ``f_i`` summing to 1 (``split`` normalised)
    makes that product ``s``. Equal shares give ``s ** (1/3)`` each.

    Parameters
    ----------
    sparsity : float
        Target union sparsity; in ``[0, 1]``.
    split : sequence of float
        Shares of the random, window and global parts; each ``>= 0``, positive sum.

    Returns
    -------
    tuple of float
        Sparsities to give the random, window and global parts.

    Examples
    --------
    >>> from sparsekit.solve import product_rule_split
    >>> [round(s, 4) for s in product_rule_split(0.729)]
    [0.9, 0.9, 0.9]
    """
    sparsity = check_fraction("sparsity", sparsity)
    shares = _check_split(split)
    return tuple(sparsity**f for f in shares)


def bigbird_product_rule(
    n: int, sparsity: float, split: Sequence[float] = (1, 1, 1), seed: int = 0
) -> Solution:
    """BigBird by the product rule: each part solved for its :func:`product_rule_split` sparsity.

    No fit and no search: the parts are solved on their own (:func:`solve_random`,
    :func:`solve_window`, :func:`solve_global`) and united; ``achieved`` is the union's exact
    sparsity. The random keys fall on the band and the globals about as often as independence
    predicts, but the band and the globals overlap in their corner, so the union is a little
    sparser than the product predicts.

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    sparsity : float
        Target union sparsity; in ``[0, 1]``.
    split : sequence of float
        Shares of the random, window and global parts; each ``>= 0``, positive sum.
    seed : int
        Seed of the random part.
    """
    n = check_size(n)
    seed = check_int("seed", seed, low=0)
    given = product_rule_split(sparsity, split)
    k, w, g = _solve_parts(n, given, seed)
    nnz = bigbird(k, w, g, seed, size=n).nnz(n)
    return _bigbird_solution(n, sparsity, k, w, g, seed, nnz, method="product rule")


def _check_split(split: Sequence[float]) -> tuple[float, float, float]:
    try:
        parts = tuple(float(x) for x in split)
    except (TypeError, ValueError):
        raise ValueError(f"split must be three numbers (random, window, global), got {split!r}") from None
    if len(parts) != 3 or any(math.isnan(x) or x < 0 for x in parts) or sum(parts) <= 0:
        raise ValueError(
            f"split must be three numbers >= 0 (random, window, global) with a positive sum, got {split!r}"
        )
    total = sum(parts)
    return parts[0] / total, parts[1] / total, parts[2] / total


def _exact_shares(split: Sequence[float]) -> tuple[Fraction, Fraction, Fraction]:
    """The normalised split as exact fractions (``(1, 1, 1)`` gives exactly ``1/3`` each)."""
    _check_split(split)
    parts = [Fraction(float(x)) for x in split]
    return tuple(p / sum(parts) for p in parts)


def _split_deviation(areas: Sequence[int], goal: Fraction, shares: Sequence[Fraction]) -> Fraction:
    """How far the parts' own cell counts are from their shares of the goal: ``sum |A_i - f_i goal|``."""
    return sum((abs(a - f * goal) for a, f in zip(areas, shares, strict=True)), Fraction(0))


#: Longest length at which :func:`bigbird_exact` enumerates every parameter triple.
ENUMERATE_MAX_N = 256


def _suffix_counts(dist: np.ndarray, first: np.ndarray, n: int) -> np.ndarray:
    """``S[a, g]``: cells with ``|i - j| >= a`` and ``min(i, j) >= g``, for ``a, g`` in ``[0, n]``."""
    hist = np.zeros((n + 1, n + 1), dtype=np.int64)
    hist[:n, :n] = np.bincount((dist * n + first).ravel(), minlength=n * n).reshape(n, n)
    return hist[::-1, ::-1].cumsum(0).cumsum(1)[::-1, ::-1]


def _enumerate_bigbird(n: int, goal: Fraction, shares, seed: int) -> tuple[int, int, int, int]:
    """The best ``(k, w, g)`` over every triple the split allows, and its union size.

    Band widths ``0, 1, 3, ..., 2n - 1`` (``w = 2h + 1`` and ``2h + 2`` give the same band) are
    indexed by ``a``, the smallest distance *outside* the band: ``a = 0`` for no band, else
    ``a = h + 1``. A cell lies outside the band and the globals when ``|i - j| >= a`` and
    ``min(i, j) >= g``; with ``S[a, g]`` those counts, the union of the three parts holds
    ``n**2 - S_all[a, g] + S_random[a, g]`` cells.
    """
    rows = np.arange(n, dtype=np.int64)[:, None]
    cols = np.arange(n, dtype=np.int64)[None, :]
    outside_all = _suffix_counts(np.abs(rows - cols), np.minimum(rows, cols), n)
    ks = range(n + 1) if shares[0] > 0 else (0,)
    a_values = np.arange(n + 1) if shares[1] > 0 else np.zeros(1, dtype=np.int64)
    g_values = np.arange(n + 1) if shares[2] > 0 else np.zeros(1, dtype=np.int64)
    base = n * n - outside_all[np.ix_(a_values, g_values)]
    # Own cell counts of the band and the globals, for the split deviation (step 2 of the rank).
    half = a_values - 1
    band = np.where(a_values > 0, n * (1 + 2 * half) - half * (half + 1), 0)
    glob = 2 * g_values * n - g_values**2
    target = [float(f * goal) for f in shares]
    dev_wg = np.abs(band - target[1])[:, None] + np.abs(glob - target[2])[None, :]
    goal_f = float(goal)
    best_nnz, found = None, []  # the closest size so far, and (k, a index, g index) reaching it
    for k in ks:
        table = random(k, seed, size=n).table
        extra = _suffix_counts(np.abs(rows - table), np.minimum(rows, table), n)
        union = base + extra[np.ix_(a_values, g_values)]
        # The slice's closest size, decided exactly among the sizes within one cell of the float best.
        gap = np.abs(union - goal_f)
        near = np.unique(union[gap <= gap.min() + 1])
        size = min((int(v) for v in near), key=lambda v: (abs(v - goal), v))
        if best_nnz is not None and (abs(size - goal), size) > (abs(best_nnz - goal), best_nnz):
            continue
        if best_nnz is None or size != best_nnz:
            best_nnz, found = size, []
        hit = union == size
        dev = (dev_wg + abs(k * n - target[0]))[hit]
        ai, gi = np.nonzero(hit)
        keep = dev <= dev.min() + 1e-6 * (1 + goal_f)  # float prefilter; exact comparison below
        found += [(k, int(a), int(g)) for a, g in zip(ai[keep], gi[keep], strict=True)]
    best = None
    for k, ai, gi in found:
        a, g = int(a_values[ai]), int(g_values[gi])
        w = 2 * a - 1 if a > 0 else 0
        areas = (k * n, band_area(n, w), global_area(n, g))
        key = (_split_deviation(areas, goal, shares), (k, w, g))
        if best is None or key < best:
            best = key
    k, w, g = best[1]
    return k, w, g, best_nnz


def bigbird_exact(
    n: int,
    sparsity: float,
    split: Sequence[float] = (1 / 3, 1 / 3, 1 / 3),
    seed: int = 0,
    search: str = "auto",
) -> Solution:
    """BigBird with an exact total sparsity: the union is counted, overlaps included.

    The split ``(r, w, g)`` is **normalised** to shares ``f`` that sum to 1 (``(1, 1, 1)`` and
    ``(1/3, 1/3, 1/3)`` are the same split); a part whose share is 0 stays off. Candidates are
    ranked by

    1. the distance of the union's exact size to the ideal ``(1 - sparsity) n**2`` cells;
    2. then how well the parts follow the split: ``sum_i |A_i - f_i (1 - sparsity) n**2|`` with
       ``A_i`` each part's own cell count (``k n``, the band's and the globals' areas);
    3. then the sparser mask, then the smaller ``(nz_per_row, diagonal_width, global_width)``.

    With ``search="auto"``, up to ``n = ENUMERATE_MAX_N`` every triple is counted (one random
    draw per ``nz_per_row``, counted against every band and global width at once): the **global**
    optimum: ``optimal=True``, ``method="enumeration"``. Above it the band and the globals are
    solved for their shares, the random part fills what is left (estimated from the free cells
    per row, then walked along exact counts), and a local search moves the three integers (one
    step each, several at once) while that brings the mask closer (or, as close, sparser): a
    local optimum,
    ``optimal=False``, ``method="local search"``. Every target in ``[0, 1]`` is reachable up to
    the integer steps, so nothing is clamped.

    Parameters
    ----------
    n : int
        Sequence length; ``>= 1``.
    sparsity : float
        Target total sparsity; in ``[0, 1]``.
    split : sequence of float
        Budget shares of the random, window and global parts; each ``>= 0``, positive sum.
    seed : int
        Seed of the random part.
    search : {"auto", "enumerate", "local"}
        ``"auto"`` enumerates up to ``ENUMERATE_MAX_N``; the others force one method (enumerating
        costs about ``n**3`` operations).
    """
    n = check_size(n)
    sparsity = check_fraction("sparsity", sparsity)
    seed = check_int("seed", seed, low=0)
    if search not in ("auto", "enumerate", "local"):
        raise ValueError(f"search must be one of auto, enumerate, local; got {search!r}")
    fr, fw, fg = _check_split(split)
    shares = _exact_shares(split)
    goal = _target_nnz(n, sparsity)
    if search == "enumerate" or (search == "auto" and n <= ENUMERATE_MAX_N):
        k, w, g, nnz = _enumerate_bigbird(n, goal, shares, seed)
        if nnz != bigbird(k, w, g, seed, size=n).nnz(n):
            raise AssertionError(f"bigbird enumeration count {nnz} != union count at n={n}")
        return _bigbird_solution(n, sparsity, k, w, g, seed, nnz, optimal=True, method="enumeration")
    density = 1 - sparsity
    w = solve_window(n, 1 - fw * density).params["diagonal_width"] if fw > 0 else 0
    g = solve_global(n, 1 - fg * density).params["width"] if fg > 0 else 0

    randoms: dict[int, Pattern] = {}
    bases: dict[tuple[int, int], int] = {}
    counts: dict[tuple[int, int, int], int] = {}
    query = np.arange(n, dtype=np.int64)[:, None]

    def count(k: int, w: int, g: int) -> int:
        """Exact union size. The random part is drawn once per k (the draw depends on (seed, n, k)
        only, so it is sk.bigbird's own draw); a random cell adds to the band and the globals
        exactly when it lies outside both: |i - j| > h and min(i, j) >= g."""
        key = (k, w, g)
        if key not in counts:
            if k not in randoms:
                # Keep the draws within about 256 MiB (an n x k table each), oldest out first.
                while randoms and 8 * n * (k + sum(randoms)) > 1 << 28:
                    del randoms[next(iter(randoms))]
                randoms[k] = random(k, seed, size=n)
            if (w, g) not in bases:
                bases[(w, g)] = (window(w) | global_tokens(g)).nnz(n)
            table = randoms[k].table
            half = w // 2 if w > 0 else -1
            outside = (np.abs(query - table) > half) & (np.minimum(query, table) >= g)
            counts[key] = bases[(w, g)] + int(np.count_nonzero(outside))
        return counts[key]

    def rank(c: tuple[int, int, int]) -> tuple:
        nnz = count(*c)
        areas = (c[0] * n, band_area(n, c[1]), global_area(n, c[2]))
        return (abs(nnz - goal), _split_deviation(areas, goal, shares), nnz, c)

    k = 0
    if fr > 0:
        # Expected union size for k random keys: fixed cells plus k * (free cells per row / n).
        base = window(w) | global_tokens(g)
        rows = base.row_counts(n)
        fixed_cells = int(rows.sum())
        free = float(np.sum(n - rows)) / n
        k_est = 0 if free <= 0 else int(round(float(goal - fixed_cells) / free))
        k = min(n, max(0, k_est))
        # Walk k towards the target along the exact counts (density grows with k on average).
        best = min(((kk, w, g) for kk in {max(0, k - 1), k, min(n, k + 1)}), key=rank)
        k = best[0]
        for step in (1, -1):
            while 0 <= k + step <= n and rank((k + step, w, g)) < rank((k, w, g)):
                k += step

    k_steps = (-1, 0, 1) if fr > 0 else (0,)
    w_steps = (-2, 0, 2) if fw > 0 else (0,)
    g_steps = (-1, 0, 1) if fg > 0 else (0,)
    steps = [(a, b, c) for a in k_steps for b in w_steps for c in g_steps if (a, b, c) != (0, 0, 0)]

    def descend(current: tuple[int, int, int]) -> tuple[int, int, int]:
        for _ in range(4 * n + 16):  # each move strictly improves the rank, so this ends early
            neighbours = []
            for dk, dw, dg in steps:
                kk, ww, gg = current[0] + dk, current[1] + dw, current[2] + dg
                if ww == -1:  # from width 1 (diagonal only) down to the empty band
                    ww = 0
                elif current[1] == 0 and dw > 0:
                    ww = 1
                if 0 <= kk <= n and 0 <= ww <= 2 * n - 1 and 0 <= gg <= n:
                    neighbours.append((kk, ww, gg))
            best = min(neighbours, key=rank, default=current)
            # Move only for a closer (or, as close, sparser) mask: equal masks that follow the split
            # better would walk a long plateau (at sparsity 0 every part can shrink).
            (d_best, _, nnz_best, _), (d_now, _, nnz_now, _) = rank(best), rank(current)
            if (d_best, nnz_best) >= (d_now, nnz_now):
                break
            current = best
        return current

    k, w, g = descend((k, w, g))
    # The chosen mask counted by sparsekit's union engine: the same parts as sk.bigbird(k, w, g, seed,
    # size=n), with the random part already drawn.
    params = {"nz_per_row": k, "diagonal_width": w, "global_width": g, "seed": seed}
    nnz = BigBird(
        randoms[k] if k in randoms else random(k, seed, size=n), window(w), global_tokens(g), **params
    ).nnz(n)
    if nnz != count(k, w, g):
        raise AssertionError(f"bigbird union count {nnz} != search count {count(k, w, g)}")
    return _bigbird_solution(n, sparsity, k, w, g, seed, nnz, method="local search")


# --------------------------------------------------------------------------------------------------
# Dispatch by name
# --------------------------------------------------------------------------------------------------
def solve(pattern_name: str, n: int, sparsity: float, **fixed: Any) -> Solution:
    """Solve the named family's free parameter for a target sparsity at length ``n``.

    ======================== =================== ===============================================
    ``pattern_name``         solved parameter    fixed keywords (default)
    ======================== =================== ===============================================
    random                   nz_per_row          seed (0)
    window                   diagonal_width
    global                   width
    strided                  window              stride (required)
    fixed                    block               summary (1)
    sliding_window           window
    dilated_sliding_window   window              dilation (required)
    longformer               window              global_width (0)
    block_local              block
    bigbird                  all three           split ((1/3, 1/3, 1/3)), seed (0)
    ======================== =================== ===============================================

    Parameters
    ----------
    pattern_name : str
        One of :data:`PATTERNS`.
    n : int
        Sequence length; ``>= 1``.
    sparsity : float
        Target sparsity; in ``[0, 1]``.
    **fixed
        The family's fixed parameters, as in the table.

    Returns
    -------
    Solution
        The closest exact sparsity; clamped targets say so in ``note``.
    """
    if pattern_name not in PATTERNS:
        raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}; got {pattern_name!r}")
    n = check_size(n)
    sparsity = check_fraction("sparsity", sparsity)
    allowed = {
        "random": {"seed"},
        "window": set(),
        "global": set(),
        "strided": {"stride"},
        "fixed": {"summary"},
        "sliding_window": set(),
        "dilated_sliding_window": {"dilation"},
        "longformer": {"global_width"},
        "block_local": set(),
        "bigbird": {"split", "seed"},
    }[pattern_name]
    extra = sorted(set(fixed) - allowed)
    if extra:
        raise ValueError(
            f"{pattern_name} takes {', '.join(sorted(allowed)) or 'no fixed parameters'}; "
            f"got {', '.join(extra)}"
        )
    if pattern_name == "random":
        return solve_random(n, sparsity, fixed.get("seed", 0))
    if pattern_name == "window":
        return solve_window(n, sparsity)
    if pattern_name == "global":
        return solve_global(n, sparsity)
    if pattern_name == "bigbird":
        return bigbird_exact(n, sparsity, fixed.get("split", (1 / 3, 1 / 3, 1 / 3)), fixed.get("seed", 0))
    if pattern_name == "strided":
        if "stride" not in fixed:
            raise ValueError("strided needs stride= (an integer >= 1)")
        stride = check_int("stride", fixed["stride"], low=1)
        return solve_parameter(strided, "window", n, sparsity, 0, n, stride=stride)
    if pattern_name == "fixed":
        summary = check_int("summary", fixed.get("summary", 1), low=0)
        low = max(1, summary)
        if low > n:
            raise ValueError(f"summary must be an integer in [0, n={n}], got {summary}")
        return _solve_two_branches(_fixed_factory, "block", n, sparsity, low, n, summary=summary)
    if pattern_name == "sliding_window":
        return solve_parameter(sliding_window, "window", n, sparsity, 0, 2 * n - 1)
    if pattern_name == "dilated_sliding_window":
        if "dilation" not in fixed:
            raise ValueError("dilated_sliding_window needs dilation= (an integer >= 1)")
        dilation = check_int("dilation", fixed["dilation"], low=1)
        high = 2 * (-(-(n - 1) // dilation)) + 1
        return solve_parameter(dilated_sliding_window, "window", n, sparsity, 0, high, dilation=dilation)
    if pattern_name == "longformer":
        g = check_int("global_width", fixed.get("global_width", 0), low=0, high=n)
        return solve_parameter(longformer, "window", n, sparsity, 0, 2 * n - 1, global_width=g)
    return solve_parameter(block_local, "block", n, sparsity, 1, n)


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
_DESCRIPTION = (
    "Choose a pattern's integer parameters for a target sparsity at length N and print them with "
    "the exact sparsity they give."
)


def _fail(message: str) -> None:
    print(f"sparsekit solve: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _int_option(name: str, text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text)
    except ValueError:
        _fail(f"--{name} must be an integer, got {text!r}")
    return None  # pragma: no cover


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--size", required=True, metavar="N", help="sequence length n (>= 1)")
    parser.add_argument("--sparsity", required=True, metavar="S", help="target sparsity in [0, 1]")
    parser.add_argument("--pattern", required=True, metavar="NAME", help=f"one of: {', '.join(PATTERNS)}")
    parser.add_argument("--stride", default=None, help="strided: the fixed stride")
    parser.add_argument("--dilation", default=None, help="dilated_sliding_window: the fixed dilation")
    parser.add_argument("--global_width", default=None, help="longformer: the fixed global tokens (0)")
    parser.add_argument("--summary", default=None, help="fixed: summary columns per block (1)")
    parser.add_argument(
        "--split", default=None, metavar="R,W,G", help="bigbird: budget fractions (default 1,1,1)"
    )
    parser.add_argument("--seed", default=None, help="random and bigbird: seed of the draw (0)")
    parser.set_defaults(func=_command)
    return parser


def _command(args: argparse.Namespace) -> int:
    size = _int_option("size", args.size)
    try:
        sparsity = float(args.sparsity)
    except ValueError:
        _fail(f"sparsity must be a number in [0, 1], got {args.sparsity!r}")
    fixed: dict[str, Any] = {}
    for name in ("stride", "dilation", "global_width", "summary", "seed"):
        value = _int_option(name, getattr(args, name))
        if value is not None:
            fixed[name] = value
    if args.split is not None:
        try:
            fixed["split"] = tuple(float(x) for x in args.split.split(","))
        except ValueError:
            _fail(f"--split must be three numbers R,W,G, got {args.split!r}")
    try:
        solution = solve(args.pattern, size, sparsity, **fixed)
    except ValueError as exc:
        _fail(str(exc))
    print(f"pattern: {solution.pattern_name}")
    for key, value in solution.params.items():
        print(f"{key}: {value}")
    print(f"size: {solution.n}")
    print(f"target sparsity: {solution.target:.4%}")
    print(f"achieved sparsity: {solution.achieved:.4%} (exact)")
    print(f"error: {solution.error:+.4%}")
    if solution.note:
        print(f"note: {solution.note}")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``solve`` subcommand on an ``argparse`` subparsers object.

    The subcommand's ``func`` default takes the parsed arguments and returns 0; a bad value prints
    one line ``sparsekit solve: error: ...`` to stderr and exits with status 2.
    """
    parser = subparsers.add_parser("solve", help="parameters for a target sparsity", description=_DESCRIPTION)
    return _configure(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line ``sparsekit solve --size N --sparsity S --pattern NAME``; returns the exit code."""
    parser = _configure(argparse.ArgumentParser(prog="sparsekit solve", description=_DESCRIPTION))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""How many query and key vectors does a batch of products read? (the resource calculator).

An accelerator that computes ``num_multiplications`` query-key products ``q_i . k_j`` at once must
have the query rows ``i`` and key columns ``j`` of those products in its buffer. This module takes
the non-zeros of a mask in a stated order, packs them greedily into time steps and counts, for every
step, the distinct rows and columns it reads and how many of them are new relative to the step
before.

**The packing rule.** Products are taken in order. A step holds at most ``num_multiplications``
products, and the number of distinct rows plus distinct columns it reads never exceeds
``read_limit``; a product that would break either bound starts the next step. Steps are therefore
consecutive runs of the ordered products.

**Loads.** A step's vectors that were already read by the step before are assumed to stay in the
buffer; the others are *loaded*. The total number of loads is compared with its lower bound, every
needed row and column loaded exactly once.

Everything is vectorized: the per-step figures come from the *previous occurrence* of every row and
column in the ordered sequence, computed chunk by chunk, so memory grows with the non-zeros (never
with ``n**2``). When ``read_limit >= 2 * num_multiplications`` the read bound can never bind (a step
of ``m`` products reads at most ``2 m`` vectors) and steps are plain chunks; otherwise a loop over
steps does vectorized work on a window of each step.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._io import atomic_write, atomic_write_text
from ._validate import check_int, check_size
from .pattern import Pattern, nonzeros_bytes, require_memory

__all__ = [
    "MASK_TYPES",
    "ORDERS",
    "ResourceAnalysis",
    "add_parser",
    "analyze",
    "analyze_cells",
    "build_mask",
    "main",
    "ordered_nonzeros",
    "pack_steps",
    "report_names",
    "write_report",
]

#: Orders in which the products (non-zeros) can be visited.
ORDERS = ("row_first", "column_first", "zigzag", "tiled")

#: Mask types the command line knows, in the order they are listed.
MASK_TYPES = (
    "normal",
    "strided",
    "fixed",
    "sliding_window",
    "dilated_sliding_window",
    "block_local",
    "axial",
    "longformer",
    "bigbird",
    "random",
)

# Elements processed at once by the streaming passes; bounds every temporary array.
_CHUNK = 1 << 20


def _check_tile(tile: object) -> tuple[int, int]:
    """A tile as ``(rows, cols)``: an integer ``b`` means ``(b, b)``; each side an integer ``>= 1``."""
    if isinstance(tile, tuple | list) and len(tile) == 2:
        return check_int("tile rows", tile[0], low=1), check_int("tile cols", tile[1], low=1)
    if isinstance(tile, tuple | list):
        raise ValueError(f"tile must be an integer >= 1 or a pair (rows, cols) of them, got {tile!r}")
    side = check_int("tile", tile, low=1)
    return side, side


def _check_order(order: object) -> str:
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    return str(order)


# --------------------------------------------------------------------------------------------------
# Orders
# --------------------------------------------------------------------------------------------------
def ordered_nonzeros(
    pattern: Pattern, n: int, order: str = "row_first", tile: int | tuple[int, int] = 8
) -> np.ndarray:
    """The non-zeros ``(i, j)`` of ``pattern`` at length ``n``, in the order a unit computes them.

    Parameters
    ----------
    pattern : Pattern
        The mask.
    n : int
        Sequence length; ``>= 1``.
    order : {"row_first", "column_first", "zigzag", "tiled"}
        ``row_first``: row by row, columns ascending. ``column_first``: column by column, rows
        ascending. ``zigzag``: row-first, but odd rows run right to left, so consecutive rows meet
        at a shared edge column. ``tiled``: the mask is cut into tiles of ``rows x cols`` cells
        visited row-first (tile rows top to bottom, tiles left to right); inside a tile, cells
        row-first (FlashAttention's ``Br x Bc`` tiles, Dao et al. 2022).
    tile : int or tuple of int
        Tile of ``order="tiled"``: a side ``b`` (a ``b x b`` square) or a pair ``(rows, cols)``;
        each ``>= 1``. Ignored by the other orders.

    Returns
    -------
    numpy.ndarray
        ``int64`` array of shape ``(nnz, 2)``: query row, key column.
    """
    order = _check_order(order)
    tile_rows, tile_cols = _check_tile(tile)
    n = check_size(n)
    if order == "column_first":
        return pattern.nonzeros(n, order="column_first")
    cells = pattern.nonzeros(n)
    if order == "zigzag" and cells.shape[0]:
        counts = pattern.row_counts(n)
        ends = np.cumsum(counts)
        starts = ends - counts
        rows = cells[:, 0]
        odd = np.flatnonzero(rows & 1)
        # Position p of row r (cells starts[r] .. ends[r] - 1) takes the column of its mirror.
        mirror = starts[rows[odd]] + ends[rows[odd]] - 1 - odd
        cells[odd, 1] = cells[mirror, 1]
    elif order == "tiled" and cells.shape[0]:
        tiles_per_row = -(-n // tile_cols)
        key = (cells[:, 0] // tile_rows) * tiles_per_row + cells[:, 1] // tile_cols
        # Stable: cells keep their row-first order inside each tile.
        cells = cells[np.argsort(key, kind="stable")]
    return cells


# --------------------------------------------------------------------------------------------------
# Previous occurrences, streamed
# --------------------------------------------------------------------------------------------------
class _PreviousTracker:
    """Index of the previous occurrence of each value, fed chunk by chunk in sequence order."""

    def __init__(self, size: int) -> None:
        self.last = np.full(size, -1, dtype=np.int64)
        self.small = size <= 1 << 16

    def feed(self, values: np.ndarray, offset: int) -> np.ndarray:
        m = values.size
        if m == 0:
            return np.empty(0, dtype=np.int64)
        if m == 1 or bool(np.all(values[1:] >= values[:-1])):
            # Already sorted (rows in row-first order): equal values are neighbours.
            same = np.zeros(m, dtype=bool)
            np.equal(values[1:], values[:-1], out=same[1:])
            prev = np.arange(offset - 1, offset + m - 1, dtype=np.int64)
            prev[~same] = self.last[values[~same]]
            is_last = np.ones(m, dtype=bool)
            is_last[:-1] = ~same[1:]
            self.last[values[is_last]] = np.flatnonzero(is_last) + offset
            return prev
        else:
            keys = values.astype(np.uint16) if self.small else values
            order = np.argsort(keys, kind="stable")  # radix sort for 16-bit keys
            sorted_values = values[order]
        index = order + offset
        same = np.zeros(m, dtype=bool)
        same[1:] = sorted_values[1:] == sorted_values[:-1]
        before = np.empty(m, dtype=np.int64)
        before[0] = -1
        before[1:] = index[:-1]
        prev_sorted = np.where(same, before, self.last[sorted_values])
        prev = np.empty(m, dtype=np.int64)
        prev[order] = prev_sorted
        is_last = np.ones(m, dtype=bool)
        is_last[:-1] = ~same[1:]
        self.last[sorted_values[is_last]] = index[is_last]
        return prev


def _previous(values: np.ndarray, size: int) -> np.ndarray:
    tracker = _PreviousTracker(size)
    out = np.empty(values.size, dtype=np.int64)
    for start in range(0, values.size, _CHUNK):
        out[start : start + _CHUNK] = tracker.feed(values[start : start + _CHUNK], start)
    return out


def _check_cells(cells: object) -> np.ndarray:
    arr = np.asarray(cells)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"cells must be an array of (row, column) pairs of shape (k, 2), got {arr.shape}")
    if arr.shape[0] and arr.dtype.kind not in "iu":
        raise ValueError(f"cells must hold integer indices, got dtype {arr.dtype}")
    if arr.shape[0] and int(arr.min()) < 0:
        raise ValueError(f"cells must hold indices >= 0, got {int(arr.min())}")
    return arr.astype(np.int64, copy=False)


# --------------------------------------------------------------------------------------------------
# Packing
# --------------------------------------------------------------------------------------------------
def _pack(
    cells: np.ndarray, m: int, r: int, prev_row: np.ndarray | None = None, prev_col: np.ndarray | None = None
) -> np.ndarray:
    total = cells.shape[0]
    if r >= 2 * m or total == 0:
        return np.append(np.arange(0, total, m, dtype=np.int64), total)
    if prev_row is None or prev_col is None:
        size = int(cells.max()) + 1
        prev_row, prev_col = _previous(cells[:, 0], size), _previous(cells[:, 1], size)
    bounds = [0]
    start = 0
    first_window = max(2, min(m, r))
    while start < total:
        cap = min(m, total - start)
        width = min(first_window, cap)
        while True:
            end = start + width
            reads = np.cumsum(prev_row[start:end] < start) + np.cumsum(prev_col[start:end] < start)
            over = int(np.argmax(reads > r))
            if reads[over] > r:  # product `over` would break the read limit: it starts the next step
                length = over
                break
            if width == cap:
                length = cap
                break
            width = min(2 * width, cap)
        start += length
        bounds.append(start)
    return np.asarray(bounds, dtype=np.int64)


def pack_steps(cells: np.ndarray, num_multiplications: int = 64, read_limit: int = 1000) -> np.ndarray:
    """Pack ordered products greedily into steps; return the step boundaries.

    Products are taken in the order given. A step holds at most ``num_multiplications`` products,
    and its distinct rows plus distinct columns never exceed ``read_limit``; a product that would
    break either bound starts the next step.

    Parameters
    ----------
    cells : numpy.ndarray
        Ordered products as ``(row, column)`` integer pairs, shape ``(k, 2)``, e.g. from
        :func:`ordered_nonzeros`.
    num_multiplications : int
        Products per step at most; ``>= 1``.
    read_limit : int
        Distinct rows plus distinct columns per step at most; ``>= 2`` (one product reads two).

    Returns
    -------
    numpy.ndarray
        ``int64`` offsets ``bounds`` of length ``steps + 1``: step ``t`` holds products
        ``bounds[t] : bounds[t + 1]``. ``bounds[0] == 0`` and ``bounds[-1] == k``.
    """
    m = check_int("num_multiplications", num_multiplications, low=1)
    r = check_int("read_limit", read_limit, low=2)
    return _pack(_check_cells(cells), m, r)


# --------------------------------------------------------------------------------------------------
# Analysis
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class ResourceAnalysis:
    """Per-step read figures of one mask, order and unit size (built by :func:`analyze`).

    Attributes
    ----------
    pattern_name : str
        Name of the analysed pattern (``""`` for raw cells).
    n : int
        Sequence length (``0`` for raw cells).
    num_multiplications, read_limit : int
        The unit's bounds.
    order : str
        Order of the products; ``"given"`` for raw cells.
    tile : int, tuple of int or None
        Tile of the tiled order (a side or a ``(rows, cols)`` pair), else ``None``.
    cells : numpy.ndarray
        The ordered products, ``(nnz, 2)``.
    bounds : numpy.ndarray
        Step boundaries, see :func:`pack_steps`.
    rows, cols : numpy.ndarray
        Distinct rows and distinct columns each step reads, ``(steps,)``.
    new_rows, new_cols : numpy.ndarray
        Rows and columns a step reads that the step before did not (step 0: all of them).
    needed_rows, needed_cols : int
        Distinct rows and columns over the whole run.
    """

    pattern_name: str
    n: int
    num_multiplications: int
    read_limit: int
    order: str
    tile: int | tuple[int, int] | None
    cells: np.ndarray
    bounds: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    new_rows: np.ndarray
    new_cols: np.ndarray
    needed_rows: int
    needed_cols: int

    @property
    def nnz(self) -> int:
        """Number of products (non-zeros)."""
        return int(self.cells.shape[0])

    @property
    def num_steps(self) -> int:
        """Number of time steps."""
        return int(self.bounds.size - 1)

    @property
    def products(self) -> np.ndarray:
        """Products in each step, ``(steps,)``."""
        return np.diff(self.bounds)

    @property
    def reads(self) -> np.ndarray:
        """Distinct rows plus distinct columns of each step."""
        return self.rows + self.cols

    @property
    def loads(self) -> np.ndarray:
        """New rows plus new columns of each step (what must be loaded)."""
        return self.new_rows + self.new_cols

    @property
    def max_step(self) -> int:
        """The "max case", the first step with the largest distinct rows + columns (-1 if none)."""
        return int(np.argmax(self.reads)) if self.num_steps else -1

    @property
    def max_rows(self) -> int:
        """Largest number of distinct rows in one step."""
        return int(self.rows.max()) if self.num_steps else 0

    @property
    def max_cols(self) -> int:
        """Largest number of distinct columns in one step."""
        return int(self.cols.max()) if self.num_steps else 0

    @property
    def max_reads(self) -> int:
        """Largest distinct rows + columns of one step (the max case's reads)."""
        return int(self.reads.max()) if self.num_steps else 0

    @property
    def total_reads(self) -> int:
        """Sum of every step's reads, the loads if nothing were kept between steps."""
        return int(self.reads.sum())

    @property
    def total_loads(self) -> int:
        """Sum of every step's new rows and columns, the loads when a step keeps the previous one's."""
        return int(self.loads.sum())

    @property
    def lower_bound(self) -> int:
        """Fewest loads possible, with every needed row and column loaded once."""
        return self.needed_rows + self.needed_cols

    def capacity_lower_bound(self, capacity: int) -> int:
        """Fewest loads of *any* schedule whose buffer holds ``capacity`` vectors at once.

        Cut a schedule into segments of ``capacity`` loads. During one segment at most
        ``2 * capacity`` vectors are available (those held at its start and those it loads); ``a``
        rows and ``b`` columns with ``a + b <= 2 * capacity`` meet in at most ``a * b <= capacity**2``
        products. So ``nnz`` products need at least ``ceil(nnz / capacity**2)`` segments, all but the
        last full: at least ``capacity * (ceil(nnz / capacity**2) - 1)`` loads (the vector form of
        the bound of Hong and Kung that FlashAttention's analysis uses). The result is the larger
        of that and :attr:`lower_bound`.

        Parameters
        ----------
        capacity : int
            Vectors (query rows and key columns) the buffer holds; ``>= 1``.
        """
        c = check_int("capacity", capacity, low=1)
        segments = -(-self.nnz // (c * c))
        return max(self.lower_bound, c * max(segments - 1, 0))

    @property
    def reuse_ratio(self) -> float:
        """``total_loads / lower_bound``: loads per needed vector; 1.0 is perfect reuse (NaN if empty)."""
        return self.total_loads / self.lower_bound if self.lower_bound else math.nan

    def step(self, t: int) -> np.ndarray:
        """The products ``(row, column)`` of step ``t``; ``t`` in ``[0, steps - 1]``."""
        t = check_int("t", t, low=0, high=self.num_steps - 1)
        return self.cells[self.bounds[t] : self.bounds[t + 1]]

    def summary(self) -> dict[str, Any]:
        """Key figures as a dict of plain Python scalars."""
        t = self.max_step
        return {
            "pattern": self.pattern_name,
            "n": self.n,
            "order": self.order,
            "num_multiplications": self.num_multiplications,
            "read_limit": self.read_limit,
            "nnz": self.nnz,
            "steps": self.num_steps,
            "max_rows": self.max_rows,
            "max_cols": self.max_cols,
            "max_reads": self.max_reads,
            "max_step": t,
            "max_step_rows": int(self.rows[t]) if t >= 0 else 0,
            "max_step_cols": int(self.cols[t]) if t >= 0 else 0,
            "total_reads": self.total_reads,
            "total_loads": self.total_loads,
            "lower_bound": self.lower_bound,
            "reuse_ratio": float(self.reuse_ratio),
        }


def _per_step(cells: np.ndarray, bounds: np.ndarray, size: int):
    """Distinct and new rows/columns of every step, streamed over chunks of products."""
    steps = bounds.size - 1
    out = {name: np.zeros(steps, dtype=np.int64) for name in ("rows", "cols", "new_rows", "new_cols")}
    needed = {"rows": 0, "cols": 0}
    trackers = {"rows": _PreviousTracker(size), "cols": _PreviousTracker(size)}
    total = cells.shape[0]
    if steps == 0:
        return out, needed
    width = int(bounds[1] - bounds[0])
    if bool(np.all(np.diff(bounds[:-1]) == width)):
        # Plain chunks of `width` products (the last may be shorter): reshape instead of gathering.
        chunk = max(1, _CHUNK // width) * width
        sentinel = np.iinfo(np.int64).max
        for a in range(0, total, chunk):
            b = min(total, a + chunk)
            k = -(-(b - a) // width)
            s0 = a // width
            starts = (np.arange(s0, s0 + k, dtype=np.int64) * width)[:, None]
            before = np.maximum(starts - width, 0)
            for axis, name in ((0, "rows"), (1, "cols")):
                prev = trackers[name].feed(cells[a:b, axis], a)
                needed[name] += int(np.count_nonzero(prev < 0))
                if prev.size < k * width:
                    prev = np.concatenate([prev, np.full(k * width - prev.size, sentinel)])
                prev = prev.reshape(k, width)
                out[name][s0 : s0 + k] = np.count_nonzero(prev < starts, axis=1)
                out["new_" + name][s0 : s0 + k] = np.count_nonzero(prev < before, axis=1)
        return out, needed
    for a in range(0, total, _CHUNK):
        b = min(total, a + _CHUNK)
        s0 = int(np.searchsorted(bounds, a, side="right")) - 1
        s1 = int(np.searchsorted(bounds, b, side="left"))
        edges = np.clip(bounds[s0 : s1 + 1], a, b)
        local = np.repeat(np.arange(s1 - s0), np.diff(edges))  # step of each product, minus s0
        start = bounds[s0:s1][local]
        start_before = bounds[np.maximum(np.arange(s0, s1) - 1, 0)][local]
        for axis, name in ((0, "rows"), (1, "cols")):
            prev = trackers[name].feed(cells[a:b, axis], a)
            needed[name] += int(np.count_nonzero(prev < 0))
            first = prev < start  # first time this vector appears in its step
            new = prev < start_before  # ... and the step before did not read it either
            out[name][s0:s1] += np.bincount(local[first], minlength=s1 - s0)
            out["new_" + name][s0:s1] += np.bincount(local[new], minlength=s1 - s0)
    return out, needed


def analyze_cells(
    cells: np.ndarray,
    num_multiplications: int = 64,
    read_limit: int = 1000,
    *,
    pattern_name: str = "",
    n: int = 0,
    order: str = "given",
    tile: int | tuple[int, int] | None = None,
) -> ResourceAnalysis:
    """Pack products given in order (see :func:`pack_steps`) and count every step's reads.

    Parameters
    ----------
    cells : numpy.ndarray
        Ordered products as ``(row, column)`` integer pairs, shape ``(k, 2)``.
    num_multiplications : int
        Products per step at most; ``>= 1``.
    read_limit : int
        Distinct rows plus distinct columns per step at most; ``>= 2``.
    pattern_name, n, order, tile
        Descriptions stored in the result.

    Returns
    -------
    ResourceAnalysis
    """
    m = check_int("num_multiplications", num_multiplications, low=1)
    r = check_int("read_limit", read_limit, low=2)
    cells = _check_cells(cells)
    size = max(int(cells.max()) + 1 if cells.shape[0] else 1, n)
    prev_row = prev_col = None
    if r < 2 * m and cells.shape[0]:
        prev_row, prev_col = _previous(cells[:, 0], size), _previous(cells[:, 1], size)
    bounds = _pack(cells, m, r, prev_row, prev_col)
    del prev_row, prev_col
    per_step, needed = _per_step(cells, bounds, size)
    return ResourceAnalysis(
        pattern_name=pattern_name,
        n=n,
        num_multiplications=m,
        read_limit=r,
        order=order,
        tile=tile,
        cells=cells,
        bounds=bounds,
        needed_rows=needed["rows"],
        needed_cols=needed["cols"],
        **per_step,
    )


def analyze(
    pattern: Pattern,
    n: int,
    num_multiplications: int = 64,
    read_limit: int = 1000,
    order: str = "row_first",
    tile: int | tuple[int, int] | None = None,
) -> ResourceAnalysis:
    """Resource figures of ``pattern`` at length ``n`` on a unit of ``num_multiplications`` products.

    Parameters
    ----------
    pattern : Pattern
        The mask.
    n : int
        Sequence length; ``>= 1``.
    num_multiplications : int
        Products per step at most; ``>= 1``.
    read_limit : int
        Distinct rows plus distinct columns per step at most; ``>= 2``.
    order : {"row_first", "column_first", "zigzag", "tiled"}
        Order of the products, see :func:`ordered_nonzeros`.
    tile : int or tuple of int, optional
        Tile of the tiled order: a side ``b`` or a pair ``(rows, cols)``, each ``>= 1``; default
        ``floor(sqrt(num_multiplications))`` so that a full square tile is one step (8 for 64
        products; GPU kernels use 64 to 128 per side). Ignored by the other orders.

    Returns
    -------
    ResourceAnalysis
        Per-step distinct rows and columns, new rows and columns, totals, maxima, the max case and
        the reuse ratio.

    Examples
    --------
    >>> import sparsekit as sk
    >>> from sparsekit.resources import analyze
    >>> a = analyze(sk.causal(), 4, num_multiplications=4, read_limit=1000)
    >>> a.num_steps, a.rows.tolist(), a.cols.tolist()
    (3, [3, 2, 1], [2, 3, 2])
    """
    m = check_int("num_multiplications", num_multiplications, low=1)
    r = check_int("read_limit", read_limit, low=2)
    order = _check_order(order)
    n = check_size(n)
    if order == "tiled":
        if tile is None:
            tile = math.isqrt(m)
        else:
            sides = _check_tile(tile)
            tile = sides[0] if isinstance(tile, int | np.integer) else sides
    else:
        tile = None
    # The ordered cells, their reordering (zigzag, tiled) and the per-step arrays: about 3x nonzeros.
    need = 3 * nonzeros_bytes(pattern.bind(n), n)
    require_memory("resources analysis", n, need, "a smaller mask size, or nnz(n) for the count alone")
    cells = ordered_nonzeros(pattern, n, order, tile or 1)
    return analyze_cells(cells, m, r, pattern_name=pattern.name, n=n, order=order, tile=tile)


# --------------------------------------------------------------------------------------------------
# Reports
# --------------------------------------------------------------------------------------------------
def report_names(
    mask_type: str, num_multiplications: int, read_limit: int, order: str = "row_first"
) -> tuple[str, str]:
    """File names of the products file and the analysis file.

    ``{mask_type}_mask_{num_multiplications}_read_limit_{read_limit}{suffix}.txt`` and the same
    with ``_analysis.txt``; ``suffix`` is empty for row-first, ``_zigzag`` for zigzag,
    ``_column_first`` and ``_tiled`` for the other orders.
    """
    suffix = "" if order in ("row_first", "given") else f"_{order}"
    stem = f"{mask_type}_mask_{num_multiplications}_read_limit_{read_limit}{suffix}"
    return f"{stem}.txt", f"{stem}_analysis.txt"


def _header(result: ResourceAnalysis, mask_type: str, settings: dict[str, Any] | None) -> list[str]:
    lines = [
        f"mask_type: {mask_type}",
        f"pattern: {result.pattern_name}",
        f"mask_size: {result.n}",
        f"num_multiplications: {result.num_multiplications}",
        f"read_limit: {result.read_limit}",
        f"order: {result.order}",
    ]
    if isinstance(result.tile, tuple):
        lines.append(f"tile: {result.tile[0]} x {result.tile[1]}")
    elif result.tile is not None:
        lines.append(f"tile: {result.tile}")
    lines += [f"{key}: {value}" for key, value in (settings or {}).items()]
    return lines


def _analysis_text(result: ResourceAnalysis, mask_type: str, settings: dict[str, Any] | None) -> str:
    out = ["# Resource analysis (sparsekit.resources)"]
    out += ["# " + line for line in _header(result, mask_type, settings)]
    out.append("")
    out.append("Figures")
    s = result.summary()
    steps = max(1, result.num_steps)
    out += [
        f"  products (non-zeros): {result.nnz}",
        f"  steps: {result.num_steps}",
        f"  distinct rows per step: max {result.max_rows}, mean {result.rows.sum() / steps:.2f}",
        f"  distinct columns per step: max {result.max_cols}, mean {result.cols.sum() / steps:.2f}",
        f"  reads per step (rows + columns): max {result.max_reads}, mean {result.total_reads / steps:.2f}",
        f"  max case: step {s['max_step']} with {s['max_step_rows']} rows + {s['max_step_cols']} "
        f"columns = {result.max_reads} reads",
        f"  needed rows: {result.needed_rows}, needed columns: {result.needed_cols}",
        f"  total reads (nothing kept between steps): {result.total_reads}",
        f"  total loads (previous step kept): {result.total_loads}",
        f"  lower bound (each needed vector once): {result.lower_bound}",
        f"  reuse ratio (total loads / lower bound): {result.reuse_ratio:.4f}",
        "",
        "Change analysis (new = not read by the previous step; delta = change of distinct count)",
        "step products rows cols new_rows new_cols delta_rows delta_cols",
    ]
    if result.num_steps:
        d_rows = np.diff(result.rows, prepend=0)
        d_cols = np.diff(result.cols, prepend=0)
        table = np.stack(
            [np.arange(result.num_steps), result.products, result.rows, result.cols]
            + [result.new_rows, result.new_cols, d_rows, d_cols],
            axis=1,
        ).tolist()
        out += [" ".join(map(str, row)) for row in table]
    return "\n".join(out) + "\n"


def write_report(
    result: ResourceAnalysis,
    out_dir: str | Path,
    mask_type: str,
    settings: dict[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write the products file and the analysis file of ``result`` into ``out_dir``.

    The products file has a header of ``#`` lines with the settings, then one line per step,
    ``step t: (i,j) (i,j) ...``. The analysis file has the figures (steps, maxima, the max case,
    totals, lower bound, reuse ratio) and the change analysis, one line per step. Both are written
    whole or not at all; ``out_dir`` is created if needed.

    Parameters
    ----------
    result : ResourceAnalysis
        What to write.
    out_dir : str or pathlib.Path
        Folder of the files.
    mask_type : str
        Name used in the file names, e.g. ``"strided"``.
    settings : dict, optional
        Extra settings for the headers, such as ``{"window_size": 32}``.

    Returns
    -------
    tuple of pathlib.Path
        The products file and the analysis file, named by :func:`report_names`.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    points_name, analysis_name = report_names(
        mask_type, result.num_multiplications, result.read_limit, result.order
    )
    header = ["# Products per step (sparsekit.resources)"]
    header += ["# " + line for line in _header(result, mask_type, settings)]
    header += [
        f"# steps: {result.num_steps}, products: {result.nnz}",
        "# one line per step: step t: (query row,key column) ...",
    ]

    def write_points(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write("\n".join(header) + "\n")
            bounds = result.bounds
            per_batch = max(1, _CHUNK // 16 // max(1, result.num_multiplications))
            for s0 in range(0, result.num_steps, per_batch):
                s1 = min(result.num_steps, s0 + per_batch)
                flat = result.cells[bounds[s0] : bounds[s1]].tolist()
                text = [f"({i},{j})" for i, j in flat]
                base = int(bounds[s0])
                lines = [
                    f"step {t}: " + " ".join(text[bounds[t] - base : bounds[t + 1] - base])
                    for t in range(s0, s1)
                ]
                handle.write("\n".join(lines) + "\n")

    points = atomic_write(out / points_name, write_points)
    analysis = atomic_write_text(out / analysis_name, _analysis_text(result, mask_type, settings))
    return points, analysis


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------
def build_mask(
    mask_type: str,
    mask_size: int,
    window_size: int = 32,
    stride: int = 32,
    dilation: int = 2,
    global_width: int = 2,
    nz_per_row: int = 3,
    seed: int = 0,
) -> Pattern:
    """The pattern the command line means by ``mask_type`` (one of :data:`MASK_TYPES`).

    ``normal`` is causal; ``fixed`` and ``block_local`` use ``window_size`` as the block;
    ``bigbird`` uses it as the band width; ``axial`` needs a square ``mask_size`` (a square grid).
    """
    import sparsekit as sk

    mask_size = check_size(mask_size, "mask_size")
    if mask_type == "normal":
        p = sk.causal()
    elif mask_type == "strided":
        p = sk.strided(window_size, stride)
    elif mask_type == "fixed":
        p = sk.fixed(window_size)
    elif mask_type == "sliding_window":
        p = sk.sliding_window(window_size)
    elif mask_type == "dilated_sliding_window":
        p = sk.dilated_sliding_window(window_size, dilation)
    elif mask_type == "block_local":
        p = sk.block_local(window_size)
    elif mask_type == "axial":
        side = math.isqrt(mask_size)
        if side * side != mask_size:
            raise ValueError(f"axial needs a square mask_size (a side x side grid), got {mask_size}")
        p = sk.axial(side, side)
    elif mask_type == "longformer":
        p = sk.longformer(window_size, global_width)
    elif mask_type == "bigbird":
        p = sk.bigbird(nz_per_row, window_size, global_width, seed)
    elif mask_type == "random":
        p = sk.random(nz_per_row, seed)
    else:
        raise ValueError(f"mask type must be one of {', '.join(MASK_TYPES)}, got {mask_type!r}")
    return p.bind(mask_size)


def _parse_masks(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if names == ["all"]:
        return list(MASK_TYPES)
    if not names:
        raise ValueError("--masks must name at least one mask type")
    unknown = [name for name in names if name not in MASK_TYPES]
    if unknown:
        raise ValueError(f"unknown mask type {unknown[0]!r} in --masks (known: {', '.join(MASK_TYPES)}, all)")
    return list(dict.fromkeys(names))


def _configure(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    add = parser.add_argument
    add("--mask_size", type=int, default=1024, help="size of the square mask matrix (default: 1024)")
    add("--num_multiplications", type=int, default=64, help="products computed at once (default: 64)")
    add("--window_size", type=int, default=32, help="local window / block size (default: 32)")
    add("--stride", type=int, default=32, help="stride of the strided mask (default: 32)")
    add(
        "--read_limit", type=int, default=1000, help="distinct rows + columns a step may read (default: 1000)"
    )
    add("--zigzag", action="store_true", help="same as --order zigzag: odd rows right to left")
    add("--order", choices=ORDERS, default=None, help="order of the products (default: row_first)")
    add("--tile", type=int, default=None, help="tile side for --order tiled (default: isqrt(num_mult.))")
    add("--masks", default="normal,strided,fixed", help="comma-separated mask types, or all")
    add("--dilation", type=int, default=2, help="dilation of dilated_sliding_window (default: 2)")
    add("--global_width", type=int, default=2, help="global tokens of longformer/bigbird (default: 2)")
    add("--nz_per_row", type=int, default=3, help="random keys per row of random/bigbird (default: 3)")
    add("--seed", type=int, default=0, help="seed of random/bigbird (default: 0)")
    add("--out", default="generated", help="output folder (default: generated)")
    add("--no_files", action="store_true", help="print the summary only, write no files")
    parser.set_defaults(func=_command)
    return parser


def _command(args: argparse.Namespace) -> int:
    try:
        if args.zigzag and args.order not in (None, "zigzag"):
            raise ValueError(f"--zigzag contradicts --order {args.order}")
        order = "zigzag" if args.zigzag else (args.order or "row_first")
        check_int("--mask_size", args.mask_size, low=1)
        check_int("--num_multiplications", args.num_multiplications, low=1)
        check_int("--read_limit", args.read_limit, low=2)
        if args.tile is not None:
            check_int("--tile", args.tile, low=1)
        names = _parse_masks(args.masks)
        settings = {
            "window_size": args.window_size,
            "stride": args.stride,
            "dilation": args.dilation,
            "global_width": args.global_width,
            "nz_per_row": args.nz_per_row,
            "seed": args.seed,
        }
        masks = [(name, build_mask(name, args.mask_size, **settings)) for name in names]
    except ValueError as exc:
        print(f"resources: error: {exc}", file=sys.stderr)
        return 2
    head = f"{'mask':<24}{'nnz':>11}{'steps':>9}{'max rows':>10}{'max cols':>10}{'max case':>10}"
    head += f"{'loads':>11}{'bound':>8}{'ratio':>8}"
    print(
        f"mask_size {args.mask_size}, num_multiplications {args.num_multiplications}, "
        f"read_limit {args.read_limit}, order {order}"
    )
    print(head)
    for name, pattern in masks:
        result = analyze(pattern, args.mask_size, args.num_multiplications, args.read_limit, order, args.tile)
        s = result.summary()
        print(
            f"{name:<24}{s['nnz']:>11}{s['steps']:>9}{s['max_rows']:>10}{s['max_cols']:>10}"
            f"{s['max_step']:>10}{s['total_loads']:>11}{s['lower_bound']:>8}{s['reuse_ratio']:>8.3f}"
        )
        if not args.no_files:
            write_report(result, args.out, name, settings)
    if not args.no_files:
        print(f"files written to {args.out}/")
    return 0


_DESCRIPTION = (
    "Calculate mask resources for sparse matrix multiplications: pack each mask's products into "
    "steps of at most --num_multiplications products and --read_limit distinct rows + columns, "
    "and count the rows and columns every step reads and loads."
)


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``resources`` subcommand on an ``argparse`` subparsers object.

    The subcommand's ``func`` default takes the parsed arguments and returns the exit code: 0 on
    success, 2 for invalid values (one line on stderr).
    """
    parser = subparsers.add_parser(
        "resources", help="resources a mask needs per step", description=_DESCRIPTION
    )
    return _configure(parser)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line ``sparsekit resources [...]``; returns the exit code."""
    parser = _configure(argparse.ArgumentParser(prog="sparsekit resources", description=_DESCRIPTION))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())

"""The :class:`Pattern` base class: one predicate, every view derived from it.

A pattern is defined once, by :meth:`Pattern.predicate`, a pure vectorized function of broadcastable
integer index arrays ``q`` (query) and ``kv`` (key/value). Everything else, the dense mask, the
labelled mask, exact row counts, the block layout and the ordered non-zeros, is computed from that
predicate by the engines below. Families may add an exact closed form for a view (row counts, block
counts) when one exists; the tests check every such shortcut against the predicate cell by cell.

Two engines keep the views fast without materializing ``n x n`` temporaries:

* **Shift invariance.** A pattern with ``period = P`` satisfies ``p(i + P, j + P) == p(i, j)``. Rows
  ``i`` and ``i + P`` are then the same row moved ``P`` columns to the right, so the dense mask is a
  strided view of ``P`` evaluated rows and costs one copy of the output (memory speed).
* **Blocks.** The block layout (how many allowed cells each ``b x b`` tile holds) tells which tiles
  are empty, full or partial. Views then fill full tiles directly and evaluate the predicate only on
  partial tiles, so work follows the pattern's structure rather than ``n**2``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from functools import reduce

import numpy as np

from ._validate import check_int, check_size

#: Label codes of the labelled mask, as in the seed project; smaller non-zero codes are more specific.
NO_ATTENTION, DIAGONAL, LOCAL, GLOBAL = 0, 1, 2, 3
#: Legend names of the label codes, indexed by code.
LABEL_NAMES = ("No attention", "Diagonal", "Local", "Strided, column, global or random")


def _default_memory_budget() -> int:
    """A quarter of the machine's physical memory (4 GiB where the system does not say)."""
    try:
        return max(1 << 26, os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4)
    except (AttributeError, ValueError, OSError):
        return 4 * 2**30


DEFAULT_MEMORY_BUDGET = _default_memory_budget()
_memory_budget = [DEFAULT_MEMORY_BUDGET]

# Largest number of predicate cells evaluated at once; bounds every temporary array.
_CHUNK_CELLS = 1 << 22
# Tile size used internally for the block engine when a view needs no particular size.
_ENGINE_BLOCK = 128
# Most predicate cells the closed-form block summary evaluates (representative tiles) before giving up.
_CLOSED_CELLS = 1 << 26


class MemoryBudgetError(MemoryError, ValueError):
    """A view refused before allocating: it would need more memory than the budget allows.

    A ``MemoryError`` (it is one) and a ``ValueError`` (the input is what is too large), so that
    command lines report it as bad input: one line on stderr, exit status 2.
    """


def set_memory_budget(nbytes: int) -> int:
    """Set the most memory (in bytes) one view may allocate; returns the previous budget.

    Every view estimates what it needs before allocating
    (:func:`~sparsekit.pattern.require_memory`) and raises
    :class:`~sparsekit.pattern.MemoryBudgetError` above the budget. The default is a quarter of the
    machine's memory.
    """
    previous = _memory_budget[0]
    _memory_budget[0] = check_int("nbytes", nbytes, low=1)
    return previous


def require_memory(view: str, n: int, nbytes: int, instead: str, max_bytes: int | None = None) -> None:
    """Raise ``MemoryBudgetError`` when ``view`` at length ``n`` would need more than the budget.

    Parameters
    ----------
    view : str
        What is being built, e.g. ``"dense"``; named in the message.
    n : int
        Sequence length.
    nbytes : int
        Estimated peak memory of the view, in bytes.
    instead : str
        The cheaper views to use, named in the message.
    max_bytes : int, optional
        Budget for this call; default the one of :func:`~sparsekit.set_memory_budget`.
    """
    budget = _memory_budget[0] if max_bytes is None else check_int("max_bytes", max_bytes, low=1)
    if nbytes > budget:
        raise MemoryBudgetError(
            f"{view} at n={n} needs {_bytes_text(nbytes)}, over the memory budget of "
            f"{_bytes_text(budget)}; use {instead} instead, or raise the budget with "
            f"sparsekit.set_memory_budget()"
        )


def nonzeros_bytes(pattern: Pattern, n: int) -> int:
    """Peak memory of ``pattern.nonzeros(n)``: tile counts at block 16, then 16 bytes per non-zero.

    The non-zeros are exact when a closed form or the row counts are cheap, else bounded by ``n * n``.
    """
    nb = -(-n // min(16, n))
    tiles = 24 * nb * nb
    if tiles > _memory_budget[0]:
        return tiles
    nnz = pattern._nnz_closed(n)
    if nnz is None:
        cheap = pattern._row_counts_bytes(n) <= _memory_budget[0]
        nnz = _exact_sum(pattern._row_counts(n)) if cheap else n * n
    return tiles + 16 * nnz


def _bytes_text(nbytes: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.2f} {unit} ({nbytes} bytes)"
    return f"{nbytes} bytes"


def floor_sum(n: int, s: int) -> int:
    """``sum(i // s for i in range(n))`` exactly, in O(1): the building block of closed-form counts."""
    q, r = divmod(max(n, 0), s)
    return s * q * (q - 1) // 2 + q * r


def _is_torch(x: object) -> bool:
    return type(x).__module__.startswith("torch")


def _to_index(x: object, name: str):
    """Accept torch tensors as they are; turn anything else into an integer numpy array."""
    if _is_torch(x):
        return x
    arr = np.asarray(x)
    if arr.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer token indices, got dtype {arr.dtype}")
    return arr


def _tile_index(starts: np.ndarray, size: int) -> np.ndarray:
    return starts[:, None] + np.arange(size)


class Pattern:
    """A sparse-attention pattern: which key/value ``kv`` each query ``q`` may attend to.

    Subclasses implement :meth:`predicate` (the definition) and :meth:`code` (which label an allowed
    cell carries). Instances are immutable; combine them with ``|``, ``&`` and ``~``.

    Attributes
    ----------
    family : str
        Short name of the pattern family, such as ``"strided"``.
    params : dict
        The parameters the pattern was built with.
    period : int or None
        If set, ``predicate(i + period, j + period) == predicate(i, j)`` for all ``i, j >= 0``.
    """

    family = "pattern"
    period: int | None = None

    def __init__(self, **params: object) -> None:
        self.params = params

    # ----------------------------------------------------------------------------------------------
    # The definition
    # ----------------------------------------------------------------------------------------------
    def predicate(self, q, kv):
        """Vectorized rule: a boolean array, ``True`` where query ``q`` may attend to ``kv``."""
        raise NotImplementedError

    def code(self, q, kv):
        """Label code (1 diagonal, 2 local, 3 strided/column/global/random) of allowed cells."""
        raise NotImplementedError

    def bind(self, n: int) -> Pattern:
        """Return the pattern for sequence length ``n``, checking that it fits ``n``.

        Most patterns do not depend on the length and return themselves; random attention draws its
        columns for ``n`` here, and grid-shaped patterns check that ``n`` matches the grid.
        """
        check_size(n)
        return self

    def __call__(self, q, kv):
        """Evaluate the predicate on broadcastable integer arrays (numpy arrays or torch tensors)."""
        return self.predicate(_to_index(q, "q"), _to_index(kv, "kv"))

    def label(self, q, kv) -> np.ndarray:
        """Label codes on broadcastable numpy index arrays: 0 where attention is not allowed."""
        q, kv = np.asarray(q), np.asarray(kv)
        allowed = np.asarray(self.predicate(q, kv))
        codes = np.broadcast_to(np.asarray(self.code(q, kv)), allowed.shape)
        return np.where(allowed, codes, NO_ATTENTION).astype(np.uint8)

    # ----------------------------------------------------------------------------------------------
    # Naming and composition
    # ----------------------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        """Readable name with parameters, e.g. ``strided(window=32, stride=32)``."""
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items() if v is not None)
        return f"{self.family}({args})"

    def __repr__(self) -> str:
        return self.name

    def __or__(self, other: Pattern) -> Pattern:
        return Union(self, other)

    def __and__(self, other: Pattern) -> Pattern:
        return Intersection(self, other)

    def __invert__(self) -> Pattern:
        return Complement(self)

    # ----------------------------------------------------------------------------------------------
    # Views
    # ----------------------------------------------------------------------------------------------
    def dense(self, n: int, max_bytes: int | None = None) -> np.ndarray:
        """Boolean mask of shape ``(n, n)``: ``True`` where attention is allowed.

        Refuses with :class:`~sparsekit.pattern.MemoryBudgetError` (a ``MemoryError``) when the mask
        would exceed ``max_bytes`` (default: the budget of :func:`set_memory_budget`); use
        :meth:`row_counts`, :meth:`nnz` or :meth:`blocks` instead.
        """
        p = self.bind(n)
        _check_budget(n, max_bytes, "dense")
        return p._dense(n)

    def labels(self, n: int, max_bytes: int | None = None) -> np.ndarray:
        """Labelled mask of shape ``(n, n)``, dtype ``uint8``: codes 0 (none), 1, 2, 3."""
        p = self.bind(n)
        _check_budget(n, max_bytes, "labels")
        if p.period is not None and p._periodic_ok(n):
            return _periodic_eval(p.label, n, p.period, np.uint8)
        return p._by_blocks(n, p.label, np.uint8, fill_full=False)

    def row_counts(self, n: int) -> np.ndarray:
        """Exact number of allowed keys in each query row, ``int64`` of shape ``(n,)``."""
        p = self.bind(n)
        require_memory("row_counts", n, p._row_counts_bytes(n), "nnz(n), sparsity(n) or block_summary(n)")
        return np.asarray(p._row_counts(n), dtype=np.int64)

    def nnz(self, n: int) -> int:
        """Exact number of allowed (query, key) cells, a Python integer.

        Structured patterns answer in closed form (arithmetic over one period); others sum exact row
        counts, in chunks of rows when the whole count array would not fit the memory budget.
        """
        p = self.bind(n)
        exact = p._nnz_closed(n)
        return int(exact) if exact is not None else p._nnz_counted(n)

    def density(self, n: int) -> float:
        """Exact fraction of allowed cells, ``nnz / n**2`` (one rounding, at the division)."""
        n = check_size(n)
        return self.nnz(n) / (n * n)

    def sparsity(self, n: int) -> float:
        """Exact fraction of masked cells, ``1 - nnz / n**2`` (one rounding, at the division)."""
        n = check_size(n)
        return (n * n - self.nnz(n)) / (n * n)

    def block_counts(self, n: int, block_size: int = 128) -> np.ndarray:
        """Allowed cells in each ``block_size x block_size`` tile, ``int64 (ceil(n/b), ceil(n/b))``.

        The last tile row and column are smaller when ``block_size`` does not divide ``n``.
        """
        p = self.bind(n)
        b = check_int("block_size", block_size, low=1)
        nb = -(-n // b)
        require_memory("block_counts", n, 24 * nb * nb, "blocks(n, block_size) or block_summary(n)")
        return p._block_counts(n, b)

    def blocks(self, n: int, block_size: int = 128) -> np.ndarray:
        """Block layout, ``uint8 (ceil(n/b), ceil(n/b))``: 0 empty, 1 partial, 2 full tile."""
        p = self.bind(n)
        b = check_int("block_size", block_size, low=1)
        nb = -(-n // b)
        m = _period_tiles(p, b)
        own_counts = type(p)._block_counts is not Pattern._block_counts
        periodic = m is not None and not own_counts and m * (2 * nb - 1) < nb * nb
        # The periodic engine writes the uint8 layout directly; the others go through int64 counts.
        need = nb * nb if periodic else 25 * nb * nb
        require_memory("blocks", n, need, "block_summary(n, block_size) or a larger block_size")
        if periodic:
            return _periodic_layout(p, n, b, m)
        counts = p._block_counts(n, b)
        area = _block_areas(n, b)
        return np.where(counts == 0, 0, np.where(counts == area, 2, 1)).astype(np.uint8)

    def block_summary(self, n: int, block_size: int = 128) -> dict[str, int | float]:
        """Tile counts of the block layout: ``empty``, ``partial``, ``full``, ``tiles`` and
        ``block_sparsity`` (the fraction of tiles that are empty, i.e. skipped by a block-sparse kernel).

        Structured patterns answer in closed form, without the layout; the counts are exact integers.
        """
        p = self.bind(n)
        b = check_int("block_size", block_size, low=1)
        closed = p._block_summary_closed(n, b)
        if closed is None:
            nb = -(-n // b)
            need = nb * nb if _period_tiles(p, b) is not None else 25 * nb * nb
            require_memory("block_summary (no closed form for this pattern)", n, need, "a larger block_size")
            layout = p.blocks(n, b)
            closed = tuple(int(c) for c in np.bincount(layout.ravel(), minlength=3))
        empty, partial, full = closed
        tiles = (-(-n // b)) ** 2
        return {
            "empty": empty,
            "partial": partial,
            "full": full,
            "tiles": tiles,
            "block_sparsity": empty / tiles,
        }

    def block_sparsity(self, n: int, block_size: int = 128) -> float:
        """Fraction of ``block_size x block_size`` tiles with no allowed cell."""
        return self.block_summary(n, block_size)["block_sparsity"]

    def tile_density(self, n: int, block_size: int = 128) -> float:
        """Fraction of the ``n x n`` cells that lie in non-empty tiles: the work of a block-sparse kernel.

        Never below :meth:`density`; equal to it when every non-empty tile is full.
        """
        layout = self.blocks(n, block_size)
        return int(_block_areas(n, block_size)[layout > 0].sum()) / (n * n)

    def nonzeros(self, n: int, order: str = "row_first") -> np.ndarray:
        """Allowed cells as an ``int64`` array of ``(i, j)`` pairs, shape ``(nnz, 2)``.

        ``order="row_first"`` lists row by row with columns ascending; ``"column_first"`` lists
        column by column with rows ascending. Only partial tiles of the block layout are evaluated,
        so work and memory grow with the non-zeros, not with ``n**2``.
        """
        if order not in ("row_first", "column_first"):
            raise ValueError(f"order must be 'row_first' or 'column_first', got {order!r}")
        p = self.bind(n)
        require_memory("nonzeros", n, nonzeros_bytes(p, n), _NONZEROS_INSTEAD)
        return _ordered_cells(p, n, column_first=order == "column_first")

    # ----------------------------------------------------------------------------------------------
    # Closed forms (families override; None means "not available, use the engines")
    # ----------------------------------------------------------------------------------------------
    def _nnz_closed(self, n: int) -> int | None:
        """Exact non-zeros at length ``n`` as a Python integer, in O(1) or O(period) time and memory."""
        return None

    def _far(self) -> tuple[int, int] | None:
        """``(reach, shift)``: far from the diagonal the rule forgets where exactly a cell is.

        For ``q - kv >= reach`` the predicate is unchanged when ``q`` moves by ``shift``; for
        ``kv - q >= reach`` when ``kv`` moves by ``shift``. With :attr:`period` this makes tile
        statuses periodic along each tile diagonal far from the main one, which the closed-form block
        summary uses. ``None`` (the default) when the family does not know.
        """
        return None

    def _block_summary_closed(self, n: int, b: int) -> tuple[int, int, int] | None:
        """``(empty, partial, full)`` tiles of size ``b`` at length ``n`` without the layout, or None.

        The default works for every periodic pattern whose :meth:`_far` is known, evaluating one
        representative tile per class (see :func:`_periodic_summary`).
        """
        return _periodic_summary(self, n, b)

    def _leading_globals(self) -> int | None:
        """Number of leading global tokens for global-token patterns given by a width, else None."""
        return None

    def _row_counts_bytes(self, n: int) -> int:
        """Peak memory of :meth:`_row_counts`: a few ``(n,)`` arrays, plus the generic engine's tiles."""
        nb = -(-n // _ENGINE_BLOCK)
        generic = type(self)._row_counts is Pattern._row_counts
        return 32 * n + (24 * nb * nb if generic else 0)

    def _nnz_counted(self, n: int) -> int:
        """Exact non-zeros from row counts: whole when they fit the budget, else in chunks of rows."""
        if self._row_counts_bytes(n) <= _memory_budget[0]:
            return _exact_sum(self._row_counts(n))
        # Bounded memory: evaluate the predicate on chunks of rows by chunks of columns.
        total = 0
        rows_per = max(1, _CHUNK_CELLS // min(n, _CHUNK_CELLS))
        for r0 in range(0, n, rows_per):
            rows = np.arange(r0, min(n, r0 + rows_per))
            for c0 in range(0, n, _CHUNK_CELLS // rows.size):
                cols = np.arange(c0, min(n, c0 + _CHUNK_CELLS // rows.size))
                total += int(np.count_nonzero(self._dense_rows(n, rows, cols)))
        return total

    # ----------------------------------------------------------------------------------------------
    # Engines (subclasses override with exact shortcuts where they have one)
    # ----------------------------------------------------------------------------------------------
    def _global_flags(self, n: int) -> np.ndarray | None:
        """For global-token patterns: which tokens are global, a bool array ``(n,)``."""
        return None

    def _listed_cells(self, n: int) -> np.ndarray | None:
        """Flat indices ``i * n + j`` of all allowed cells, for patterns defined by a list of cells."""
        return None

    def _periodic_ok(self, n: int) -> bool:
        # The shift trick evaluates `period` rows over about 2n columns; worth it while that is small.
        return self.period is not None and self.period * 2 * n <= max(_CHUNK_CELLS, n * n // 4)

    def _dense(self, n: int) -> np.ndarray:
        if self.period is not None and self._periodic_ok(n):
            return _periodic_eval(self.predicate, n, self.period, np.bool_)
        return self._by_blocks(n, self.predicate, np.bool_, fill_full=True)

    def _dense_rows(self, n: int, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        """Predicate on a few rows (and optionally a subset of columns) as a bool array."""
        cols = np.arange(n) if cols is None else cols
        out = self.predicate(rows[:, None], cols[None, :])
        return np.broadcast_to(np.asarray(out, dtype=bool), (rows.size, cols.size))

    def _row_counts(self, n: int) -> np.ndarray:
        """Generic exact row counts: full tiles count whole, partial tiles are evaluated."""
        b = _ENGINE_BLOCK
        status = _status(self._block_counts(n, b), n, b)
        col_block = np.arange(n) // b
        counts = np.zeros(n, dtype=np.int64)
        for bi in range(status.shape[0]):
            rows = np.arange(bi * b, min(n, (bi + 1) * b))
            row_status = status[bi][col_block]
            counts[rows] = np.count_nonzero(row_status == 2)
            partial = np.flatnonzero(row_status == 1)
            for cols in _chunks(partial, max(1, _CHUNK_CELLS // rows.size)):
                counts[rows] += self._dense_rows(n, rows, cols).sum(axis=1)
        return counts

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        nb = -(-n // b)
        if self.period is not None:
            m = math.lcm(self.period, b) // b
            if m * (2 * nb - 1) < nb * nb:
                return _periodic_block_counts(self, n, b, m)
        ii, jj = np.meshgrid(np.arange(nb), np.arange(nb), indexing="ij")
        return _tile_counts(self.predicate, n, b, ii.ravel(), jj.ravel()).reshape(nb, nb)

    def _by_blocks(self, n: int, fn: Callable, dtype, fill_full: bool) -> np.ndarray:
        """Build an ``(n, n)`` array of ``fn`` using the block layout to skip empty tiles.

        With ``fill_full`` (boolean masks) full tiles are set without evaluating ``fn``.
        """
        b = _ENGINE_BLOCK
        status = _status(self._block_counts(n, b), n, b)
        col_block = np.arange(n) // b
        out = np.zeros((n, n), dtype=dtype)
        for bi in range(status.shape[0]):
            r0, r1 = bi * b, min(n, (bi + 1) * b)
            rows = np.arange(r0, r1)
            row_status = status[bi][col_block]
            if fill_full:
                out[r0:r1] = row_status == 2
                evaluate = np.flatnonzero(row_status == 1)
            else:
                evaluate = np.flatnonzero(row_status != 0)
            for cols in _chunks(evaluate, max(1, _CHUNK_CELLS // rows.size)):
                if cols.size == cols[-1] - cols[0] + 1:  # contiguous: a slice is cheaper
                    out[r0:r1, cols[0] : cols[-1] + 1] = fn(rows[:, None], cols[None, :])
                else:
                    out[r0:r1, cols] = fn(rows[:, None], cols[None, :])
        return out


# --------------------------------------------------------------------------------------------------
# Engine helpers
# --------------------------------------------------------------------------------------------------
_EXACT_VIEWS = "row_counts(n), nnz(n), sparsity(n) or blocks(n)"
_NONZEROS_INSTEAD = "nnz(n), block_summary(n), or nonzeros at a smaller n"


def _check_budget(n: int, max_bytes: int | None, view: str) -> None:
    """The budget check of the ``(n, n)`` one-byte views (dense and labels)."""
    require_memory(view, n, n * n, f"{_EXACT_VIEWS} (exact figures without the n x n mask)", max_bytes)


def _chunks(values: np.ndarray, size: int):
    for start in range(0, values.size, size):
        yield values[start : start + size]


def _block_areas(n: int, b: int) -> np.ndarray:
    sizes = np.minimum(b, n - np.arange(0, n, b))
    return sizes[:, None] * sizes[None, :]


def _status(counts: np.ndarray, n: int, b: int) -> np.ndarray:
    return np.where(counts == 0, 0, np.where(counts == _block_areas(n, b), 2, 1))


def _periodic_eval(fn: Callable, n: int, period: int, dtype) -> np.ndarray:
    """Evaluate a shift-invariant ``fn`` on ``period`` rows and replicate by a strided view.

    With ``K`` the first multiple of ``period`` at or above ``n``, ``base[r, c] = fn(K + r, c)`` and,
    by invariance, ``out[a * period + r, j] = base[r, j + K - a * period]``.
    """
    k = -(-n // period) * period
    base = np.ascontiguousarray(
        np.broadcast_to(fn(k + np.arange(period)[:, None], np.arange(k + n)[None, :]), (period, k + n)),
        dtype=dtype,
    )
    out = np.empty((n, n), dtype=dtype)
    groups = n // period
    if groups:
        start = base[:, k:]
        view = np.lib.stride_tricks.as_strided(
            start,
            shape=(groups, period, n),
            strides=(-period * base.itemsize, base.strides[0], base.itemsize),
            writeable=False,
        )
        out[: groups * period].reshape(groups, period, n)[...] = view
    tail = n - groups * period
    if tail:
        offset = k - groups * period
        out[groups * period :] = base[:tail, offset : offset + n]
    return out


def _ordered_cells(p: Pattern, n: int, column_first: bool, block: int = 16) -> np.ndarray:
    """All allowed cells in row-first (or column-first) order, evaluating only partial tiles.

    The exact block counts tell which ``block x block`` tiles are empty (skipped), full (all cells
    taken without evaluating the predicate) or partial (predicate evaluated). Bands of ``block`` rows
    (or columns) are emitted in order, so the result is row-first (or column-first).
    """
    b = min(block, n)
    counts = p.block_counts(n, b)
    if column_first:
        counts = counts.T
    sizes = np.minimum(b, n - np.arange(0, n, b))
    area = sizes[:, None] * sizes[None, :]
    out = np.empty((int(counts.sum()), 2), dtype=np.int64)
    major, minor = (1, 0) if column_first else (0, 1)
    filled = 0
    for band in range(counts.shape[0]):
        tiles = np.flatnonzero(counts[band])
        if not tiles.size:
            continue
        lines = np.arange(band * b, band * b + sizes[band])
        others = (tiles[:, None] * b + np.arange(b)).ravel()
        others = others[others < n]
        partial = np.repeat(counts[band, tiles] < area[band, tiles], sizes[tiles])
        hit = np.ones((lines.size, others.size), dtype=bool)
        if partial.any():
            sub = others[partial]
            q, kv = (sub[None, :], lines[:, None]) if column_first else (lines[:, None], sub[None, :])
            hit[:, partial] = np.broadcast_to(
                np.asarray(p.predicate(q, kv), dtype=bool), (lines.size, sub.size)
            )
        for line, row in zip(lines.tolist(), hit, strict=True):
            taken = others[row]
            out[filled : filled + taken.size, major] = line
            out[filled : filled + taken.size, minor] = taken
            filled += taken.size
    return out


def _tile_counts(fn: Callable, n: int, b: int, bi: np.ndarray, bj: np.ndarray) -> np.ndarray:
    """Allowed cells of the tiles ``(bi[t], bj[t])``, evaluating ``fn`` tile by tile in batches.

    Tiles that stick out past ``n`` are clipped: indices are clamped and the overhang discarded.
    """
    counts = np.zeros(bi.size, dtype=np.int64)
    per_batch = max(1, _CHUNK_CELLS // (b * b))
    for s in range(0, bi.size, per_batch):
        rows = _tile_index(bi[s : s + per_batch] * b, b)[:, :, None]
        cols = _tile_index(bj[s : s + per_batch] * b, b)[:, None, :]
        inside = (rows < n) & (cols < n)
        allowed = fn(np.minimum(rows, n - 1), np.minimum(cols, n - 1))
        counts[s : s + per_batch] = np.count_nonzero(allowed & inside, axis=(1, 2))
    return counts


def _exact_sum(values: np.ndarray) -> int:
    """Sum of an ``int64`` array as a Python integer, without int64 overflow."""
    return sum(int(values[s : s + (1 << 20)].sum()) for s in range(0, values.size, 1 << 20))


def _period_tiles(p: Pattern, b: int) -> int | None:
    """``m`` with ``m * b = lcm(period, b)``: tile rows ``I`` and ``I + m`` are alike; None if aperiodic."""
    return None if p.period is None else math.lcm(p.period, b) // b


def _rect_counts(fn: Callable, r0: np.ndarray, c0: np.ndarray, h: int, w: int) -> np.ndarray:
    """Allowed cells of the ``h x w`` rectangles at rows ``r0[t]``, columns ``c0[t]`` (no clipping)."""
    r0, c0 = np.asarray(r0, dtype=np.int64).ravel(), np.asarray(c0, dtype=np.int64).ravel()
    counts = np.zeros(r0.size, dtype=np.int64)
    per_batch = max(1, _CHUNK_CELLS // max(1, h * w))
    for s in range(0, r0.size, per_batch):
        rows = _tile_index(r0[s : s + per_batch], h)[:, :, None]
        cols = _tile_index(c0[s : s + per_batch], w)[:, None, :]
        allowed = np.broadcast_to(np.asarray(fn(rows, cols), dtype=bool), (rows.shape[0], h, w))
        counts[s : s + per_batch] = np.count_nonzero(allowed, axis=(1, 2))
    return counts


def _rect_status(fn: Callable, r0, c0, h: int, w: int) -> np.ndarray:
    """Tile status (0 empty, 1 partial, 2 full) of ``h x w`` rectangles, ``uint8``."""
    counts = _rect_counts(fn, r0, c0, h, w)
    return np.where(counts == 0, 0, np.where(counts == h * w, 2, 1)).astype(np.uint8)


def _class_rows(m: int, whole: int) -> tuple[np.ndarray, np.ndarray]:
    """Representative tile ``(I, J)`` of every class ``(I mod m, K = I - J)`` of the whole tiles.

    Returns the representatives' ``I`` and ``K``, each ``(m, 2 * whole - 1)``; ``K`` runs from
    ``-(whole - 1)`` to ``whole - 1``. ``I`` is the smallest index ``>= max(K, 0)`` of its residue.
    """
    k = np.arange(-(whole - 1), whole)[None, :]
    residue = np.arange(m)[:, None]
    low = np.maximum(k, 0)
    return low + (residue - low) % m, np.broadcast_to(k, (m, k.size))


def _class_statuses(p: Pattern, b: int, m: int, whole: int) -> np.ndarray:
    """Status of every class ``(I mod m, K)`` of whole tiles, ``uint8 (m, 2 * whole - 1)``, ``K`` from
    ``-(whole - 1)``.

    With a known far rule (:meth:`Pattern._far`) only the diagonals near the main one and one run of
    ``m2`` far diagonals on each side are evaluated; the rest repeat with period ``m2`` (see
    :func:`_periodic_summary`). Otherwise one representative tile per class is evaluated.
    """
    far = p._far()
    if far is not None:
        m2 = math.lcm(p.period, far[1], b) // b
        near = -(-(max(far[0], 0) + b - 1) // b)
        span = near + m2  # diagonals |K| < span are evaluated
    if far is None or span >= whole:
        rep_i, k = _class_rows(m, whole)
        return _rect_status(p.predicate, rep_i * b, (rep_i - k) * b, b, b).reshape(m, 2 * whole - 1)
    k = np.arange(-(span - 1), span)
    residue = np.arange(m)[:, None]
    low = np.maximum(k, 0)[None, :]
    rep_i = low + (residue - low) % m
    evaluated = _rect_status(p.predicate, rep_i * b, (rep_i - k) * b, b, b).reshape(m, k.size)
    # Every diagonal K maps to an evaluated one: itself if |K| < span, else the far one of its run.
    all_k = np.arange(-(whole - 1), whole)
    folded = np.where(
        all_k >= near,
        near + (all_k - near) % m2,
        np.where(all_k <= -near, -near - (-near - all_k) % m2, all_k),
    )
    return evaluated[:, folded + span - 1]


def _periodic_layout(p: Pattern, n: int, b: int, m: int) -> np.ndarray:
    """Block layout (``uint8``) of a shift-invariant pattern from one representative tile per class.

    Whole tiles ``(I, J)`` and ``(I', J')`` have the same status when ``I - J == I' - J'`` and
    ``I == I' (mod m)``. Row ``I`` of the layout is then a reversed slice of the class row
    ``I mod m``: no ``(nb, nb)`` index arrays, one uint8 byte per tile.
    """
    nb, whole = -(-n // b), n // b
    layout = np.empty((nb, nb), dtype=np.uint8)
    if whole:
        classes = _class_statuses(p, b, m, whole)
        # Row I, columns J = 0..whole-1 are the classes K = I .. I - whole + 1: a reversed window.
        flipped = classes[:, ::-1]  # column c holds K = whole - 1 - c
        for r in range(m):
            rows = np.arange(r, whole, m)
            if not rows.size:
                continue
            # Row I needs flipped[r, whole - 1 - I : 2 * whole - 1 - I].
            base = np.ascontiguousarray(flipped[r])
            windows = np.lib.stride_tricks.sliding_window_view(base, whole)
            layout[rows, :whole] = windows[whole - 1 - rows]
    if nb > whole:  # clipped last row and column of tiles
        edge = _tile_counts(p.predicate, n, b, np.full(nb, nb - 1), np.arange(nb))
        layout[nb - 1, :] = _status(edge[None, :], n, b)[-1]
        edge = _tile_counts(p.predicate, n, b, np.arange(nb), np.full(nb, nb - 1))
        layout[:, nb - 1] = _status(edge[:, None], n, b)[:, -1]
    return layout


def _count_residue(lo: int, hi: int, r: int, m: int) -> int:
    """How many integers ``x`` in ``[lo, hi)`` have ``x % m == r``."""
    return max(0, (hi - 1 - r) // m - (lo - 1 - r) // m) if hi > lo else 0


def _periodic_summary(p: Pattern, n: int, b: int) -> tuple[int, int, int] | None:
    """``(empty, partial, full)`` tiles of a periodic pattern whose far rule is known, in closed form.

    A whole tile's status depends on its class ``(I mod m, K = I - J)`` (shift invariance). Once a
    tile diagonal ``K`` lies beyond the pattern's far reach, moving it by ``m2`` tiles (``m2 * b`` a
    multiple of the period and the far shift) keeps the status, and the number of tiles of a class on
    the diagonals ``K0, K0 + m2, ...`` is an arithmetic series. So only the diagonals near the main
    one and one run of ``m2`` far diagonals on each side are evaluated, each from one representative
    tile per residue; the clipped last tile row and column (when ``b`` does not divide ``n``) are
    handled the same way along their length. Work and memory are ``O(m * (reach / b + m2) * b * b)``,
    independent of ``n``.
    """
    m = _period_tiles(p, b)
    far = p._far()
    if m is None or far is None:
        return None
    reach, shift = far
    m2 = math.lcm(p.period, shift, b) // b
    near = -(-(max(reach, 0) + b - 1) // b)  # diagonals K with |K| >= near are entirely far
    if m * (2 * near + 2 * m2 + 2) * b * b > _CLOSED_CELLS:
        return None
    whole, height = n // b, n - (n // b) * b
    tally = [0, 0, 0]

    def add(status: np.ndarray, count: np.ndarray) -> None:
        for code in range(3):
            tally[code] += int(np.sum(np.where(status == code, count, 0).astype(object)))

    if whole:
        # Diagonals evaluated: the near ones, then m2 far ones on each side (tails by series).
        reps_i, reps_j, counts = [], [], []
        for k in range(-(near + m2 - 1), near + m2):
            if not -whole < k < whole:
                continue
            lo, hi = max(0, k), min(whole, whole + k)
            terms = (whole - 1 - abs(k)) // m2 + 1 if abs(k) >= near else 1
            for r in range(m):
                # A far diagonal stands for k, k + m2, ... (away from 0): m2 / m fewer tiles each time.
                first = _count_residue(lo, hi, r, m)
                count = terms * first - (m2 // m) * terms * (terms - 1) // 2
                if count:
                    i = lo + (r - lo) % m
                    reps_i.append(i * b)
                    reps_j.append((i - k) * b)
                    counts.append(count)
        if counts:
            add(_rect_status(p.predicate, reps_i, reps_j, b, b), np.array(counts, dtype=object))
    if height:
        last = whole * b
        for side in (1, -1):  # last tile row (K = whole - J > 0), then last tile column (K < 0)
            ks = [k for k in range(1, near + m2) if k <= whole]
            if not ks:
                continue
            ks_arr = np.array(ks)
            if side == 1:
                status = _rect_status(p.predicate, np.full(len(ks), last), (whole - ks_arr) * b, height, b)
            else:
                status = _rect_status(p.predicate, (whole - ks_arr) * b, np.full(len(ks), last), b, height)
            counts = [1 if k < near else (whole - k) // m2 + 1 for k in ks]
            add(status, np.array(counts, dtype=object))
        add(_rect_status(p.predicate, [last], [last], height, height), np.array([1], dtype=object))
    return tally[0], tally[1], tally[2]


def _global_union_summary(union: Pattern, core: Pattern, g: int, n: int, b: int):
    """``(empty, partial, full)`` of ``core | (first g tokens global)`` from the core's closed form.

    Only tiles in the first ``G = ceil(g / b)`` tile rows or columns change. In each such row (column)
    the tiles near the diagonal and the clipped last tile are evaluated one by one; the far ones repeat
    with the core's period ``m2`` (as in :func:`_periodic_summary`), so one run of ``m2`` tiles stands
    for all of them. Each evaluated tile moves its count from the core's status to the union's.
    """
    base = core._block_summary_closed(n, b)
    far = core._far()
    if base is None or far is None or core.period is None:
        return None
    m2 = math.lcm(core.period, far[1], b) // b
    near = -(-(max(far[0], 0) + b - 1) // b)
    nb, whole, touched = -(-n // b), n // b, -(-g // b)
    if touched * (near + m2 + 2) * b * b > _CLOSED_CELLS:
        return None
    tally = list(base)

    def move(i: int, j: int, count: int) -> None:
        h, w = min(b, n - i * b), min(b, n - j * b)
        before = int(_rect_status(core.predicate, [i * b], [j * b], h, w)[0])
        after = int(_rect_status(union.predicate, [i * b], [j * b], h, w)[0])
        tally[before] -= count
        tally[after] += count

    def line(fixed: int, lo: int, first_far: int, along_rows: bool) -> None:
        """Tiles ``lo..nb-1`` along a tile row (or column) ``fixed``: near ones, then far runs."""
        tile = (lambda t: (t, fixed)) if along_rows else (lambda t: (fixed, t))
        if fixed >= whole:  # the clipped last line (n < g + b): few tiles, all evaluated
            for t in range(lo, nb):
                move(*tile(t), 1)
            return
        start = max(lo, first_far)
        for t in range(lo, min(start, whole)):
            move(*tile(t), 1)
        for t in range(start, min(start + m2, whole)):
            move(*tile(t), (whole - 1 - t) // m2 + 1)
        if nb > whole and nb - 1 >= lo:
            move(*tile(nb - 1), 1)

    for i in range(touched):  # tile rows holding global tokens: all their tiles
        line(i, 0, i + near, along_rows=False)
    for j in range(touched):  # tile columns holding global tokens, below those rows
        line(j, touched, j + near, along_rows=True)
    return tally[0], tally[1], tally[2]


def _periodic_block_counts(p: Pattern, n: int, b: int, m: int) -> np.ndarray:
    """Block counts of a shift-invariant pattern from one representative tile per class.

    Full-size tiles ``(I, J)`` and ``(I', J')`` hold the same cells when ``I - J == I' - J'`` and
    ``I == I' (mod m)``, where ``m * b`` is the least common multiple of ``b`` and the period.
    """
    nb = -(-n // b)
    whole = n // b  # tiles 0..whole-1 are full-size in both directions
    counts = np.empty((nb, nb), dtype=np.int64)
    if whole:
        residues = np.repeat(np.arange(m), 2 * whole - 1)
        offsets = np.tile(np.arange(-(whole - 1), whole), m)
        # The smallest I >= max(offset, 0) with I == residue (mod m) keeps J = I - offset >= 0.
        low = np.maximum(offsets, 0)
        rep_i = low + (residues - low) % m
        classes = _tile_counts(p.predicate, n, b, rep_i, rep_i - offsets).reshape(m, 2 * whole - 1)
        ii, jj = np.meshgrid(np.arange(whole), np.arange(whole), indexing="ij")
        counts[:whole, :whole] = classes[ii % m, ii - jj + whole - 1]
    if nb > whole:  # clipped last row and column of tiles
        edge = np.arange(nb)
        last = np.full(nb, nb - 1)
        counts[nb - 1, :] = _tile_counts(p.predicate, n, b, last, edge)
        counts[:, nb - 1] = _tile_counts(p.predicate, n, b, edge, last)
    return counts


# --------------------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------------------
def _combined_period(parts: Sequence[Pattern]) -> int | None:
    periods = [p.period for p in parts]
    return None if any(x is None for x in periods) else reduce(math.lcm, periods)


class Union(Pattern):
    """Attention allowed where any part allows it; each cell keeps its most specific label."""

    family = "union"
    operator = " | "

    def __init__(self, *parts: Pattern, **params: object) -> None:
        flat: list[Pattern] = []
        for part in parts:
            if not isinstance(part, Pattern):
                raise ValueError(f"can only combine sparsekit patterns, got {type(part).__name__}")
            flat.extend(part.parts if type(part) is type(self) else [part])
        if not flat:
            raise ValueError("parts must hold at least one pattern")
        super().__init__(**params)
        self.parts = tuple(flat)
        self.period = _combined_period(self.parts)

    @property
    def name(self) -> str:
        if self.params:
            return super().name
        return "(" + self.operator.join(p.name for p in self.parts) + ")"

    def _rebuild(self, parts: Sequence[Pattern]) -> Pattern:
        clone = type(self).__new__(type(self))
        clone.__dict__.update(self.__dict__)
        clone.parts, clone.period = tuple(parts), _combined_period(parts)
        return clone

    def bind(self, n: int) -> Pattern:
        parts = [p.bind(n) for p in self.parts]
        return self if all(a is b for a, b in zip(parts, self.parts, strict=True)) else self._rebuild(parts)

    def predicate(self, q, kv):
        return reduce(lambda a, b: a | b, (p.predicate(q, kv) for p in self.parts))

    def _block_summary_closed(self, n: int, b: int) -> tuple[int, int, int] | None:
        widths = [p._leading_globals() for p in self.parts]
        if type(self) is not Intersection and sum(w is not None for w in widths) == 1 and len(self.parts) > 1:
            core = [p for p, w in zip(self.parts, widths, strict=True) if w is None]
            core = core[0] if len(core) == 1 else self._rebuild(core)
            width = next(w for w in widths if w is not None)
            return _global_union_summary(self, core, min(width, n), n, b)
        return super()._block_summary_closed(n, b)

    def _far(self) -> tuple[int, int] | None:
        fars = [p._far() for p in self.parts]
        if any(f is None for f in fars):
            return None
        return max(f[0] for f in fars), reduce(math.lcm, (f[1] for f in fars))

    def code(self, q, kv):
        best = None
        for part in self.parts:
            lab = part.label(q, kv)
            lab = np.where(lab == NO_ATTENTION, 255, lab)
            best = lab if best is None else np.minimum(best, lab)
        return best

    # Parts with a simple shape are added to the others exactly and cheaply: global tokens fill whole
    # rows and columns, and a part that lists its cells (random attention) adds only the cells that
    # nothing else allows. The remaining "core" parts are counted by their own engines.
    def _decompose(self, n: int):
        glob = [p for p in self.parts if p._global_flags(n) is not None]
        listed = [p for p in self.parts if p._listed_cells(n) is not None]
        others = [p for p in self.parts if p not in glob and p not in listed]
        if len(others) == len(self.parts):
            return None
        core = None if not others else others[0] if len(others) == 1 else self._rebuild(others)
        flags = np.zeros(n, dtype=bool)
        for p in glob:
            flags |= p._global_flags(n)
        i = j = np.empty(0, dtype=np.int64)
        if listed:
            cells = [p._listed_cells(n) for p in listed]
            cells = cells[0] if len(cells) == 1 else np.unique(np.concatenate(cells))
            i, j = cells // n, cells % n
            new = ~(flags[i] | flags[j])
            if core is not None:
                new &= ~np.asarray(core.predicate(i, j), dtype=bool)
            i, j = i[new], j[new]
        return core, flags, i, j

    def _core_on_globals(self, core: Pattern, n: int, gcols: np.ndarray) -> np.ndarray:
        """Core cells in global columns, row by row (rows in any chunking)."""
        hits = np.zeros(n, dtype=np.int64)
        step = max(1, _CHUNK_CELLS // max(1, gcols.size))
        for start in range(0, n, step):
            rows = np.arange(start, min(n, start + step))
            hits[rows] = core._dense_rows(n, rows, gcols).sum(axis=1)
        return hits

    def _dense(self, n: int) -> np.ndarray:
        parts = self._decompose(n)
        if parts is None:
            return super()._dense(n)
        core, flags, i, j = parts
        out = core._dense(n) if core is not None else np.zeros((n, n), dtype=bool)
        out[flags] = True
        out[:, flags] = True
        out[i, j] = True
        return out

    def _row_counts(self, n: int) -> np.ndarray:
        parts = self._decompose(n)
        if parts is None:
            return super()._row_counts(n)
        core, flags, i, _ = parts
        gcols = np.flatnonzero(flags)
        counts = np.full(n, gcols.size, dtype=np.int64) + np.bincount(i, minlength=n)
        if core is not None:
            counts += core._row_counts(n) - self._core_on_globals(core, n, gcols)
        counts[flags] = n
        return counts

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        parts = self._decompose(n)
        if parts is not None:
            core, flags, i, j = parts
            nb = -(-n // b)
            counts = np.bincount((i // b) * nb + j // b, minlength=nb * nb).reshape(nb, nb)
            g = np.add.reduceat(flags.astype(np.int64), np.arange(0, n, b))
            size = np.minimum(b, n - np.arange(0, n, b))
            counts += g[:, None] * size + size[:, None] * g - g[:, None] * g
            if core is not None:
                # Core cells outside global rows and columns.
                grows = np.flatnonzero(flags)
                inside = ~flags
                counts += core._block_counts(n, b)
                # Remove core cells that lie in a global row or column (the globals counted them).
                step = max(1, _CHUNK_CELLS // n)
                for s0 in range(0, grows.size, step):
                    r = grows[s0 : s0 + step]
                    hit = core._dense_rows(n, r)
                    ri, ci = np.nonzero(hit)
                    np.subtract.at(counts, (r[ri] // b, ci // b), 1)
                for s0 in range(0, grows.size, step):
                    c = grows[s0 : s0 + step]
                    hit = core._dense_rows(n, np.arange(n), c) & inside[:, None]
                    ri, ci = np.nonzero(hit)
                    np.subtract.at(counts, (ri // b, c[ci] // b), 1)
            return counts
        counts = [p._block_counts(n, b) for p in self.parts]
        area = _block_areas(n, b)
        nonempty = sum((c > 0).astype(np.int64) for c in counts)
        result = np.where(nonempty == 0, 0, -1)
        for c in counts:  # a lone non-empty part decides the tile; so does any full part
            result = np.where((nonempty == 1) & (c > 0), c, result)
            result = np.where(c == area, area, result)
        return _refine(self, n, b, result)


class Intersection(Union):
    """Attention allowed where every part allows it."""

    family = "intersection"
    operator = " & "

    def predicate(self, q, kv):
        return reduce(lambda a, b: a & b, (p.predicate(q, kv) for p in self.parts))

    def _decompose(self, n: int) -> None:
        return None

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        counts = [p._block_counts(n, b) for p in self.parts]
        area = _block_areas(n, b)
        notfull = sum((c < area).astype(np.int64) for c in counts)
        result = np.where(notfull == 0, area, -1)
        for c in counts:
            result = np.where((notfull == 1) & (c < area), c, result)
            result = np.where(c == 0, 0, result)
        return _refine(self, n, b, result)


def _refine(p: Pattern, n: int, b: int, result: np.ndarray) -> np.ndarray:
    """Evaluate the tiles the parts could not decide (marked ``-1``)."""
    bi, bj = np.nonzero(result < 0)
    if bi.size:
        result[bi, bj] = _tile_counts(p.predicate, n, b, bi, bj)
    return result


class Complement(Pattern):
    """Attention allowed exactly where the wrapped pattern forbids it (label 2)."""

    family = "complement"

    def __init__(self, inner: Pattern) -> None:
        if not isinstance(inner, Pattern):
            raise ValueError(f"can only negate a sparsekit pattern, got {type(inner).__name__}")
        super().__init__()
        self.inner = inner
        self.period = inner.period

    @property
    def name(self) -> str:
        return f"~{self.inner.name}"

    def bind(self, n: int) -> Pattern:
        inner = self.inner.bind(n)
        return self if inner is self.inner else Complement(inner)

    def predicate(self, q, kv):
        return ~self.inner.predicate(q, kv)

    def code(self, q, kv):
        return LOCAL

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        return _block_areas(n, b) - self.inner._block_counts(n, b)

    def _nnz_closed(self, n: int) -> int | None:
        inner = self.inner._nnz_closed(n)
        return None if inner is None else n * n - inner

    def _far(self) -> tuple[int, int] | None:
        return self.inner._far()

    def _block_summary_closed(self, n: int, b: int) -> tuple[int, int, int] | None:
        inner = self.inner._block_summary_closed(n, b)
        return None if inner is None else (inner[2], inner[1], inner[0])  # empty and full swap

    def _row_counts(self, n: int) -> np.ndarray:
        return n - self.inner._row_counts(n)

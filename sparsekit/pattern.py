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
from collections.abc import Callable, Sequence
from functools import reduce

import numpy as np

from ._validate import check_int, check_size

#: Label codes of the labelled mask, as in the seed project; smaller non-zero codes are more specific.
NO_ATTENTION, DIAGONAL, LOCAL, GLOBAL = 0, 1, 2, 3
#: Legend names of the label codes, indexed by code.
LABEL_NAMES = ("No attention", "Diagonal", "Local", "Strided, column, global or random")

DEFAULT_MEMORY_BUDGET = 4 * 2**30
_memory_budget = [DEFAULT_MEMORY_BUDGET]

# Largest number of predicate cells evaluated at once; bounds every temporary array.
_CHUNK_CELLS = 1 << 22
# Tile size used internally for the block engine when a view needs no particular size.
_ENGINE_BLOCK = 128


def set_memory_budget(nbytes: int) -> int:
    """Set the largest dense or labelled mask (in bytes) that :meth:`Pattern.dense` will build.

    Returns the previous budget. The default is 4 GiB.
    """
    previous = _memory_budget[0]
    _memory_budget[0] = check_int("nbytes", nbytes, low=1)
    return previous


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

        Refuses with ``ValueError`` when the mask would exceed ``max_bytes`` (default: the budget of
        :func:`set_memory_budget`); use :meth:`row_counts`, :meth:`nnz` or :meth:`blocks` instead.
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
        return np.asarray(p._row_counts(n), dtype=np.int64)

    def nnz(self, n: int) -> int:
        """Exact number of allowed (query, key) cells."""
        return int(self.row_counts(n).sum())

    def density(self, n: int) -> float:
        """Exact fraction of allowed cells, ``nnz / n**2``."""
        n = check_size(n)
        return self.nnz(n) / (n * n)

    def sparsity(self, n: int) -> float:
        """Exact fraction of masked cells, ``1 - nnz / n**2``."""
        n = check_size(n)
        return (n * n - self.nnz(n)) / (n * n)

    def block_counts(self, n: int, block_size: int = 128) -> np.ndarray:
        """Allowed cells in each ``block_size x block_size`` tile, ``int64 (ceil(n/b), ceil(n/b))``.

        The last tile row and column are smaller when ``block_size`` does not divide ``n``.
        """
        p = self.bind(n)
        b = check_int("block_size", block_size, low=1)
        return p._block_counts(n, b)

    def blocks(self, n: int, block_size: int = 128) -> np.ndarray:
        """Block layout, ``uint8 (ceil(n/b), ceil(n/b))``: 0 empty, 1 partial, 2 full tile."""
        counts = self.block_counts(n, block_size)
        area = _block_areas(n, block_size)
        return np.where(counts == 0, 0, np.where(counts == area, 2, 1)).astype(np.uint8)

    def block_summary(self, n: int, block_size: int = 128) -> dict[str, int | float]:
        """Tile counts of the block layout: ``empty``, ``partial``, ``full``, ``tiles`` and
        ``block_sparsity`` (the fraction of tiles that are empty, i.e. skipped by a block-sparse kernel).
        """
        layout = self.blocks(n, block_size)
        empty, partial, full = (int(c) for c in np.bincount(layout.ravel(), minlength=3))
        return {
            "empty": empty,
            "partial": partial,
            "full": full,
            "tiles": int(layout.size),
            "block_sparsity": empty / layout.size,
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
        return _ordered_cells(self.bind(n), n, column_first=order == "column_first")

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
def _check_budget(n: int, max_bytes: int | None, view: str) -> None:
    budget = _memory_budget[0] if max_bytes is None else check_int("max_bytes", max_bytes, low=1)
    need = n * n
    if need > budget:
        raise ValueError(
            f"{view}({n}) needs {need / 2**30:.2f} GiB, over the memory budget of "
            f"{budget / 2**30:.2f} GiB; use row_counts(n), nnz(n), sparsity(n) or blocks(n) for "
            f"exact figures without the n x n mask, or raise the budget with max_bytes= or "
            f"sparsekit.set_memory_budget()"
        )


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

    def _row_counts(self, n: int) -> np.ndarray:
        return n - self.inner._row_counts(n)

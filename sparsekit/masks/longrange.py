"""Long-range patterns: global tokens, random attention, and their unions BigBird and Longformer."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from .._validate import check_int
from ..pattern import GLOBAL, Pattern, Union, _is_torch
from .local import Band, band_nnz, band_rows_nnz, sliding_window, window


# Torch tensors take elementwise routes in this module, not the numpy ``(row == x[..., None]).any(-1)``.
# torch.compile's CPU FlexAttention kernel lowers the mask_mod graph, traced on 0-d indices, a second
# time on 2-D index tiles, where ``x[..., None]`` (traced as ``unsqueeze(x, 0)``) and the reduction act on
# the wrong axes. With torch 2.13, lists shorter than inductor's unroll_reductions_threshold (8) compiled
# silently wrong (the list's length was taken for the key tile's width) and longer ones failed to compile
# ("Buffers cannot be created while lowering a pointwise subgraph"). Elementwise gathers and comparisons
# lower correctly.
def _member(x: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``x`` is one of ``values``, elementwise (numpy arrays)."""
    return (x[..., None] == values).any(-1)


class GlobalTokens(Pattern):
    """Global tokens attend everywhere and are attended by everyone."""

    family = "global_tokens"

    def __init__(self, width: int | None, indices: np.ndarray | None) -> None:
        shown = None if indices is None else tuple(int(i) for i in indices)
        super().__init__(width=width, indices=shown)
        self.width, self.indices = width, indices
        self._torch_tables: dict = {}

    def bind(self, n: int) -> Pattern:
        super().bind(n)
        if self.width is not None and self.width > n:
            raise ValueError(f"global width must be an integer in [0, n={n}], got {self.width}")
        if self.indices is not None and self.indices.size and self.indices[-1] >= n:
            raise ValueError(f"global indices must lie in [0, n - 1 = {n - 1}], got {int(self.indices[-1])}")
        return self

    def _is_global(self, x):
        if self.width is not None:
            return x < self.width
        if not _is_torch(x):
            return _member(x, self.indices)
        # One gather in a table of flags up to the last global index, instead of one test per index.
        key = str(x.device)
        if key not in self._torch_tables:
            import torch

            last = int(self.indices[-1]) if self.indices.size else 0
            flags = np.zeros(last + 1, dtype=bool)
            flags[self.indices] = True
            self._torch_tables[key] = torch.as_tensor(flags, device=x.device), last
        flags, last = self._torch_tables[key]
        return flags[x.clamp(0, last)] & (x >= 0) & (x <= last)

    def predicate(self, q, kv):
        return self._is_global(q) | self._is_global(kv)

    def code(self, q, kv):
        return GLOBAL

    def _global_flags(self, n: int) -> np.ndarray:
        return np.asarray(self._is_global(np.arange(n)), dtype=bool)

    def _row_counts(self, n: int) -> np.ndarray:
        flags = self._global_flags(n)
        return np.where(flags, n, np.count_nonzero(flags)).astype(np.int64)

    def _count(self, n: int) -> int:
        """Number of global tokens below ``n``."""
        if self.width is not None:
            return min(self.width, n)
        return int(np.searchsorted(self.indices, n))

    def _nnz_closed(self, n: int) -> int:
        return n * n - (n - self._count(n)) ** 2  # every cell but those between two plain tokens

    def _leading_globals(self) -> int | None:
        return self.width

    def _block_summary_closed(self, n: int, b: int) -> tuple[int, int, int]:
        # A tile is empty unless its rows or columns hold a global token, and full when all its rows
        # (or all its columns) are global tokens.
        nb = -(-n // b)
        if self.width is not None:
            width = min(self.width, n)
            touched, covered = -(-width // b), width // b + (width == n and n % b != 0)
        else:
            tiles, per_tile = np.unique(self.indices[self.indices < n] // b, return_counts=True)
            size = np.minimum(b, n - tiles * b)
            touched, covered = tiles.size, int(np.count_nonzero(per_tile == size))
        empty, full = (nb - touched) ** 2, nb * nb - (nb - covered) ** 2
        return empty, nb * nb - empty - full, full

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        flags = self._global_flags(n).astype(np.int64)
        g = np.add.reduceat(flags, np.arange(0, n, b))  # global tokens per tile row/column
        size = np.minimum(b, n - np.arange(0, n, b))
        return g[:, None] * size[None, :] + size[:, None] * g[None, :] - g[:, None] * g[None, :]


# Random attention on torch tensors ORs one comparison per key up to this many keys per row, and searches
# longer rows in groups. Compiled FlexAttention on the CPU, n = 2048 (torch 2.13, busy 2-core machine):
# 128 keys ORed compile in 15 s and run in 333 ms; 400 keys ORed 68 s and 633 ms, in groups 22 s and 705 ms.
_UNROLLED_KEYS = 128


def _draw_rows(n: int, k: int, seed: int) -> np.ndarray:
    """``k`` distinct columns per row, uniformly, sorted; reproducible from ``(seed, n)``."""
    rng = np.random.default_rng(seed)
    if k <= 32:
        # Floyd's algorithm, vectorized over rows: O(n * k^2) work, O(n * k) memory.
        chosen = np.empty((n, k), dtype=np.int64)
        for s, top in enumerate(range(n - k, n)):
            pick = rng.integers(0, top + 1, size=n)
            taken = (chosen[:, :s] == pick[:, None]).any(axis=1)
            chosen[:, s] = np.where(taken, top, pick)
    else:
        # The k smallest of n random keys per row, a few rows at a time.
        chosen = np.empty((n, k), dtype=np.int64)
        step = max(1, (1 << 22) // n)
        for start in range(0, n, step):
            keys = rng.random((min(step, n - start), n))
            chosen[start : start + step] = np.argpartition(keys, k - 1, axis=1)[:, :k]
    chosen.sort(axis=1)
    return chosen


class Random(Pattern):
    """Each query row attends to exactly ``nz_per_row`` distinct keys drawn uniformly."""

    family = "random"

    def __init__(self, nz_per_row: int, seed: int, size: int | None = None) -> None:
        super().__init__(nz_per_row=nz_per_row, seed=seed, size=size)
        self.nz_per_row, self.seed, self.size = nz_per_row, seed, size
        self._table: np.ndarray | None = None
        self._torch_tables: dict = {}

    def bind(self, n: int) -> Pattern:
        n = check_int("n", n, low=1)
        if self.nz_per_row > n:
            raise ValueError(f"nz_per_row must be an integer in [0, n={n}], got {self.nz_per_row}")
        return self if self.size == n else Random(self.nz_per_row, self.seed, n)

    @property
    def table(self) -> np.ndarray:
        """Sorted key indices of each row, shape ``(size, nz_per_row)``."""
        if self.size is None:
            raise ValueError(
                f"{self.name} depends on the sequence length: build it with size=n or call "
                f".bind(n) before evaluating the predicate"
            )
        if self._table is None:
            self._table = _draw_rows(self.size, self.nz_per_row, self.seed)
        return self._table

    def predicate(self, q, kv):
        table = self.table
        if _is_torch(q):
            return self._torch_predicate(q, kv)
        return (table[q] == kv[..., None]).any(-1)

    def _torch_predicate(self, q, kv):
        """The predicate on torch tensors, elementwise (see :func:`_member`).

        Each row's sorted keys are split into groups of ``size`` keys (one group up to
        ``_UNROLLED_KEYS`` keys, about ``sqrt(r)`` keys above). The index of the group that may hold
        ``kv`` is the number of groups after the first whose first key is ``<= kv``; then one
        comparison per key of that group, ORed. With a single group every gather reads one key for a
        whole row of ``kv``: measured faster to compile and to run than a binary search in the row.
        Groups make about ``2 sqrt(r)`` comparisons instead of ``r`` for long rows.
        """
        import torch

        r = self.nz_per_row
        if r == 0:
            return torch.zeros_like(q == kv)
        size = r if r <= _UNROLLED_KEYS else math.isqrt(r - 1) + 1
        groups = -(-r // size)
        key = str(q.device)
        if key not in self._torch_tables:
            # Rows padded to whole groups with a key above every index: never equal, never <= kv.
            padded = np.full((self.table.shape[0], groups * size), np.iinfo(np.int64).max, dtype=np.int64)
            padded[:, :r] = self.table
            self._torch_tables[key] = torch.as_tensor(padded.ravel(), device=q.device)
        flat = self._torch_tables[key]
        row = q * (groups * size)
        start = row
        for g in range(1, groups):
            start = start + (flat[row + g * size] <= kv) * size
        out = flat[start] == kv
        for j in range(1, size):
            out = out | (flat[start + j] == kv)
        return out

    def code(self, q, kv):
        return GLOBAL

    def _dense(self, n: int) -> np.ndarray:
        out = np.zeros((n, n), dtype=bool)
        out[np.repeat(np.arange(n), self.nz_per_row), self.table.ravel()] = True
        return out

    def _row_counts(self, n: int) -> np.ndarray:
        return np.full(n, self.nz_per_row, dtype=np.int64)

    def _nnz_closed(self, n: int) -> int:
        return n * self.nz_per_row  # distinct keys per row: no table needed

    def _listed_cells(self, n: int) -> np.ndarray:
        return (np.arange(n)[:, None] * n + self.table).ravel()

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        nb = -(-n // b)
        rows = np.repeat(np.arange(n) // b, self.nz_per_row)
        flat = rows * nb + (self.table.ravel() // b)
        return np.bincount(flat, minlength=nb * nb).reshape(nb, nb).astype(np.int64)


def global_tokens(width: int | None = None, indices: Sequence[int] | None = None) -> Pattern:
    """Global attention: query ``i`` attends to ``j`` when ``i`` or ``j`` is a global token.

    Give exactly one of ``width`` (the first ``width`` tokens are global) or ``indices`` (any set).

    Parameters
    ----------
    width : int, optional
        Number of leading global tokens; in ``[0, n]``.
    indices : sequence of int, optional
        Positions of the global tokens; each in ``[0, n - 1]``.
    """
    if (width is None) == (indices is None):
        raise ValueError("global_tokens needs exactly one of width= or indices=")
    if width is not None:
        return GlobalTokens(check_int("width", width, low=0), None)
    values = [check_int("indices[]", v, low=0) for v in np.asarray(indices).ravel().tolist()]
    return GlobalTokens(None, np.unique(np.asarray(values, dtype=np.int64)))


def random(nz_per_row: int, seed: int = 0, size: int | None = None) -> Pattern:
    """Random attention (Zaheer et al., 2020): ``nz_per_row`` distinct uniform keys per query.

    The draw depends on ``(seed, n)`` only, so the same arguments give the same mask every time.
    The columns are drawn when the length is known: pass ``size=n`` or call ``.bind(n)`` before
    evaluating the predicate directly; the views (``dense(n)``, ...) bind automatically.

    Parameters
    ----------
    nz_per_row : int
        Keys per query row; in ``[0, n]``.
    seed : int
        Seed of ``numpy.random.default_rng``; ``>= 0``.
    size : int, optional
        Sequence length to bind to now.
    """
    nz_per_row = check_int("nz_per_row", nz_per_row, low=0)
    seed = check_int("seed", seed, low=0)
    pattern = Random(nz_per_row, seed)
    return pattern if size is None else pattern.bind(size)


class BigBird(Union):
    """BigBird's union of random, window and global attention."""

    family = "bigbird"


class Longformer(Union):
    """Longformer's union of a sliding window and global tokens."""

    family = "longformer"

    def _nnz_closed(self, n: int) -> int | None:
        band, glob = self.parts
        if not isinstance(band, Band) or not isinstance(glob, GlobalTokens) or glob.width is None:
            return None
        # Band cells plus global cells minus the band cells in a global row or column; the band is
        # symmetric, so its cells in the first g columns equal those in the first g rows.
        g, h = min(glob.width, n), band.half_width
        overlap = 2 * band_rows_nnz(n, g, h) - band_nnz(g, h)
        return band_nnz(n, h) + glob._nnz_closed(n) - overlap


def bigbird(
    nz_per_row: int, diagonal_width: int, global_width: int, seed: int = 0, size: int | None = None
) -> Pattern:
    """BigBird attention (Zaheer et al., 2020): random OR window OR global, labels of its parts.

    Parameters
    ----------
    nz_per_row : int
        Random keys per query row; in ``[0, n]``.
    diagonal_width : int
        Width of the band, see :func:`window`; ``>= 0``.
    global_width : int
        Leading global tokens; in ``[0, n]``.
    seed : int
        Seed of the random part.
    size : int, optional
        Sequence length to bind the random part to now.
    """
    parts = (random(nz_per_row, seed), window(diagonal_width), global_tokens(global_width))
    pattern = BigBird(
        *parts,
        nz_per_row=nz_per_row,
        diagonal_width=diagonal_width,
        global_width=global_width,
        seed=seed,
    )
    return pattern if size is None else pattern.bind(size)


def longformer(window: int, global_width: int) -> Pattern:
    """Longformer attention (Beltagy et al., 2020): sliding window OR the first global tokens.

    Parameters
    ----------
    window : int
        Sliding-window width, see :func:`sliding_window`; ``>= 0``.
    global_width : int
        Leading global tokens; in ``[0, n]``.
    """
    parts = (sliding_window(window), global_tokens(global_width))
    return Longformer(*parts, window=window, global_width=global_width)

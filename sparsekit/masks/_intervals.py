"""Patterns whose every row is a few runs of consecutive keys, and their exact tile counts.

Most masks since 2023 (sinks, prefixes, chunks, documents, 2-D neighbourhoods, block-sparse BigBird)
allow, in row ``q``, the keys of a few disjoint intervals ``[lo_k(q), hi_k(q))``. Row counts are then
``sum(hi - lo)`` and the ``b x b`` tile counts follow from the intervals alone, in ``O(K n + (n/b)^2)``
work, without evaluating a single cell.
"""

from __future__ import annotations

import numpy as np

from ..pattern import Pattern
from .causal import Causal
from .local import Band, BlockLocal


def interval_block_counts(lo: np.ndarray, hi: np.ndarray, n: int, b: int) -> np.ndarray:
    """Allowed cells per ``b x b`` tile of rows made of the disjoint intervals ``[lo[k, q], hi[k, q])``.

    ``lo`` and ``hi`` have shape ``(K, n)`` with ``0 <= lo <= hi <= n`` (empty intervals allowed).
    An interval adds its first piece to the tile of its first key and its last piece to the tile of
    its last key; every tile strictly between gets ``b`` cells, recorded as a difference along the
    tile row and summed once at the end. Empty intervals add zero everywhere.
    """
    nb = -(-n // b)
    base = (np.arange(n, dtype=np.int64) // b) * (nb + 1)
    first = np.minimum(lo // b, nb - 1)  # only an empty interval at n reaches past the last tile
    last = np.maximum((hi - 1) // b, first)
    size = nb * (nb + 1)
    head = np.minimum(hi, (first + 1) * b) - lo
    tail = np.where(last > first, hi - last * b, 0)
    counts = np.bincount((base + first).ravel(), weights=head.ravel(), minlength=size)
    counts += np.bincount((base + last).ravel(), weights=tail.ravel(), minlength=size)
    # +1 after the first tile, -1 at the last one: the difference cancels when they coincide.
    between = np.bincount((base + first + 1).ravel(), minlength=size)
    between -= np.bincount((base + np.maximum(last, first + 1)).ravel(), minlength=size)
    counts += b * np.cumsum(between.reshape(nb, nb + 1), axis=1).ravel()
    return np.rint(counts.reshape(nb, nb + 1)[:, :nb]).astype(np.int64)


def row_intervals(pattern: Pattern, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """``(lo, hi)`` of shape ``(K, n)`` when every row of ``pattern`` is ``K`` disjoint key intervals.

    Known for the interval patterns of this module and for causal attention, bands (sliding window,
    BigBird's window) and block-local attention; ``None`` for any other pattern.
    """
    if not has_row_intervals(pattern):
        return None
    q = np.arange(n, dtype=np.int64)
    if isinstance(pattern, IntervalRows):
        return pattern._intervals(n)
    if isinstance(pattern, Causal):
        return np.zeros((1, n), np.int64), (q + 1)[None]
    if isinstance(pattern, Band):
        h = pattern.half_width
        if h < 0:
            return np.zeros((1, n), np.int64), np.zeros((1, n), np.int64)
        return np.maximum(q - h, 0)[None], np.minimum(q + h + 1, n)[None]
    start = q // pattern.block * pattern.block  # block-local
    return start[None], np.minimum(start + pattern.block, n)[None]


def has_row_intervals(pattern: Pattern) -> bool:
    """Whether :func:`row_intervals` knows the intervals of ``pattern``."""
    if isinstance(pattern, IntervalRows):
        return pattern._has_intervals()
    return isinstance(pattern, Causal | Band | BlockLocal)


class IntervalRows(Pattern):
    """A pattern whose row ``q`` allows the keys of a few disjoint intervals (see :func:`row_intervals`).

    Subclasses implement :meth:`_intervals`; row and tile counts follow from it exactly.
    """

    def _intervals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)``, ``int64 (K, n)``: the disjoint key intervals of every row, clipped to ``[0, n]``."""
        raise NotImplementedError

    def _has_intervals(self) -> bool:
        return True

    def _row_counts(self, n: int) -> np.ndarray:
        lo, hi = self._intervals(n)
        return (hi - lo).sum(axis=0)

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        lo, hi = self._intervals(n)
        return interval_block_counts(lo, hi, n, b)

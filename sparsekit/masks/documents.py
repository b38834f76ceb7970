"""Document masks for packed sequences: attention stays inside each document.

Training packs several documents into one sequence; each token must attend only within its own
document, with any rule inside (causal by default), as if the documents had been run one by one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._validate import check_int, check_size
from ..pattern import Pattern, _is_torch, _tile_counts
from ._intervals import IntervalRows, has_row_intervals, row_intervals
from .causal import causal


class Document(IntervalRows):
    """``doc(q) == doc(kv) and inner(q - start(q), kv - start(kv))``; labels those of ``inner``.

    Attributes
    ----------
    lengths : tuple of int
        The document lengths, in sequence order.
    starts : numpy.ndarray
        First token of each document, ``int64 (len(lengths),)``.
    length : int
        ``sum(lengths)``; views require ``n == length``.
    inner : Pattern
        The rule inside each document, in in-document positions.
    """

    family = "document"

    def __init__(self, lengths: tuple[int, ...], inner: Pattern, params: dict) -> None:
        super().__init__(**params)
        self.lengths, self.inner = lengths, inner
        sizes = np.asarray(lengths, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.length = int(sizes.sum())
        self._doc = np.repeat(np.arange(sizes.size, dtype=np.int64), sizes)
        self._start = np.repeat(self.starts, sizes)  # first token of each token's document
        self._torch_tables: dict = {}

    def bind(self, n: int) -> Pattern:
        n = check_size(n)
        if n != self.length:
            raise ValueError(
                f"{self.name}: n = {n} but sum(lengths) = {self.length}; n must equal sum(lengths)"
            )
        return self

    def _tables(self, x):
        """``(document, start)`` of each token of ``x``, numpy or torch; indices are clamped into range."""
        last = self.length - 1
        if _is_torch(x):
            import torch

            key = str(x.device)
            if key not in self._torch_tables:
                self._torch_tables[key] = tuple(
                    torch.as_tensor(t, device=x.device) for t in (self._doc, self._start)
                )
            doc, start = self._torch_tables[key]
            x = x.clamp(0, last)
            return doc[x], start[x]
        x = np.clip(x, 0, last)
        return self._doc[x], self._start[x]

    def predicate(self, q, kv):
        doc_q, start_q = self._tables(q)
        doc_kv, start_kv = self._tables(kv)
        inside = (q < self.length) & (kv < self.length)
        return inside & (doc_q == doc_kv) & self.inner.predicate(q - start_q, kv - start_kv)

    def code(self, q, kv):
        q, kv = np.asarray(q), np.asarray(kv)
        return self.inner.code(q - self._tables(q)[1], kv - self._tables(kv)[1])

    # Counts: the inner pattern's counts for each distinct document length, placed at each start.
    def _by_length(self):
        sizes = np.asarray(self.lengths, dtype=np.int64)
        for size in np.unique(sizes).tolist():
            yield size, self.starts[sizes == size]

    def _intervals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        parts = {size: row_intervals(self.inner, size) for size, _ in self._by_length()}
        k = max(lo.shape[0] for lo, _ in parts.values())
        lo, hi = np.zeros((k, n), np.int64), np.zeros((k, n), np.int64)
        for size, starts in self._by_length():
            rows = (starts[:, None] + np.arange(size)).ravel()
            inner_lo, inner_hi = parts[size]
            shift = np.repeat(starts, size)
            lo[: inner_lo.shape[0], rows] = np.tile(inner_lo, starts.size) + shift
            hi[: inner_lo.shape[0], rows] = np.tile(inner_hi, starts.size) + shift
        return lo, hi

    def _row_counts(self, n: int) -> np.ndarray:
        counts = np.empty(n, dtype=np.int64)
        for size, starts in self._by_length():
            rows = (starts[:, None] + np.arange(size)).ravel()
            counts[rows] = np.tile(self.inner.row_counts(size), starts.size)
        return counts

    def _nnz_closed(self, n: int) -> int:
        return sum(starts.size * self.inner.nnz(size) for size, starts in self._by_length())

    def _has_intervals(self) -> bool:
        return has_row_intervals(self.inner)

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        if self._has_intervals():
            return super()._block_counts(n, b)
        nb = -(-n // b)
        if not (self.starts % b).any():
            # Documents start on tile boundaries: each one's tiles are the inner rule's own.
            counts = np.zeros((nb, nb), dtype=np.int64)
            for size, starts in self._by_length():
                inner = self.inner.block_counts(size, b)
                k = inner.shape[0]
                for tile in (starts // b).tolist():
                    counts[tile : tile + k, tile : tile + k] = inner
            return counts
        # Any other inner rule: only tiles that meet a document's diagonal square can hold a cell.
        # The squares meeting tile row I span the tile columns of its first to its last document.
        top = np.arange(nb) * b
        bottom = np.minimum(top + b, n) - 1
        first = self._start[top] // b
        last = (self._start[bottom] + np.asarray(self.lengths)[self._doc[bottom]] - 1) // b
        width = last - first + 1
        rows = np.repeat(np.arange(nb), width)
        cols = np.arange(rows.size) - np.repeat(np.cumsum(width) - width - first, width)
        counts = np.zeros((nb, nb), dtype=np.int64)
        counts[rows, cols] = _tile_counts(self.predicate, n, b, rows, cols)
        return counts


def document(lengths: Sequence[int], inner: Pattern | None = None) -> Pattern:
    """Document mask of packed sequences: attention only inside each document.

    The documents are consecutive runs of ``lengths`` tokens; query ``q`` may attend to ``kv`` when
    both lie in the same document and ``inner(q - start(q), kv - start(kv))`` allows it, positions
    counted from the document's first token. Labels are the inner rule's. Views require
    ``n == sum(lengths)``.

    Parameters
    ----------
    lengths : sequence of int
        Tokens of each document, each ``>= 1``; at least one document.
    inner : Pattern, optional
        The rule inside each document; :func:`causal` by default. A rule that depends on the length
        (random attention, a grid) is bound to each document's length, and must then give the same
        pattern for every length present (documents of one length).
    """
    if isinstance(lengths, str | bytes) or not isinstance(lengths, Sequence | np.ndarray):
        raise ValueError(f"lengths must be a sequence of integers >= 1, got {lengths!r}")
    sizes = tuple(check_int(f"lengths[{k}]", v, low=1) for k, v in enumerate(np.asarray(lengths).tolist()))
    if not sizes:
        raise ValueError("lengths must hold at least one document length >= 1")
    if inner is None:
        inner = causal()
    if not isinstance(inner, Pattern):
        raise ValueError(f"inner must be a sparsekit Pattern or None, got {type(inner).__name__}")
    bound = [inner.bind(size) for size in sorted(set(sizes))]
    if any(p is not bound[0] for p in bound):
        raise ValueError(
            f"inner={inner.name} depends on the sequence length, so it needs documents of a single "
            f"length; got lengths {sorted(set(sizes))}"
        )
    shown = {"lengths": sizes, "inner": None if inner.family == "causal" else inner.name}
    return Document(sizes, bound[0], shown)

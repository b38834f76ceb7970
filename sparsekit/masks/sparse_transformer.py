"""The two factorized patterns of the Sparse Transformer (Child et al., 2019): strided and fixed."""

from __future__ import annotations

import numpy as np

from .._validate import check_int
from ..pattern import DIAGONAL, GLOBAL, LOCAL, Pattern, floor_sum


class Strided(Pattern):
    """Causal; the previous ``window`` tokens plus every ``stride``-th token before them."""

    family = "strided"
    period = 1

    def __init__(self, window: int, stride: int) -> None:
        super().__init__(window=window, stride=stride)
        self.window, self.stride = window, stride

    def predicate(self, q, kv):
        d = q - kv
        return (d >= 0) & ((d < self.window) | (d % self.stride == 0))

    def code(self, q, kv):
        d = q - kv
        return np.where(d == 0, DIAGONAL, np.where(d < self.window, LOCAL, GLOBAL))

    def _row_counts(self, n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.int64)
        local = np.minimum(i + 1, self.window)
        # Offsets d in [window, i] with d % stride == 0; floor division keeps window = 0 right too.
        w, s = self.window, self.stride
        return local + np.where(i >= w, i // s - (w - 1) // s, 0)

    def _nnz_closed(self, n: int) -> int:
        # Sum of the row counts above: the local part is min(i + 1, w); the strided part sums
        # i // s - (w - 1) // s over the rows i in [w, n).
        w, s = self.window, self.stride
        local = n * (n + 1) // 2 if n <= w else w * (w + 1) // 2 + (n - w) * w
        strided = floor_sum(n, s) - floor_sum(w, s) - (n - w) * ((w - 1) // s) if n > w else 0
        return local + strided

    def _far(self) -> tuple[int, int]:
        # Past the window a key is taken when d % stride == 0: moving the query by stride keeps that.
        return max(self.window, 1), self.stride


class Fixed(Pattern):
    """Causal; the query's own block plus the last ``summary`` columns of every block."""

    family = "fixed"

    def __init__(self, block: int, summary: int) -> None:
        super().__init__(block=block, summary=summary)
        self.block, self.summary = block, summary
        self.period = block

    def predicate(self, q, kv):
        b = self.block
        return (kv <= q) & ((kv // b == q // b) | (kv % b >= b - self.summary))

    def code(self, q, kv):
        same_block = kv // self.block == q // self.block
        return np.where(q == kv, DIAGONAL, np.where(same_block, LOCAL, GLOBAL))

    def _row_counts(self, n: int) -> np.ndarray:
        i = np.arange(n, dtype=np.int64)
        return i % self.block + 1 + (i // self.block) * self.summary

    def _nnz_closed(self, n: int) -> int:
        # Sum over rows of (i % block) + 1 + (i // block) * summary.
        b = self.block
        q, r = divmod(n, b)
        within = q * b * (b - 1) // 2 + r * (r - 1) // 2
        return within + n + self.summary * floor_sum(n, b)

    def _far(self) -> tuple[int, int]:
        # A key a block or more before the query is taken by its column alone (the summary columns).
        return self.block, 1


def strided(window: int, stride: int) -> Pattern:
    """Strided attention (Child et al., 2019).

    Query ``i`` attends to key ``j`` when ``j <= i`` and either ``i - j < window`` (local, label 2)
    or ``(i - j) % stride == 0`` (strided, label 3); the diagonal is labelled 1.

    Parameters
    ----------
    window : int
        Number of most recent tokens, the query included, seen densely; ``>= 0``.
    stride : int
        Spacing of the strided keys; ``>= 1``.
    """
    return Strided(check_int("window", window, low=0), check_int("stride", stride, low=1))


def fixed(block: int, summary: int = 1) -> Pattern:
    """Fixed attention (Child et al., 2019).

    Query ``i`` attends to key ``j <= i`` in its own block of ``block`` tokens (label 2) and to the
    last ``summary`` tokens of every block, ``j % block >= block - summary`` (label 3).

    Parameters
    ----------
    block : int
        Block length; ``>= 1``.
    summary : int
        Summary columns at the end of each block; in ``[0, block]``.
    """
    block = check_int("block", block, low=1)
    return Fixed(block, check_int("summary", summary, low=0, high=block))

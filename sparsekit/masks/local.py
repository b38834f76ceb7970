"""Local patterns: bands around the diagonal (plain or dilated) and disjoint blocks."""

from __future__ import annotations

import numpy as np

from .._validate import check_int
from ..pattern import DIAGONAL, LOCAL, Pattern, floor_sum


def _band_counts(n: int, reach: int, step: int = 1) -> np.ndarray:
    """Keys ``j = i + k * step`` with ``|k| <= reach`` inside ``[0, n)``, for every row ``i``."""
    i = np.arange(n, dtype=np.int64)
    if reach < 0:
        return np.zeros(n, dtype=np.int64)
    return 1 + np.minimum(reach, i // step) + np.minimum(reach, (n - 1 - i) // step)


def _min_sum(n: int, reach: int, step: int) -> int:
    """``sum(min(reach, i // step) for i in range(n))`` in closed form (Python integers)."""
    if n <= reach * step:
        return floor_sum(n, step)
    return floor_sum(reach * step, step) + (n - reach * step) * reach


def band_nnz(n: int, reach: int, step: int = 1) -> int:
    """Exact non-zeros of :func:`_band_counts`: ``n + 2 * sum(min(reach, i // step) for i < n)``."""
    if reach < 0:
        return 0
    return n + 2 * _min_sum(n, reach, step)


def band_rows_nnz(n: int, rows: int, reach: int) -> int:
    """Cells of the band ``|i - j| <= reach`` (at length ``n``) in the first ``rows`` rows."""
    if reach < 0 or rows <= 0:
        return 0
    # Row i holds 1 + min(reach, i) + min(reach, n - 1 - i); the last sum runs over n - rows .. n - 1.
    right = _min_sum(n, reach, 1) - _min_sum(n - rows, reach, 1)
    return rows + _min_sum(rows, reach, 1) + right


class Band(Pattern):
    """``|i - j| <= half_width``; nothing at all when ``half_width`` is negative."""

    period = 1

    def __init__(self, family: str, half_width: int, **params: object) -> None:
        super().__init__(**params)
        self.family, self.half_width = family, half_width

    def predicate(self, q, kv):
        return abs(q - kv) <= self.half_width

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, LOCAL)

    def _row_counts(self, n: int) -> np.ndarray:
        return _band_counts(n, self.half_width)

    def _nnz_closed(self, n: int) -> int:
        return band_nnz(n, self.half_width)

    def _far(self) -> tuple[int, int]:
        return max(self.half_width + 1, 1), 1  # nothing beyond the band


class DilatedBand(Pattern):
    """``|i - j|`` a multiple of ``dilation`` and at most ``window // 2`` steps away."""

    family = "dilated_sliding_window"
    period = 1

    def __init__(self, window: int, dilation: int) -> None:
        super().__init__(window=window, dilation=dilation)
        self.reach, self.dilation = window // 2, dilation

    def predicate(self, q, kv):
        d = abs(q - kv)
        return (d % self.dilation == 0) & (d // self.dilation <= self.reach)

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, LOCAL)

    def _row_counts(self, n: int) -> np.ndarray:
        return _band_counts(n, self.reach, self.dilation)

    def _nnz_closed(self, n: int) -> int:
        return band_nnz(n, self.reach, self.dilation)

    def _far(self) -> tuple[int, int]:
        return self.reach * self.dilation + 1, 1  # nothing beyond the farthest neighbour


class BlockLocal(Pattern):
    """``i // block == j // block``: disjoint dense blocks on the diagonal."""

    family = "block_local"

    def __init__(self, block: int) -> None:
        super().__init__(block=block)
        self.block = self.period = block

    def predicate(self, q, kv):
        return q // self.block == kv // self.block

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, LOCAL)

    def _row_counts(self, n: int) -> np.ndarray:
        start = np.arange(n, dtype=np.int64) // self.block * self.block
        return np.minimum(self.block, n - start)

    def _nnz_closed(self, n: int) -> int:
        q, r = divmod(n, self.block)
        return q * self.block * self.block + r * r

    def _far(self) -> tuple[int, int]:
        return self.block, 1  # a block or more apart: never the same block


def sliding_window(window: int) -> Pattern:
    """Bidirectional sliding window: ``|i - j| <= window // 2`` (``window`` neighbours plus self).

    Parameters
    ----------
    window : int
        Number of neighbours, half on each side; ``>= 0`` (0 keeps only the diagonal).
    """
    window = check_int("window", window, low=0)
    return Band("sliding_window", window // 2, window=window)


def window(diagonal_width: int) -> Pattern:
    """BigBird's band (Zaheer et al., 2020): ``|i - j| <= diagonal_width // 2``.

    Parameters
    ----------
    diagonal_width : int
        Width of the band; ``>= 0``. Width 0 attends nowhere, width 1 is the diagonal only.
    """
    diagonal_width = check_int("diagonal_width", diagonal_width, low=0)
    half = diagonal_width // 2 if diagonal_width > 0 else -1
    return Band("window", half, diagonal_width=diagonal_width)


def dilated_sliding_window(window: int, dilation: int) -> Pattern:
    """Dilated sliding window: ``|i - j| % dilation == 0`` and ``|i - j| // dilation <= window // 2``.

    Parameters
    ----------
    window : int
        Number of attended neighbours, half on each side; ``>= 0``.
    dilation : int
        Gap between attended neighbours; ``>= 1`` (1 is the plain sliding window).
    """
    return DilatedBand(check_int("window", window, low=0), check_int("dilation", dilation, low=1))


def block_local(block: int) -> Pattern:
    """Block-local attention: tokens attend within their own block, ``i // block == j // block``.

    Parameters
    ----------
    block : int
        Block length; ``>= 1``. The last block is shorter when ``block`` does not divide ``n``.
    """
    return BlockLocal(check_int("block", block, low=1))

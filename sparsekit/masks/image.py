"""Patterns for images flattened row-major: axial attention along grid rows and columns."""

from __future__ import annotations

import numpy as np

from .._validate import check_int, check_size
from ..pattern import DIAGONAL, LOCAL, Pattern


def check_grid(pattern: Pattern, n: int) -> Pattern:
    """``pattern`` (with ``height`` and ``width``) bound to ``n``, which must be ``height * width``."""
    n = check_size(n)
    if n != pattern.height * pattern.width:
        raise ValueError(
            f"{pattern.name} covers height * width = {pattern.height * pattern.width} tokens, "
            f"but n = {n}: n must equal height * width"
        )
    return pattern


class Axial(Pattern):
    """Tokens on a ``height x width`` grid attend along their grid row and grid column."""

    family = "axial"

    def __init__(self, height: int, width: int) -> None:
        super().__init__(height=height, width=width)
        self.height, self.width = height, width
        self.period = width

    def bind(self, n: int) -> Pattern:
        return check_grid(self, n)

    def token(self, row: int, col: int) -> int:
        """Token index of grid position ``(row, col)`` in row-major order."""
        row = check_int("row", row, low=0, high=self.height - 1)
        return row * self.width + check_int("col", col, low=0, high=self.width - 1)

    def predicate(self, q, kv):
        w = self.width
        return (q // w == kv // w) | (q % w == kv % w)

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, LOCAL)

    def _row_counts(self, n: int) -> np.ndarray:
        return np.full(n, self.height + self.width - 1, dtype=np.int64)

    def _nnz_closed(self, n: int) -> int:
        return n * (self.height + self.width - 1)

    def _far(self) -> tuple[int, int]:
        # A width or more apart: different grid rows, so only the grid column (d % width) decides.
        return self.width, self.width

    def _block_summary_closed(self, n: int, b: int) -> tuple[int, int, int] | None:
        h, w = self.height, self.width
        nb = -(-n // b)
        if h == 1 or w == 1 or b == 1:  # every allowed tile is full: one grid line, or 1 x 1 tiles
            allowed = nb * nb if h == 1 or w == 1 else self._nnz_closed(n)
            return nb * nb - allowed, 0, allowed
        if w % b == 0:
            # k tiles per grid row, aligned: tiles in the same grid row are full; tiles in different
            # grid rows at the same offset share grid columns on their diagonal only (partial).
            k = w // b
            return nb * nb - h * k * k - k * h * (h - 1), k * h * (h - 1), h * k * k
        if b % w == 0:
            # Each tile holds whole grid rows, so every grid column: no tile is empty. Only a tile
            # of a single grid row (the clipped last one) on the diagonal is full.
            full = 1 if h % (b // w) == 1 else 0
            return 0, nb * nb - full, full
        return super()._block_summary_closed(n, b)

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        # Cells of tile (I, J) in the same grid row, plus the same grid column, minus both (i == j):
        # sums over grid rows (columns) of products of per-tile histograms, i.e. matrix products.
        tile = np.arange(n) // b
        nb = int(tile[-1]) + 1

        def pairs(key: np.ndarray, size: int) -> np.ndarray:
            hist = np.zeros((nb, size))
            np.add.at(hist, (tile, key), 1)
            return hist @ hist.T

        t = np.arange(n)
        counts = pairs(t // self.width, self.height) + pairs(t % self.width, self.width)
        diagonal = np.minimum(b, n - np.arange(nb) * b)
        return np.rint(counts).astype(np.int64) - np.diag(diagonal)


def axial(height: int, width: int) -> Pattern:
    """Axial attention (Ho et al., 2019) on a row-major ``height x width`` grid of tokens.

    Token ``t`` sits at grid row ``t // width`` and grid column ``t % width``; it attends to every
    token in the same grid row or the same grid column. Views require ``n == height * width``.

    Parameters
    ----------
    height, width : int
        Grid shape; each ``>= 1``.
    """
    return Axial(check_int("height", height, low=1), check_int("width", width, low=1))

"""Neighbourhood attention (NATTEN, Hassani et al., 2023): a 2-D window clamped to the canvas."""

from __future__ import annotations

import numpy as np

from .._validate import check_int
from ..pattern import DIAGONAL, LOCAL, Pattern, _is_torch
from ._intervals import IntervalRows
from .image import check_grid


def _clip(x, low: int, high: int):
    return x.clamp(low, high) if _is_torch(x) else np.clip(x, low, high)


class Neighborhood2d(IntervalRows):
    """Tokens row-major on a ``height x width`` grid; each attends to the ``kernel_height x
    kernel_width`` window centred on it, the centre clamped so the window stays on the grid.
    Labels: 1 the diagonal, 2 the rest."""

    family = "neighborhood_2d"

    def __init__(self, height: int, width: int, kernel_height: int, kernel_width: int) -> None:
        super().__init__(height=height, width=width, kernel_height=kernel_height, kernel_width=kernel_width)
        self.height, self.width = height, width
        self.kernel_height, self.kernel_width = kernel_height, kernel_width

    def bind(self, n: int) -> Pattern:
        return check_grid(self, n)

    def centre(self, i):
        """Clamped window centre ``(row, col)`` of token(s) ``i`` (numpy or torch)."""
        rh, rw = self.kernel_height // 2, self.kernel_width // 2
        row, col = i // self.width, i % self.width
        return _clip(row, rh, self.height - 1 - rh), _clip(col, rw, self.width - 1 - rw)

    def predicate(self, q, kv):
        row, col = self.centre(q)
        near_rows = abs(row - kv // self.width) <= self.kernel_height // 2
        return near_rows & (abs(col - kv % self.width) <= self.kernel_width // 2)

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, LOCAL)

    def _intervals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        # One run of kernel_width keys on each of the kernel_height grid rows around the centre.
        row, col = self.centre(np.arange(n, dtype=np.int64))
        rows = row + np.arange(self.kernel_height)[:, None] - self.kernel_height // 2
        lo = rows * self.width + col - self.kernel_width // 2
        return lo, lo + self.kernel_width

    def _nnz_closed(self, n: int) -> int:
        return n * self.kernel_height * self.kernel_width

    def _row_counts(self, n: int) -> np.ndarray:
        return np.full(n, self.kernel_height * self.kernel_width, dtype=np.int64)


def neighborhood_2d(height: int, width: int, kernel_height: int, kernel_width: int) -> Pattern:
    """Neighbourhood attention (NATTEN, Hassani et al., 2023) on a row-major ``height x width`` grid.

    Token ``i`` sits at ``(r, c) = divmod(i, width)``. Its window centre is clamped to the grid,
    ``cr = clip(r, kh // 2, height - 1 - kh // 2)`` and ``cc = clip(c, kw // 2, width - 1 - kw // 2)``,
    and it attends to ``kv`` when ``|cr - r_kv| <= kh // 2`` and ``|cc - c_kv| <= kw // 2``. Every
    query therefore has exactly ``kh * kw`` keys, on any canvas, square or not. Labels: 1 the
    diagonal, 2 the rest. Views require ``n == height * width``.

    Parameters
    ----------
    height, width : int
        Grid shape; each ``>= 1``.
    kernel_height, kernel_width : int
        Window shape; odd, in ``[1, height]`` and ``[1, width]``.
    """
    height, width = check_int("height", height, low=1), check_int("width", width, low=1)
    kh = check_int("kernel_height", kernel_height, low=1, high=height)
    kw = check_int("kernel_width", kernel_width, low=1, high=width)
    for name, value, side in (("kernel_height", kh, height), ("kernel_width", kw, width)):
        if value % 2 == 0:
            raise ValueError(f"{name} must be an odd integer in [1, {side}], got {value}")
    return Neighborhood2d(height, width, kh, kw)

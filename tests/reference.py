"""Brute-force references: the contract of each pattern written as a plain double loop over cells.

These restate the issue's table independently of sparsekit's predicates, so a wrong predicate cannot
agree with itself.
"""

from __future__ import annotations

import numpy as np


def brute_force(rule, n: int) -> np.ndarray:
    """Dense mask by calling ``rule(i, j)`` for every cell with Python ints."""
    return np.array([[bool(rule(i, j)) for j in range(n)] for i in range(n)], dtype=bool).reshape(n, n)


RULES = {
    "causal": lambda: lambda i, j: j <= i,
    "strided": lambda window, stride: lambda i, j: j <= i and (i - j < window or (i - j) % stride == 0),
    "fixed": lambda block, summary: (
        lambda i, j: j <= i and (j // block == i // block or j % block >= block - summary)
    ),
    "sliding_window": lambda window: lambda i, j: abs(i - j) <= window // 2,
    "dilated_sliding_window": lambda window, dilation: (
        lambda i, j: abs(i - j) % dilation == 0 and abs(i - j) // dilation <= window // 2
    ),
    "window": lambda diagonal_width: lambda i, j: diagonal_width > 0 and abs(i - j) <= diagonal_width // 2,
    "global_tokens": lambda width: lambda i, j: i < width or j < width,
    "block_local": lambda block: lambda i, j: i // block == j // block,
    "axial": lambda height, width: lambda i, j: i // width == j // width or i % width == j % width,
}

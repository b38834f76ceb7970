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


# Label codes of the seed project: 0 no attention, 1 the diagonal, 2 local, 3 strided, column, global or
# random. Each rule gives the code of an allowed cell from the family's definition (0 where not allowed).
def _diagonal_or_local(i: int, j: int) -> int:
    return 1 if i == j else 2


LABEL_RULES = {
    "causal": lambda: _diagonal_or_local,
    "strided": lambda window, stride: lambda i, j: 1 if i == j else 2 if i - j < window else 3,
    "fixed": lambda block, summary: lambda i, j: 1 if i == j else 2 if i // block == j // block else 3,
    "sliding_window": lambda window: _diagonal_or_local,
    "dilated_sliding_window": lambda window, dilation: _diagonal_or_local,
    "window": lambda diagonal_width: _diagonal_or_local,
    "global_tokens": lambda width: lambda i, j: 3,
    "block_local": lambda block: _diagonal_or_local,
    "axial": lambda height, width: _diagonal_or_local,
}


def labelled(rule, code):
    """Label rule of one pattern: ``code(i, j)`` where ``rule(i, j)`` allows the cell, else 0."""
    return lambda i, j: code(i, j) if rule(i, j) else 0


def family_labels(family: str, **params):
    """Label rule of a family with the given parameters, from ``RULES`` and ``LABEL_RULES``."""
    return labelled(RULES[family](**params), LABEL_RULES[family](**params))


def union_labels(*label_rules):
    """A union allows a cell where any part does; the most specific (smallest non-zero) code wins."""
    return lambda i, j: min((c for c in (r(i, j) for r in label_rules) if c), default=0)


def brute_force_labels(label_rule, n: int) -> np.ndarray:
    """Labelled mask by calling ``label_rule(i, j)`` for every cell with Python ints."""
    return np.array([[label_rule(i, j) for j in range(n)] for i in range(n)], dtype=np.uint8).reshape(n, n)

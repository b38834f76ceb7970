"""Causal ("normal") attention: every token sees itself and all earlier tokens."""

from __future__ import annotations

import numpy as np

from ..pattern import DIAGONAL, LOCAL, Pattern


class Causal(Pattern):
    """``kv <= q``; the diagonal is labelled 1, the cells below it 2."""

    family = "causal"
    period = 1

    def predicate(self, q, kv):
        return kv <= q

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, LOCAL)

    def _row_counts(self, n: int) -> np.ndarray:
        return np.arange(1, n + 1, dtype=np.int64)

    def _nnz_closed(self, n: int) -> int:
        return n * (n + 1) // 2

    def _far(self) -> tuple[int, int]:
        return 1, 1  # below the diagonal everything, above nothing


def causal() -> Pattern:
    """Causal attention, the seed's "normal" mask: query ``i`` attends to every ``j <= i``.

    Returns
    -------
    Pattern
        The causal pattern; its sparsity at length ``n`` is ``(n - 1) / (2 n)``.
    """
    return Causal()

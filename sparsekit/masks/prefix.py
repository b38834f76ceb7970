"""Prefix language modelling: a bidirectional prefix, causal after it (T5's prefix LM, UniLM)."""

from __future__ import annotations

import numpy as np

from .._validate import check_int, check_size
from ..pattern import DIAGONAL, GLOBAL, LOCAL, Pattern
from ._intervals import IntervalRows


class PrefixLM(IntervalRows):
    """``kv < prefix or kv <= q``.

    Labels: 1 the diagonal, 2 the causal part ``kv < q``, 3 what the prefix adds (``q < kv < prefix``).
    """

    family = "prefix_lm"

    def __init__(self, prefix: int) -> None:
        super().__init__(prefix=prefix)
        self.prefix = prefix

    def bind(self, n: int) -> Pattern:
        n = check_size(n)
        if self.prefix > n:
            raise ValueError(f"prefix must be an integer in [0, n={n}], got {self.prefix}")
        return self

    def predicate(self, q, kv):
        return (kv < self.prefix) | (kv <= q)

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, np.where(kv < q, LOCAL, GLOBAL))

    def _intervals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.arange(n, dtype=np.int64)
        return np.zeros((1, n), np.int64), np.maximum(self.prefix, q + 1)[None]

    def _nnz_closed(self, n: int) -> int:
        # Rows q < prefix keep the prefix, the others q + 1 keys.
        p = min(self.prefix, n)
        return p * p + (n * (n + 1) - p * (p + 1)) // 2


def prefix_lm(prefix: int) -> Pattern:
    """Prefix LM (Raffel et al., 2020; Dong et al., 2019): ``kv < prefix or kv <= q``.

    The first ``prefix`` tokens (the input) attend to each other in both directions; every later
    token is causal and also sees the whole prefix. Row ``q`` has ``max(prefix, q + 1)`` keys. Labels:
    1 the diagonal, 2 the causal cells, 3 the cells the prefix adds above the diagonal.

    Parameters
    ----------
    prefix : int
        Length of the bidirectional prefix; in ``[0, n]`` (0 is causal attention).
    """
    return PrefixLM(check_int("prefix", prefix, low=0))

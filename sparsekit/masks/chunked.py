"""Chunked causal attention: Llama 4's local layers attend within fixed chunks of the sequence."""

from __future__ import annotations

import numpy as np

from .._validate import check_int
from ..pattern import DIAGONAL, LOCAL, Pattern
from ._intervals import IntervalRows


class Chunked(IntervalRows):
    """``kv <= q and q // chunk == kv // chunk``; labels 1 the diagonal, 2 the rest."""

    family = "chunked"

    def __init__(self, chunk: int) -> None:
        super().__init__(chunk=chunk)
        self.chunk = self.period = chunk

    def predicate(self, q, kv):
        return (kv <= q) & (q // self.chunk == kv // self.chunk)

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, LOCAL)

    def _intervals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.arange(n, dtype=np.int64)
        return (q // self.chunk * self.chunk)[None], (q + 1)[None]

    def _row_counts(self, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int64) % self.chunk + 1

    def _far(self) -> tuple[int, int]:
        return self.chunk, 1  # a chunk or more apart: never allowed

    def _nnz_closed(self, n: int) -> int:
        whole, rest = divmod(n, self.chunk)
        return whole * self.chunk * (self.chunk + 1) // 2 + rest * (rest + 1) // 2


def chunked(chunk: int) -> Pattern:
    """Chunked causal attention (Llama 4's local layers): ``kv <= q and q // chunk == kv // chunk``.

    The sequence is cut into chunks of ``chunk`` tokens; a query sees the earlier tokens of its own
    chunk and nothing before it (row ``q`` has ``q % chunk + 1`` keys). Unlike a sliding window, the
    first query of a chunk starts again from nothing.

    Parameters
    ----------
    chunk : int
        Chunk length; ``>= 1`` (Llama 4 uses 8192).
    """
    return Chunked(check_int("chunk", chunk, low=1))

"""Streaming attention: a causal sliding window, optionally with attention sinks (StreamingLLM).

Xiao et al. (2023) keep the first few tokens ("attention sinks") in the KV cache next to a window of
recent tokens; without sinks the rule is the causal sliding window of Mistral and Gemma's local
layers, in Hugging Face's convention (``window`` keys, the query included).
"""

from __future__ import annotations

import numpy as np

from .._validate import check_int
from ..pattern import DIAGONAL, GLOBAL, LOCAL, Pattern
from ._intervals import IntervalRows


class AttentionSinks(IntervalRows):
    """``kv <= q and (kv < sinks or q - kv < window)``.

    Labels: 1 the diagonal, 2 the causal window, 3 the sink columns outside the window.
    """

    family = "attention_sinks"

    def __init__(self, sinks: int, window: int, family: str | None = None) -> None:
        if family is None:
            super().__init__(sinks=sinks, window=window)
        else:
            super().__init__(window=window)
            self.family = family
        self.sinks, self.window = sinks, window
        # Without sinks every row is the previous row moved one column: shift invariant.
        self.period = 1 if sinks == 0 else None

    def predicate(self, q, kv):
        return (kv <= q) & ((kv < self.sinks) | (q - kv < self.window))

    def code(self, q, kv):
        return np.where(q == kv, DIAGONAL, np.where(q - kv < self.window, LOCAL, GLOBAL))

    def _intervals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        q = np.arange(n, dtype=np.int64)
        sink_end = np.minimum(self.sinks, q + 1)
        window_start = np.maximum(q + 1 - self.window, sink_end)  # the window minus the sinks
        return np.stack([np.zeros(n, np.int64), window_start]), np.stack([sink_end, q + 1])

    def _row_counts(self, n: int) -> np.ndarray:
        q = np.arange(n, dtype=np.int64)
        sink_end = np.minimum(self.sinks, q + 1)
        return sink_end + q + 1 - np.maximum(q + 1 - self.window, sink_end)

    def _far(self) -> tuple[int, int] | None:
        # Without sinks, a window or more below the diagonal (or any cell above it) is never allowed.
        return (self.window, 1) if self.sinks == 0 else None

    def _nnz_closed(self, n: int) -> int:
        # Row q keeps min(q + 1, sinks + window) keys.
        full = self.sinks + self.window
        return n * (n + 1) // 2 if n <= full else full * (full + 1) // 2 + (n - full) * full


def attention_sinks(sinks: int, window: int) -> Pattern:
    """Attention sinks (StreamingLLM, Xiao et al., 2023): ``kv <= q and (kv < sinks or q - kv < window)``.

    Every query sees the first ``sinks`` tokens and the ``window`` most recent tokens, itself
    included (row ``q`` has ``min(q + 1, sinks + window)`` keys). Labels: 1 the diagonal, 2 the
    window, 3 the sink columns outside the window (the global-column code).

    Parameters
    ----------
    sinks : int
        Leading tokens every query attends to; ``>= 0`` (0 is the plain causal window).
    window : int
        Most recent keys per query, the query included; ``>= 1`` (so no row is empty).
    """
    return AttentionSinks(check_int("sinks", sinks, low=0), check_int("window", window, low=1))


def causal_window(window: int) -> Pattern:
    """Causal sliding window in Hugging Face's convention: ``kv <= q and q - kv < window``.

    Row ``q`` keeps ``min(q + 1, window)`` keys, the query included: the ``sliding_window`` of the
    Mistral and Gemma configurations in ``transformers``. Equal to ``attention_sinks(0, window)``.

    Parameters
    ----------
    window : int
        Keys per query, the query included; ``>= 1``.
    """
    return AttentionSinks(0, check_int("window", window, low=1), family="causal_window")

"""Stacks of attention layers: which keys a query reaches through several masked layers.

One layer lets query ``q`` read the keys its mask allows. Through two layers it also reads, at one
remove, every key that those keys read in the layer before: the receptive field of a stack is the
boolean product of its masks, the last layer on the left. Models that mix local and global layers
(Gemma 2 and 3, Llama 4) or use only local ones (Mistral) differ in how many layers it takes before
every query reaches every earlier token.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from ._validate import check_int, check_size
from .masks.causal import causal
from .masks.chunked import chunked
from .masks.streaming import causal_window
from .pattern import Pattern

#: Models whose layer schedules :func:`layer_schedule` builds, with their configurations' defaults.
SCHEDULES = {
    "gemma2": "local and global layers alternate 1:1, local first; window 4096",
    "gemma3": "5 local layers, then 1 global, repeated; window 1024",
    "llama4": "3 chunked layers, then 1 global, repeated; chunk 8192",
    "mistral": "every layer a causal sliding window; window 4096",
}
_DEFAULT_WINDOW = {"gemma2": 4096, "gemma3": 1024, "mistral": 4096}
_DEFAULT_CHUNK = 8192


def _check_patterns(patterns: Sequence[Pattern]) -> list[Pattern]:
    if isinstance(patterns, Pattern) or not isinstance(patterns, Sequence) or not patterns:
        raise ValueError(f"patterns must be a non-empty sequence of sparsekit Patterns, got {patterns!r}")
    for k, p in enumerate(patterns):
        if not isinstance(p, Pattern):
            raise ValueError(f"patterns[{k}] must be a sparsekit Pattern, got {type(p).__name__}")
    return list(patterns)


def _compose(reach: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``mask`` after ``reach``: ``q`` reaches ``kv`` when some allowed key ``j`` of ``q`` reaches ``kv``."""
    # A float32 product counts paths exactly (at most n < 2**24 of them) and runs in BLAS.
    return (mask.astype(np.float32) @ reach.astype(np.float32)) > 0


def receptive_fields(patterns: Sequence[Pattern], n: int) -> Iterator[np.ndarray]:
    """The receptive field after each layer of ``patterns`` in turn: layer 1, layers 1-2, and so on.

    Each field is :func:`receptive_field` of the leading layers, computed from the previous one with
    one more product.
    """
    layers = _check_patterns(patterns)
    n = check_size(n)
    reach = None
    for p in layers:
        mask = p.dense(n)
        reach = mask if reach is None else _compose(reach, mask)
        yield reach


def receptive_field(patterns: Sequence[Pattern], n: int) -> np.ndarray:
    """Which keys each query reaches through the layers ``patterns`` (layer 1 first), bool ``(n, n)``.

    The boolean product ``M_L ... M_2 M_1`` of the layers' masks: query ``q`` of the last layer
    reaches key ``kv`` of the input when a chain ``q = j_L, j_{L-1}, ..., j_0 = kv`` has every step
    allowed by its layer. The residual stream is not added: every pattern whose rows hold their
    diagonal (all causal ones) already keeps what a token had.

    Parameters
    ----------
    patterns : sequence of Pattern
        The layers' masks, the first layer first.
    n : int
        Sequence length; each layer's dense mask is built, so ``n`` of a few thousand at most.

    Examples
    --------
    >>> import sparsekit as sk
    >>> field = sk.receptive_field([sk.causal_window(3)] * 2, 8)
    >>> field[7].nonzero()[0].tolist()  # two windows of 3 keys reach 5 keys back
    [3, 4, 5, 6, 7]
    """
    *_, last = receptive_fields(patterns, n)
    return last


def layers_to_reach(patterns: Sequence[Pattern], n: int, target: Pattern | None = None) -> int | None:
    """The fewest leading layers of ``patterns`` whose receptive field covers ``target``, or ``None``.

    Parameters
    ----------
    patterns : sequence of Pattern
        The layers, first layer first.
    n : int
        Sequence length.
    target : Pattern, optional
        The cells to reach; causal attention by default (every query reaches every earlier key).
    """
    goal = (causal() if target is None else target).dense(check_size(n))
    for depth, reach in enumerate(receptive_fields(patterns, n), start=1):
        if not (goal & ~reach).any():
            return depth
    return None


def layer_schedule(
    model: str, layers: int, window: int | None = None, chunk: int | None = None
) -> list[Pattern]:
    """The attention pattern of each layer of a model family, first layer first.

    ``"gemma2"``: local and global layers alternate, local first (Gemma Team, 2024a); ``"gemma3"``: five
    local layers, then one global (Gemma Team, 2025); ``"llama4"``: three chunked layers, then one
    global (Meta, 2025); ``"mistral"``: every layer local (Jiang et al., 2023). Local layers are
    :func:`causal_window` with ``window`` keys, the query included (the configurations'
    ``sliding_window`` as ``transformers`` applies it); chunked layers :func:`chunked`; global layers
    :func:`causal`. See ``SCHEDULES``.

    Parameters
    ----------
    model : str
        One of ``"gemma2"``, ``"gemma3"``, ``"llama4"``, ``"mistral"``.
    layers : int
        Number of layers; ``>= 1``.
    window : int, optional
        Local window (keys per query); ``>= 1``. Defaults: 4096 (Gemma 2, Mistral), 1024 (Gemma 3).
        Not used by ``"llama4"``.
    chunk : int, optional
        Chunk length of Llama 4's local layers; ``>= 1``, default 8192. Only for ``"llama4"``.
    """
    if model not in SCHEDULES:
        raise ValueError(f"model must be one of {sorted(SCHEDULES)}, got {model!r}")
    layers = check_int("layers", layers, low=1)
    if model == "llama4":
        if window is not None:
            raise ValueError("window does not apply to llama4, whose local layers are chunked: give chunk=")
        local = chunked(check_int("chunk", _DEFAULT_CHUNK if chunk is None else chunk, low=1))
        return [causal() if (i + 1) % 4 == 0 else local for i in range(layers)]
    if chunk is not None:
        raise ValueError(f"chunk applies only to llama4, not to {model}: give window=")
    local = causal_window(check_int("window", _DEFAULT_WINDOW[model] if window is None else window, low=1))
    every = {"gemma2": 2, "gemma3": 6, "mistral": None}[model]
    return [causal() if every and (i + 1) % every == 0 else local for i in range(layers)]

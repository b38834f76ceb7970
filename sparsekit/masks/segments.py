"""Segment masks: paraphrase fusion, isolated segments encoded side by side and fused by generation.

The sequence is laid out as

``[prefix] [paraphrase 0] [separator] [paraphrase 1] ... [separator] [paraphrase k-1] [generated]``

and the rule is causal (``kv <= q``) and (``q`` is a generated token, or ``q`` and ``kv`` lie in the same
segment, or ``kv`` lies in the shared prefix). Every row therefore allows at least its own diagonal cell,
so softmax is always defined (no row of ``-inf`` scores, no NaN in a dense reference).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from .._validate import check_int, check_size
from ..pattern import _CLOSED_CELLS, DIAGONAL, GLOBAL, LOCAL, Pattern, _is_torch, _rect_status

#: Kinds of token spans in a paraphrase-fusion layout, in the order they may appear.
SEGMENT_KINDS = ("prefix", "paraphrase", "separator", "generated")


class Segment(NamedTuple):
    """One span of the layout: tokens ``start <= t < stop`` of the given ``kind``.

    ``index`` numbers the spans of one kind from 0 (paraphrase 0, 1, ...; separator 0, 1, ...).
    """

    kind: str  #: Kind of span, one of prefix, paraphrase, separator or generated.
    index: int  #: Number of the span among those of its kind, from 0.
    start: int  #: First token of the span.
    stop: int  #: One past the last token of the span.

    @property
    def length(self) -> int:
        return self.stop - self.start


class ParaphraseFusion(Pattern):
    """Segment-isolated encoding of paraphrases, fused by the generated tokens.

    Query ``q`` may attend to key ``kv <= q`` when

    * ``q`` is a generated token (fusion: everything before it), or
    * ``kv`` is in the shared prefix (every paraphrase and separator sees the whole question), or
    * ``q`` and ``kv`` are in the same span (prefix, one paraphrase or one separator group).

    Labels: 1 the diagonal, 2 isolated segment attention (within a span, or onto the shared prefix),
    3 fusion attention of generated tokens.

    Attributes
    ----------
    layout : tuple of Segment
        The spans in sequence order (empty spans are left out).
    length : int
        Total number of tokens; views require ``n == length``.
    prefix_tokens, generation_start : int
        End of the shared prefix; first generated token (``== length`` when nothing is generated).
    """

    family = "paraphrase_fusion"

    def __init__(
        self,
        lengths: tuple[int, ...],
        separator_tokens: int,
        prefix_tokens: int,
        num_generated_tokens: int,
        params: dict,
    ) -> None:
        super().__init__(**params)
        self.lengths = lengths
        self.separator_tokens = separator_tokens
        self.prefix_tokens = prefix_tokens
        self.num_generated_tokens = num_generated_tokens
        spans: list[Segment] = []
        pos = 0

        def add(kind: str, index: int, size: int) -> None:
            nonlocal pos
            if size:
                spans.append(Segment(kind, index, pos, pos + size))
            pos += size

        add("prefix", 0, prefix_tokens)
        for k, size in enumerate(lengths):
            if k:
                add("separator", k - 1, separator_tokens)
            add("paraphrase", k, size)
        self.generation_start = pos
        add("generated", 0, num_generated_tokens)
        self.layout = tuple(spans)
        self.length = pos
        self._torch_tables: dict = {}

    @functools.cached_property
    def _start(self) -> np.ndarray:
        """``start[t]``: first key of token ``t``'s own causal run, ``int64 (length,)``.

        Prefix and generated tokens see everything before them (start 0); a paraphrase or separator
        token sees its span from its start. Built on first use: the closed-form counts never need it.
        """
        start = np.zeros(self.length, dtype=np.int64)
        for span in self.layout:
            if span.kind in ("paraphrase", "separator"):
                start[span.start : span.stop] = span.start
        return start

    # ------------------------------------------------------------------------------------------
    # Layout helpers
    # ------------------------------------------------------------------------------------------
    def spans(self, kind: str) -> tuple[Segment, ...]:
        """The spans of one kind (``"prefix"``, ``"paraphrase"``, ``"separator"``, ``"generated"``)."""
        if kind not in SEGMENT_KINDS:
            raise ValueError(f"kind must be one of {SEGMENT_KINDS}, got {kind!r}")
        return tuple(s for s in self.layout if s.kind == kind)

    def segment_ids(self) -> np.ndarray:
        """Index into :attr:`layout` of the span holding each token, ``int64 (length,)``."""
        ids = np.empty(self.length, dtype=np.int64)
        for k, span in enumerate(self.layout):
            ids[span.start : span.stop] = k
        return ids

    def kinds(self) -> np.ndarray:
        """Kind of each token, a string array ``(length,)``."""
        out = np.empty(self.length, dtype=object)
        for span in self.layout:
            out[span.start : span.stop] = span.kind
        return out.astype(str)

    def bind(self, n: int) -> Pattern:
        n = check_size(n)
        if n != self.length:
            raise ValueError(
                f"{self.name} lays out {self.length} tokens (prefix + paraphrases + separators + "
                f"generated), but n = {n}: n must equal the layout length {self.length}"
            )
        return self

    # ------------------------------------------------------------------------------------------
    # The definition
    # ------------------------------------------------------------------------------------------
    def _run_start(self, q):
        """``start[q]`` for numpy arrays or torch tensors; tokens past the layout count as generated."""
        last = self.length - 1
        if _is_torch(q):
            import torch

            key = str(q.device)
            if key not in self._torch_tables:
                self._torch_tables[key] = torch.as_tensor(self._start, device=q.device)
            table = self._torch_tables[key]
            inside = q <= last
            return torch.where(inside, table[q.clamp(0, last)], 0)
        q = np.asarray(q)
        return np.where(q <= last, self._start[np.clip(q, 0, last)], 0)

    def predicate(self, q, kv):
        return (kv <= q) & ((kv < self.prefix_tokens) | (kv >= self._run_start(q)))

    def code(self, q, kv):
        q, kv = np.asarray(q), np.asarray(kv)
        return np.where(q == kv, DIAGONAL, np.where(q >= self.generation_start, GLOBAL, LOCAL))

    # ------------------------------------------------------------------------------------------
    # Exact counts: every row allows the keys [0, prefix) and [start[q], q]
    # ------------------------------------------------------------------------------------------
    def _row_counts(self, n: int) -> np.ndarray:
        q = np.arange(n, dtype=np.int64)
        start = self._start[:n]
        return np.minimum(self.prefix_tokens, start) + q + 1 - start

    def _nnz_closed(self, n: int) -> int:
        # Row q allows min(prefix, start) + q + 1 - start keys: start is 0 in the prefix and the
        # generated tokens (q + 1 keys), the span's start s >= prefix elsewhere (prefix + q + 1 - s).
        total = n * (n + 1) // 2
        for span in self.layout:
            if span.kind in ("paraphrase", "separator"):
                total += span.length * (self.prefix_tokens - span.start)
        return total

    def _block_summary_closed(self, n: int, b: int) -> tuple[int, int, int] | None:
        # Tiles whose rows (or columns) lie in one span form one group per span; tiles that straddle
        # a span boundary, and the clipped last tile, are groups of one. Between two different groups
        # the tiles are alike (one lies wholly before the other, and each row's rule depends only on
        # its span), so one tile stands for all; inside one span's group the tiles below, on and
        # above the diagonal are alike. O(spans**2) tiles are evaluated, whatever n.
        nb, whole = -(-n // b), n // b
        groups, singles = [], set()
        for span in self.layout:
            lo, hi = -(-span.start // b), min(span.stop // b, whole)
            if lo < hi:
                groups.append((lo, hi))
            if span.start % b:
                singles.add(span.start // b)
        if n % b:
            singles.add(nb - 1)
        groups += [(t, t + 1) for t in sorted(singles)]
        if len(groups) ** 2 * b * b > _CLOSED_CELLS:
            return None
        tally = [0, 0, 0]
        # The predicate with each token's run start looked up among the spans (no per-token table).
        firsts = np.array([span.start for span in self.layout], dtype=np.int64)
        isolated = np.array([span.kind in ("paraphrase", "separator") for span in self.layout])

        def rule(q, kv):
            span = np.searchsorted(firsts, q, side="right") - 1
            start = np.where(isolated[span], firsts[span], 0)
            return (kv <= q) & ((kv < self.prefix_tokens) | (kv >= start))

        def add(i: int, j: int, count: int) -> None:
            h, w = min(b, n - i * b), min(b, n - j * b)
            tally[int(_rect_status(rule, [i * b], [j * b], h, w)[0])] += count

        for row_group in groups:
            for col_group in groups:
                if row_group == col_group:
                    k = row_group[1] - row_group[0]
                    add(row_group[0], row_group[0], k)
                    if k > 1:
                        add(row_group[0] + 1, row_group[0], k * (k - 1) // 2)
                        add(row_group[0], row_group[0] + 1, k * (k - 1) // 2)
                else:
                    size = (row_group[1] - row_group[0]) * (col_group[1] - col_group[0])
                    add(row_group[0], col_group[0], size)
        return tally[0], tally[1], tally[2]

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        # Keys of row q below c: F(q, c) = min(A, c) + min(q + 1, c) - min(start[q], c) with
        # A = min(prefix, start[q]). Tile (I, J) holds G(I, c_{J+1}) - G(I, c_J), G summing F over
        # the rows of tile I; each sum of min(x_q, c) comes from sorted x and prefix sums.
        q = np.arange(n, dtype=np.int64)
        start = self._start[:n]
        nb = -(-n // b)
        cuts = np.minimum(np.arange(nb + 1) * b, n)
        total = (
            _sum_min(np.minimum(self.prefix_tokens, start), cuts, b, nb)
            + _sum_min(q + 1, cuts, b, nb)
            - _sum_min(start, cuts, b, nb)
        )
        return np.diff(total, axis=1)


def _sum_min(x: np.ndarray, cuts: np.ndarray, b: int, nb: int) -> np.ndarray:
    """``out[I, t] = sum of min(x[q], cuts[t])`` over the rows ``q`` of tile ``I``, ``(nb, len(cuts))``."""
    padded = np.zeros(nb * b, dtype=np.int64)  # padding rows contribute min(0, c) = 0
    padded[: x.size] = x
    rows = np.sort(padded.reshape(nb, b), axis=1)
    prefix = np.concatenate([np.zeros((nb, 1), np.int64), np.cumsum(rows, axis=1)], axis=1)
    # Batched searchsorted: shift tile I's values by I * stride so all tiles sort as one array.
    stride = int(max(int(cuts[-1]), int(padded.max(initial=0)))) + 1
    shift = np.arange(nb, dtype=np.int64)[:, None] * stride
    below = np.searchsorted((rows + shift).ravel(), (cuts[None, :] + shift).ravel(), side="left")
    below = below.reshape(nb, cuts.size) - np.arange(nb)[:, None] * b  # rows with x < c
    return np.take_along_axis(prefix, below, axis=1) + cuts[None, :] * (b - below)


def paraphrase_fusion(
    num_paraphrases: int | None = None,
    tokens_per_paraphrase: int | None = None,
    lengths: Sequence[int] | None = None,
    separator_tokens: int = 0,
    prefix_tokens: int = 0,
    num_generated_tokens: int = 0,
) -> Pattern:
    """Paraphrase fusion: paraphrases encoded in isolation, then fused by every generated token.

    The layout is an optional shared prefix (the question), the paraphrases with ``separator_tokens``
    tokens between consecutive ones, then ``num_generated_tokens`` generated tokens. The rule is causal
    (``kv <= q``) and one of:

    * ``q`` is a generated token: it attends to every earlier token (**fusion**, label 3);
    * ``q`` and ``kv`` lie in the same span (the prefix, one paraphrase, or one group of separator
      tokens): **isolated segment attention**, label 2;
    * ``kv`` lies in the shared prefix: every paraphrase and separator token also sees the whole
      question (label 2), so the paraphrases share its context without seeing each other.

    The diagonal is labelled 1. Separator tokens form their own small segments: they see the prefix and
    the earlier tokens of their own group, never a paraphrase, and no paraphrase sees them; generated
    tokens see them. Every row allows at least its own diagonal cell, so no softmax row is empty.

    Give either ``num_paraphrases`` and ``tokens_per_paraphrase`` (equal lengths) or ``lengths`` (one
    length per paraphrase; ``num_paraphrases``, if also given, must match). Views require ``n`` equal
    to the layout length ``prefix + sum(lengths) + separator * (k - 1) + generated``.

    Parameters
    ----------
    num_paraphrases : int, optional
        Number of paraphrases ``k``; ``>= 1``.
    tokens_per_paraphrase : int, optional
        Tokens of each paraphrase; ``>= 1``.
    lengths : sequence of int, optional
        Tokens of each paraphrase, each ``>= 1``; replaces the two arguments above.
    separator_tokens : int
        Tokens between consecutive paraphrases; ``>= 0``.
    prefix_tokens : int
        Tokens of the shared prefix (the question) before the first paraphrase; ``>= 0``.
    num_generated_tokens : int
        Generated tokens after the last paraphrase; ``>= 0``.

    Returns
    -------
    ParaphraseFusion
        The pattern; ``.layout`` lists its spans and ``.length`` its total number of tokens.
    """
    if lengths is not None:
        if tokens_per_paraphrase is not None:
            raise ValueError("paraphrase_fusion takes lengths= or tokens_per_paraphrase=, not both")
        if isinstance(lengths, str | bytes) or not isinstance(lengths, Sequence | np.ndarray):
            raise ValueError(f"lengths must be a sequence of integers >= 1, got {lengths!r}")
        sizes = tuple(check_int(f"lengths[{k}]", v, low=1) for k, v in enumerate(lengths))
        if not sizes:
            raise ValueError("lengths must hold at least one paraphrase length")
        if num_paraphrases is not None:
            check_int("num_paraphrases", num_paraphrases, low=1)
            if num_paraphrases != len(sizes):
                raise ValueError(
                    f"num_paraphrases={num_paraphrases} disagrees with len(lengths)={len(sizes)}"
                )
        shown = {"lengths": sizes}
    else:
        if num_paraphrases is None or tokens_per_paraphrase is None:
            raise ValueError(
                "paraphrase_fusion needs num_paraphrases= and tokens_per_paraphrase=, or lengths="
            )
        k = check_int("num_paraphrases", num_paraphrases, low=1)
        size = check_int("tokens_per_paraphrase", tokens_per_paraphrase, low=1)
        sizes = (size,) * k
        shown = {"num_paraphrases": k, "tokens_per_paraphrase": size}
    separator_tokens = check_int("separator_tokens", separator_tokens, low=0)
    prefix_tokens = check_int("prefix_tokens", prefix_tokens, low=0)
    num_generated_tokens = check_int("num_generated_tokens", num_generated_tokens, low=0)
    params = {
        **shown,
        "separator_tokens": separator_tokens,
        "prefix_tokens": prefix_tokens,
        "num_generated_tokens": num_generated_tokens,
    }
    return ParaphraseFusion(sizes, separator_tokens, prefix_tokens, num_generated_tokens, params)


def mask_report(pattern: ParaphraseFusion) -> dict[str, int | float | None]:
    """The seed's mask checks of a paraphrase-fusion layout, counted exactly from the predicate.

    Rows are evaluated a few at a time (about four million cells per step), so memory stays small at
    any length. Returns a dict: ``length``, ``generation_start``, ``density``; ``causal_violations``
    (allowed cells with ``kv > q``, should be 0); ``cross_segment_cells`` (allowed cells of encoding
    rows ``q < generation_start`` whose key lies in another span and outside the shared prefix, should
    be 0); ``first_generated_attends`` and ``first_generated_positions`` (how many of the
    ``generation_start`` earlier positions row ``generation_start`` may attend to, and that number of
    earlier positions: the seed's "First generated token attends to: 50/50" for 5 paraphrases of 10
    tokens; ``None`` without a generated region).

    Examples
    --------
    >>> import sparsekit as sk
    >>> report = sk.mask_report(sk.paraphrase_fusion(5, 10, num_generated_tokens=3))
    >>> report["first_generated_attends"], report["first_generated_positions"]
    (50, 50)
    """
    if not isinstance(pattern, ParaphraseFusion):
        raise ValueError(f"pattern must be a ParaphraseFusion pattern, got {type(pattern).__name__}")
    n, gen, prefix = pattern.length, pattern.generation_start, pattern.prefix_tokens
    seg = pattern.segment_ids()
    kv = np.arange(n)
    causal = cross = 0
    chunk = max(1, (1 << 22) // n)
    for lo in range(0, n, chunk):
        q = np.arange(lo, min(n, lo + chunk))
        allowed = np.asarray(pattern(q[:, None], kv[None, :]))
        causal += int(np.count_nonzero(allowed & (kv[None, :] > q[:, None])))
        enc = q < gen
        other = (seg[q][:, None] != seg[None, :]) & (kv[None, :] >= prefix)
        cross += int(np.count_nonzero(allowed[enc] & other[enc]))
    first = None
    if gen < n:
        first = int(np.count_nonzero(pattern(np.array([gen]), np.arange(gen))))  # earlier keys only
    return {
        "length": n,
        "generation_start": gen,
        "density": pattern.density(n),
        "causal_violations": causal,
        "cross_segment_cells": cross,
        "first_generated_attends": first,
        "first_generated_positions": gen if gen < n else None,
    }

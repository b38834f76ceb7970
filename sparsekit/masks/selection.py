"""Attention that chooses its keys: block selection from the queries and keys themselves.

Content-dependent patterns (MoBA, NSA's selection branch, Quest) score every (query, key block) pair
and keep the best blocks of each query row. Once chosen, the blocks form an ordinary bound
:class:`~sparsekit.Pattern`: :class:`SelectedBlocks` stores the ``(n, n_blocks)`` table of choices
and its predicate is one lookup in that table, so every view (dense, labels, row counts, block
layout, non-zeros, the torch predicate and FlexAttention's ``BlockMask``) works as for any pattern.

* :func:`block_select` chooses from any score table (``scores[q, b]``);
* :func:`moba` scores blocks by their mean key (Lu et al., 2025);
* :func:`quest_scores` gives Quest's page bounds at decode time (Tang et al., 2024);
* :func:`nsa_scores` gives NSA's selection-block importance from compressed keys (Yuan et al., 2025).

Nothing here forms the ``n x n`` score matrix: the scores are ``n x ceil(n / B)``, and the block
layout comes from per-row prefix sums over the chosen blocks.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_int, check_size
from ..pattern import _CHUNK_CELLS, DIAGONAL, GLOBAL, LOCAL, Pattern, _is_torch


class SelectedBlocks(Pattern):
    """Query ``q`` attends to key ``kv`` when ``kv``'s block is chosen for ``q`` (and ``kv <= q``).

    Built by :func:`block_select` or :func:`moba`; bound to the length ``n`` of its table.
    Labels: 1 the diagonal, 2 the query's own block, 3 a chosen earlier (or later) block.

    Attributes
    ----------
    chosen : numpy.ndarray
        ``bool (n, ceil(n / block_size))``: ``chosen[q, b]`` when query ``q`` keeps key block ``b``.
    block_size : int
        Keys per block (the last block may be shorter).
    causal : bool
        Whether keys after the query are masked (``kv <= q``).
    scores : numpy.ndarray
        The ``float64`` score table the blocks were chosen from.
    length : int
        Sequence length; views require ``n == length``.
    """

    family = "block_select"

    def __init__(self, chosen: np.ndarray, block_size: int, causal: bool, scores: np.ndarray, params: dict):
        super().__init__(**params)
        self.chosen = chosen
        self.block_size = block_size
        self.causal = causal
        self.scores = scores
        self.length, self.n_blocks = chosen.shape
        self._flat = chosen.ravel()
        self._sizes = np.minimum(block_size, self.length - np.arange(self.n_blocks) * block_size)
        self._torch_tables: dict = {}

    def bind(self, n: int) -> Pattern:
        n = check_size(n)
        if n != self.length:
            raise ValueError(
                f"{self.name} chose blocks for {self.length} queries, but n = {n}: n must equal "
                f"the number of query rows {self.length}"
            )
        return self

    # ----------------------------------------------------------------------------------------------
    # The definition: one lookup in the table of choices
    # ----------------------------------------------------------------------------------------------
    def predicate(self, q, kv):
        last = self.length - 1
        inside = (q >= 0) & (q <= last) & (kv >= 0) & (kv <= last)
        if _is_torch(q):
            # Elementwise gather (no new axes, no reductions), as compiled FlexAttention needs.
            key = str(q.device)
            if key not in self._torch_tables:
                import torch

                self._torch_tables[key] = torch.as_tensor(self._flat, device=q.device)
            flat = self._torch_tables[key]
            hit = flat[q.clamp(0, last) * self.n_blocks + kv.clamp(0, last) // self.block_size]
        else:
            q, kv = np.asarray(q), np.asarray(kv)
            hit = self._flat[np.clip(q, 0, last) * self.n_blocks + np.clip(kv, 0, last) // self.block_size]
        out = hit & inside
        return out & (kv <= q) if self.causal else out

    def code(self, q, kv):
        q, kv = np.asarray(q), np.asarray(kv)
        same = q // self.block_size == kv // self.block_size
        return np.where(q == kv, DIAGONAL, np.where(same, LOCAL, GLOBAL))

    # ----------------------------------------------------------------------------------------------
    # Exact views from the table: keys of row q below x, without evaluating cells
    # ----------------------------------------------------------------------------------------------
    def _keys_below(self, cuts: np.ndarray, r0: int, r1: int) -> np.ndarray:
        """``out[q - r0, t]``: allowed keys of row ``q`` in ``[0, cuts[t])``, rows ``r0 <= q < r1``.

        With ``x = min(cut, q + 1)`` (causal) the keys are the whole chosen blocks below ``x // B``
        plus, if block ``x // B`` is chosen, its ``x mod B`` first keys: prefix sums over the blocks.
        """
        nb, b = self.n_blocks, self.block_size
        chosen = self.chosen[r0:r1]
        whole = np.zeros((r1 - r0, nb + 1), dtype=np.int64)
        np.cumsum(chosen * self._sizes, axis=1, out=whole[:, 1:])
        x = np.broadcast_to(cuts[None, :], (r1 - r0, cuts.size))
        if self.causal:
            x = np.minimum(x, np.arange(r0, r1)[:, None] + 1)
        block = x // b
        partial = np.zeros(x.shape, dtype=np.int64)
        r, c = np.nonzero(block < nb)
        partial[r, c] = chosen[r, block[r, c]] * (x[r, c] - block[r, c] * b)
        return np.take_along_axis(whole, block, axis=1) + partial

    def _row_counts(self, n: int) -> np.ndarray:
        counts = self.chosen @ self._sizes  # whole chosen blocks
        if self.causal:  # the own block holds only the keys up to the query
            q = np.arange(n)
            own = q // self.block_size
            counts -= self.chosen[q, own] * (self._sizes[own] - (q - own * self.block_size + 1))
        return counts

    def _row_counts_bytes(self, n: int) -> int:
        return 32 * n

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        tiles = -(-n // b)
        if self.block_size % b == 0:
            return self._nested_counts(n, b)
        cuts = np.minimum(np.arange(tiles + 1) * b, n)
        counts = np.zeros((tiles, tiles), dtype=np.int64)
        step = max(1, _CHUNK_CELLS // (tiles + 1) // b) * b  # whole tile rows, bounded temporaries
        for r0 in range(0, n, step):
            r1 = min(n, r0 + step)
            per_row = np.diff(self._keys_below(cuts, r0, r1), axis=1)  # keys of each row per tile
            counts[r0 // b : -(-r1 // b)] = np.add.reduceat(per_row, np.arange(0, r1 - r0, b), axis=0)
        return counts

    def _nested_counts(self, n: int, b: int) -> np.ndarray:
        """Tile counts when ``b`` divides the block size: ``O(n * n / b)``, no cuts.

        Each tile column then lies in one block. Below the diagonal a tile holds the whole column
        for each of its rows that chose that block (every key of an earlier tile is before every
        query of the tile row: all share the causal limit). A diagonal tile holds ``q - I*b + 1``
        keys of each row that kept its own block; tiles above it hold none.
        """
        tiles = -(-n // b)
        starts = np.arange(0, n, b)
        sizes = np.minimum(b, n - starts)
        block_of_tile = starts // self.block_size
        counts = np.zeros((tiles, tiles), dtype=np.int64)
        step = max(1, _CHUNK_CELLS // max(tiles, self.n_blocks) // b) * b  # whole tile rows
        for r0 in range(0, n, step):
            chosen = self.chosen[r0 : r0 + step, block_of_tile].astype(np.int64)
            rows = np.add.reduceat(chosen, np.arange(0, chosen.shape[0], b), axis=0)
            counts[r0 // b : r0 // b + rows.shape[0]] = rows * sizes
        if self.causal:
            counts = np.tril(counts, -1)
            q = np.arange(n)
            keys = self.chosen[q, q // self.block_size] * (q % b + 1)
            counts[np.arange(tiles), np.arange(tiles)] = np.add.reduceat(keys, starts)
        return counts

    def _dense(self, n: int) -> np.ndarray:
        out = np.repeat(self.chosen, self.block_size, axis=1)[:, :n]
        return np.tril(out) if self.causal else out


class MoBA(SelectedBlocks):
    """The blocks :func:`moba` chose; ``scores`` is ``q @ kbar.T``."""

    family = "moba"


# --------------------------------------------------------------------------------------------------
# Choosing blocks from a score table
# --------------------------------------------------------------------------------------------------
def _as_float_matrix(x, name: str, shape_text: str) -> np.ndarray:
    """A 2-D float64 numpy copy of a numpy array or torch tensor (moved to the CPU, detached)."""
    if _is_torch(x):
        x = x.detach().cpu().double().numpy()
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.dtype.kind not in "iuf":
        raise ValueError(
            f"{name} must be a 2-D array of real numbers {shape_text}, got {arr.dtype} {arr.shape}"
        )
    return arr.astype(np.float64)


def _choose(scores: np.ndarray, block_size: int, top_k: int, causal: bool, keep_own: bool) -> np.ndarray:
    """The ``(n, nb)`` table of chosen blocks; see :func:`block_select` for the rule."""
    n, nb = scores.shape
    chosen = np.zeros((n, nb), dtype=bool)
    step = max(1, _CHUNK_CELLS // nb)  # rows at a time: temporaries stay bounded
    for r0 in range(0, n, step):
        rows = np.arange(r0, min(n, r0 + step))
        own = rows // block_size
        index = np.broadcast_to(np.arange(nb), (rows.size, nb))
        ranked = index <= own[:, None] if causal else np.ones((rows.size, nb), dtype=bool)
        if keep_own:
            ranked[np.arange(rows.size), own] = False
        # Sort by (excluded, -score, block index): ranked blocks first, best first, ties to the lower
        # index; position[r, b] is block b's place in row r's order.
        order = np.lexsort((index, -scores[rows], ~ranked), axis=1)
        position = np.empty_like(order)
        np.put_along_axis(position, order, index, axis=1)
        slots = np.minimum(top_k - int(keep_own), ranked.sum(axis=1))
        chosen[rows] = (position < slots[:, None]) & ranked
        if keep_own:
            chosen[rows, own] = True
    return chosen


def block_select(
    scores,
    block_size: int,
    top_k: int,
    causal: bool = True,
    keep_own: bool | None = None,
) -> SelectedBlocks:
    """Keep, for every query row, the ``top_k`` key blocks with the highest scores.

    Query ``q`` ranks the key blocks ``b`` (keys ``b*B .. (b+1)*B - 1``, the last block possibly
    shorter) by ``scores[q, b]``, highest first, ties toward the lower block index. With ``causal``
    only blocks ``b <= q // B`` take part and keys after the query are masked (``kv <= q``). With
    ``keep_own`` (default: ``causal``) the query's own block ``q // B`` is always kept and the other
    ``top_k - 1`` places go to the best remaining blocks. A row keeps fewer than ``top_k`` blocks only
    when fewer exist. Any score table works: MoBA's mean-key scores (:func:`moba`), Quest's page
    bounds (:func:`quest_scores`), NSA's importance (:func:`nsa_scores`); ``+inf`` forces a block in,
    ``-inf`` ranks it after every finite score.

    Parameters
    ----------
    scores : array_like or torch.Tensor
        ``(n, ceil(n / block_size))`` real scores, no NaN.
    block_size : int
        Keys per block ``B``; ``>= 1``.
    top_k : int
        Blocks kept per query row; ``>= 1``.
    causal : bool
        Mask future blocks and future keys.
    keep_own : bool, optional
        Always keep the query's own block; default ``causal``.

    Returns
    -------
    SelectedBlocks
        A pattern bound to ``n = scores.shape[0]``.
    """
    block_size = check_int("block_size", block_size, low=1)
    top_k = check_int("top_k", top_k, low=1)
    table = _as_float_matrix(scores, "scores", "of shape (n, ceil(n / block_size))")
    n = check_size(table.shape[0], "scores.shape[0]")
    nb = -(-n // block_size)
    if table.shape[1] != nb:
        raise ValueError(
            f"scores must have shape (n, ceil(n / block_size)) = ({n}, {nb}) for block_size={block_size}, "
            f"got {table.shape}"
        )
    if np.isnan(table).any():
        raise ValueError("scores must not hold NaN (use -inf for a block that should rank last)")
    causal, keep_own = bool(causal), bool(causal if keep_own is None else keep_own)
    chosen = _choose(table, block_size, top_k, causal, keep_own)
    params = {"n": n, "block_size": block_size, "top_k": top_k, "causal": causal, "keep_own": keep_own}
    return SelectedBlocks(chosen, block_size, causal, table, params)


# --------------------------------------------------------------------------------------------------
# Score tables: MoBA, Quest, NSA
# --------------------------------------------------------------------------------------------------
def _queries_and_keys(q, k) -> tuple[np.ndarray, np.ndarray]:
    q = _as_float_matrix(q, "q", "of shape (n, d)")
    k = _as_float_matrix(k, "k", "of shape (n, d)")
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (n, d), got {q.shape} and {k.shape}")
    check_size(q.shape[0], "q.shape[0] (n)")
    check_size(q.shape[1], "q.shape[1] (d)")
    if not (np.isfinite(q).all() and np.isfinite(k).all()):
        raise ValueError("q and k must hold finite numbers (no NaN or inf)")
    return q, k


def block_means(k, block_size: int) -> np.ndarray:
    """Mean key of each block of ``block_size`` rows of ``k`` (the last block may be shorter).

    Returns ``float64 (ceil(n / block_size), d)``.
    """
    block_size = check_int("block_size", block_size, low=1)
    k = _as_float_matrix(k, "k", "of shape (n, d)")
    starts = np.arange(0, k.shape[0], block_size)
    sizes = np.minimum(block_size, k.shape[0] - starts)
    return np.add.reduceat(k, starts, axis=0) / sizes[:, None]


def moba(q, k, block_size: int, top_k: int) -> SelectedBlocks:
    """Mixture of Block Attention (Lu et al., 2025): each query keeps its ``top_k`` best key blocks.

    For query row ``i``: the block means ``kbar[b] = mean(k[b*B:(b+1)*B])`` (the last block may be
    partial) score ``s[b] = q[i] . kbar[b]`` (no ``1/sqrt(d)`` scale); future blocks ``b > i // B``
    are excluded, the query's own block is always chosen, and the remaining ``top_k - 1`` choices are
    the highest scores, ties toward the lower block index (fewer where fewer blocks exist). Query
    ``i`` attends to key ``j`` when ``j <= i`` and block ``j // B`` is chosen.

    Work: ``n * d`` for the means, ``n * ceil(n/B) * d`` for the scores, ``n * ceil(n/B)`` for the
    choice; never ``n x n``.

    Parameters
    ----------
    q, k : array_like or torch.Tensor
        Queries and keys of one head, shape ``(n, d)``, finite.
    block_size : int
        Keys per block ``B``; ``>= 1``.
    top_k : int
        Blocks per query, its own block included; ``>= 1``.

    Returns
    -------
    SelectedBlocks
        Bound to ``n``; ``.scores`` holds ``q @ kbar.T``.
    """
    block_size = check_int("block_size", block_size, low=1)
    top_k = check_int("top_k", top_k, low=1)
    q, k = _queries_and_keys(q, k)
    scores = q @ block_means(k, block_size).T
    chosen = _choose(scores, block_size, top_k, causal=True, keep_own=True)
    n, d = q.shape
    params = {"n": n, "d": d, "block_size": block_size, "top_k": top_k}
    return MoBA(chosen, block_size, True, scores, params)


def quest_scores(q, k, page_size: int) -> np.ndarray:
    """Quest's page criticality (Tang et al., 2024) for every query row, as at decode time.

    Row ``t`` is the decode step whose KV cache holds keys ``0 .. t``. Each page of ``page_size``
    keys keeps the channel-wise maximum ``M`` and minimum ``m`` of its cached keys (the page of ``t``
    only of its keys up to ``t``, as the paper updates them on insertion), and its score is the upper
    bound ``sum_i max(q_i * M_i, q_i * m_i)`` of ``q . k`` over the page. Pages after ``t`` are not
    cached yet: ``-inf``. Use with ``block_select(scores, page_size, top_k, keep_own=False)`` for the
    paper's rule (the top ``K`` pages by bound).

    Returns ``float64 (n, ceil(n / page_size))``.
    """
    page_size = check_int("page_size", page_size, low=1)
    q, k = _queries_and_keys(q, k)
    n, d = q.shape
    nb = -(-n // page_size)
    padded = np.full((nb * page_size, d), np.nan)
    padded[:n] = k
    pages = padded.reshape(nb, page_size, d)
    run_max = np.fmax.accumulate(pages, axis=1).reshape(-1, d)[:n]  # max of the page so far
    run_min = np.fmin.accumulate(pages, axis=1).reshape(-1, d)[:n]
    last = np.minimum(np.arange(1, nb + 1) * page_size, n) - 1  # last cached key of each page
    page_max, page_min = run_max[last], run_min[last]
    # max(q M, q m) is q M where q >= 0 and q m where q < 0 (M >= m): two matrix products.
    pos, neg = np.maximum(q, 0), np.minimum(q, 0)
    scores = pos @ page_max.T + neg @ page_min.T
    own = np.arange(n) // page_size
    scores[np.arange(n), own] = (pos * run_max + neg * run_min).sum(axis=1)
    scores[np.arange(nb)[None, :] > own[:, None]] = -np.inf
    return scores


def nsa_scores(q, k, compress_block: int = 32, stride: int = 16, select_block: int = 64) -> np.ndarray:
    """Importance of NSA's selection blocks (Yuan et al., 2025), Eqs. 7 to 9, for one head.

    Compressed keys are the means of ``k[i*stride : i*stride + compress_block]`` (the paper's
    ``phi`` is a learned MLP with intra-block position encoding: here a plain mean). Query ``t``
    sees the compression blocks that end by ``t`` (``i*stride + compress_block <= t + 1``) and
    ``p_cmp = softmax(q[t] . kcmp)`` over them (as printed, without scale; all zero when none has
    ended). The selection block ``j`` (keys ``j*select_block ..``) then gets Eq. 9 as printed,
    ``p_slc[j] = sum_{m < l'/d} sum_{n < l/d} p_cmp[(l'/d) j - m - n]``, indices outside
    ``p_cmp`` contributing nothing.

    Parameters
    ----------
    q, k : array_like or torch.Tensor
        Queries and keys of one head, shape ``(n, d)``.
    compress_block : int
        ``l``, keys per compression block; ``>= 1``, a multiple of ``stride``.
    stride : int
        ``d``, step between compression blocks; ``>= 1``.
    select_block : int
        ``l'``, keys per selection block; ``>= compress_block``, a multiple of ``stride``.

    Returns
    -------
    numpy.ndarray
        ``float64 (n, ceil(n / select_block))``, for :func:`block_select` with ``block_size =
        select_block``.
    """
    stride = check_int("stride", stride, low=1)
    compress_block = check_int("compress_block", compress_block, low=stride)
    select_block = check_int("select_block", select_block, low=compress_block)
    for name, value in (("compress_block", compress_block), ("select_block", select_block)):
        if value % stride:
            raise ValueError(f"{name} must be a multiple of stride={stride}, got {value}")
    q, k = _queries_and_keys(q, k)
    n = q.shape[0]
    count = max(0, (n - compress_block) // stride + 1)
    starts = np.arange(count) * stride
    csum = np.concatenate([np.zeros((1, k.shape[1])), np.cumsum(k, axis=0)])
    kcmp = (csum[starts + compress_block] - csum[starts]) / compress_block
    logits = q @ kcmp.T
    available = (starts + compress_block)[None, :] <= np.arange(1, n + 1)[:, None]
    logits = np.where(available, logits, -np.inf)
    top = np.max(logits, axis=1, keepdims=True, initial=-np.inf)
    weights = np.where(available, np.exp(logits - np.where(np.isfinite(top), top, 0)), 0.0)
    total = weights.sum(axis=1, keepdims=True)
    p_cmp = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
    # Eq. 9: shift s = m + n occurs (number of (m, n) pairs) times; index (l'/d) j - s.
    a, c = select_block // stride, compress_block // stride
    nb = -(-n // select_block)
    p_slc = np.zeros((n, nb))
    for s in range(a + c - 1):
        pairs = sum(1 for m in range(a) if 0 <= s - m < c)
        index = a * np.arange(nb) - s
        valid = (index >= 0) & (index < count)
        p_slc[:, valid] += pairs * p_cmp[:, index[valid]]
    return p_slc

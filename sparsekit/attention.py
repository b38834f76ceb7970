"""From masks to compute: masked softmax attention in numpy, dense and block-sparse.

Three functions, each taking queries ``q (..., n, d)``, keys ``k (..., m, d)`` and values ``v (..., m, e)``
with the same leading (batch, head) dimensions, in float32 or float64:

* :func:`masked_scores`: the scaled scores ``q k^T * scale`` where attention is allowed, ``fill``
  elsewhere;
* :func:`attention`: the dense reference, ``softmax(masked scores) v`` over all ``n * m`` cells,
  numerically stable, with zeros for query rows that may attend to no key;
* :func:`block_sparse_attention`: the same result computed only on the non-empty tiles of the pattern's
  block layout (:meth:`~sparsekit.Pattern.blocks`). Full tiles are taken whole; the predicate is
  evaluated only inside partial tiles. Work and memory therefore follow the non-empty tiles, not
  ``n**2``.

The block-sparse kernel groups query-tile rows that have the same sequence of tile kinds (for a sliding
window almost every row is "partial, full, full, full, partial") and runs each group in chunks of rows as
a few batched matrix products, so that the Python work is per chunk, not per tile. The key and value
tiles of a chunk are strided views of the inputs when they form a band (no copy), and gathered
otherwise. Scores are laid out keys first (``k q^T``), which suits BLAS for tile-sized products and
keeps the softmax reductions over long contiguous rows. The masks of partial tiles are evaluated once
per call for shift-invariant patterns and shared by every chunk of a band; in unions, global tokens
come from their flags and random cells from their list. Rows that need more tiles than the working
buffer holds are split into segments combined with an online (running-maximum) softmax.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from functools import reduce
from numbers import Real

import numpy as np
from numpy.lib.stride_tricks import as_strided

from ._validate import check_int
from .pattern import Intersection, Pattern, Union

__all__ = ["attention", "block_sparse_attention", "masked_scores"]

# Bytes of score matrix processed at once (one buffer, reused): large enough that each batched matrix
# product is efficient, small enough to stay in the CPU's L2/L3 caches and to bound peak memory.
_WORK_BYTES = 4 << 20
# The dense reference's row chunks: the same idea, sized for long rows of n keys (its products are
# fastest at a few hundred query rows per chunk).
_DENSE_WORK_BYTES = 16 << 20

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


# --------------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------------
def _check_array(name: str, x: object) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype not in _FLOATS:
        raise ValueError(f"{name} must be a float32 or float64 array, got dtype {arr.dtype}")
    if arr.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions (..., tokens, features), got {arr.shape}")
    if arr.shape[-2] < 1 or arr.shape[-1] < 1:
        raise ValueError(f"{name} needs at least one token and one feature, got shape {arr.shape}")
    return arr


def _check_qk(q: object, k: object, v: object = None) -> tuple[np.ndarray, ...]:
    """Arrays ``q (..., n, d)``, ``k (..., m, d)`` and optionally ``v (..., m, e)``, one float dtype."""
    q, k = _check_array("q", q), _check_array("k", k)
    arrays = [q, k]
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"q and k must have the same feature size d, got q {q.shape} and k {k.shape}")
    if q.shape[:-2] != k.shape[:-2]:
        raise ValueError(f"q and k must have the same leading dimensions, got q {q.shape} and k {k.shape}")
    if v is not None:
        v = _check_array("v", v)
        if v.shape[:-1] != k.shape[:-1]:
            raise ValueError(
                f"v must have k's leading dimensions and number of keys, got k {k.shape} and v {v.shape}"
            )
        arrays.append(v)
    if len({a.dtype for a in arrays}) > 1:
        names = ", ".join(f"{n} {a.dtype}" for n, a in zip("qkv", arrays, strict=False))
        raise ValueError(f"q, k and v must share one dtype (float32 or float64), got {names}")
    return tuple(arrays)


def _check_scale(scale: object, d: int) -> float:
    if scale is None:
        return 1.0 / math.sqrt(d)
    if isinstance(scale, bool | np.bool_) or not isinstance(scale, Real) or not math.isfinite(scale):
        raise ValueError(f"scale must be a finite real number or None (1/sqrt(d)), got {scale!r}")
    return float(scale)


def _allowed_mask(mask: object, n: int, m: int, name: str) -> np.ndarray | None:
    """The dense boolean mask ``(n, m)`` (or a broadcastable view) of a Pattern or boolean array."""
    if mask is None:
        return None
    if isinstance(mask, Pattern):
        if n != m:
            raise ValueError(f"a Pattern {name} needs as many queries as keys, got n_q = {n} and n_k = {m}")
        return mask.dense(n)
    arr = np.asarray(mask)
    if arr.dtype != np.bool_:
        raise ValueError(f"{name} must be a sparsekit Pattern or a boolean array, got dtype {arr.dtype}")
    try:
        fits = arr.ndim <= 2 and np.broadcast_shapes(arr.shape, (n, m)) == (n, m)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} of shape {arr.shape} does not broadcast to (n_q, n_k) = {(n, m)}")
    return arr


def _rows_per_chunk(heads: int, m: int, itemsize: int) -> int:
    return max(1, _DENSE_WORK_BYTES // (heads * m * itemsize))


# --------------------------------------------------------------------------------------------------
# Dense
# --------------------------------------------------------------------------------------------------
def masked_scores(q, k, mask, fill: float = -np.inf, scale: float | None = None) -> np.ndarray:
    """Scaled attention scores ``q k^T * scale`` where attention is allowed, ``fill`` elsewhere.

    Parameters
    ----------
    q : ndarray
        Queries, shape ``(..., n, d)``, float32 or float64; leading (batch, head) dimensions equal to
        those of ``k``.
    k : ndarray
        Keys, shape ``(..., m, d)``, the dtype of ``q``.
    mask : Pattern or ndarray
        A sparsekit pattern (then ``n == m``) or a boolean array broadcastable to ``(n, m)``, ``True``
        where query ``i`` may attend to key ``j``.
    fill : float
        Value of the masked scores; ``-inf`` by default.
    scale : float, optional
        Score scale; ``1 / sqrt(d)`` by default.

    Returns
    -------
    ndarray
        Shape ``(..., n, m)``, the dtype of ``q``.
    """
    q, k = _check_qk(q, k)
    if isinstance(fill, bool | np.bool_) or not isinstance(fill, Real):
        raise ValueError(f"fill must be a real number (such as -inf or -1e9), got {fill!r}")
    scale = _check_scale(scale, q.shape[-1])
    if mask is None:
        raise ValueError("mask must be a sparsekit Pattern or a boolean array, got None")
    allowed = _allowed_mask(mask, q.shape[-2], k.shape[-2], "mask")
    scores = (q * q.dtype.type(scale)) @ np.swapaxes(k, -1, -2)
    np.copyto(scores, q.dtype.type(fill), where=~allowed)
    return scores


def _softmax_rows_(scores: np.ndarray) -> np.ndarray:
    """In place: ``scores -= row max; exp``. Returns the row sums (0 for rows with no allowed key)."""
    top = scores.max(axis=-1, keepdims=True)
    top[np.isneginf(top)] = 0  # a row of -inf only: exp(-inf - 0) = 0, not NaN
    scores -= top
    np.exp(scores, out=scores)
    return scores.sum(axis=-1, keepdims=True)


def _normalize_(out: np.ndarray, total: np.ndarray) -> None:
    """In place ``out /= total``. A query with no allowed key has ``total`` 0 and ``out`` exactly 0
    (every weight is ``exp(-inf) = 0``): dividing by 1 instead keeps its zeros. Changes ``total``."""
    total[total == 0] = 1
    np.divide(out, total, out=out)


def attention(q, k, v, pattern=None, scale: float | None = None) -> np.ndarray:
    """Dense masked softmax attention, the reference: ``softmax(masked_scores(q, k, pattern)) v``.

    Every one of the ``n * m`` scores is computed (query rows in chunks, so temporaries stay small);
    the softmax subtracts each row's maximum, and a query row with no allowed key gives zeros.

    Parameters
    ----------
    q : ndarray
        Queries, shape ``(..., n, d)``, float32 or float64.
    k : ndarray
        Keys, shape ``(..., m, d)``, the dtype of ``q``; leading dimensions equal to those of ``q``.
    v : ndarray
        Values, shape ``(..., m, e)``, the dtype of ``q``.
    pattern : Pattern, ndarray or None
        ``None`` for full attention; a sparsekit pattern (``n == m``; its dense mask is built, within
        :func:`~sparsekit.set_memory_budget`) or a boolean array broadcastable to ``(n, m)``.
    scale : float, optional
        Score scale; ``1 / sqrt(d)`` by default.

    Returns
    -------
    ndarray
        Shape ``(..., n, e)``, the dtype of ``q``.
    """
    q, k, v = _check_qk(q, k, v)
    scale = _check_scale(scale, q.shape[-1])
    lead, n, m = q.shape[:-2], q.shape[-2], k.shape[-2]
    allowed = _allowed_mask(pattern, n, m, "pattern")
    if allowed is not None:
        allowed = np.broadcast_to(allowed, (n, m))
    heads = math.prod(lead)
    qs = (q * q.dtype.type(scale)).reshape(heads, n, -1)
    kt = np.swapaxes(k.reshape(heads, m, -1), -1, -2)
    vh = v.reshape(heads, m, -1)
    out = np.empty((heads, n, v.shape[-1]), dtype=q.dtype)
    step = min(n, _rows_per_chunk(heads, m, q.itemsize))
    buf = np.empty(heads * step * m, dtype=q.dtype)
    blocked = np.empty(step * m, dtype=bool)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        scores = np.matmul(qs[:, r0:r1], kt, out=buf[: heads * (r1 - r0) * m].reshape(heads, r1 - r0, m))
        if allowed is not None:
            where = np.logical_not(allowed[r0:r1], out=blocked[: (r1 - r0) * m].reshape(r1 - r0, m))
            np.copyto(scores, -np.inf, where=where)
        total = _softmax_rows_(scores)
        np.matmul(scores, vh, out=out[:, r0:r1])
        _normalize_(out[:, r0:r1], total)
    return out.reshape(lead + (n, v.shape[-1]))


# --------------------------------------------------------------------------------------------------
# Block-sparse
# --------------------------------------------------------------------------------------------------
def _row_groups(layout: np.ndarray) -> dict[bytes, list[int]]:
    """Query-tile rows keyed by the kinds (1 partial, 2 full) of their non-empty tiles, in order."""
    groups: dict[bytes, list[int]] = {}
    for row in range(layout.shape[0]):
        kinds = layout[row][layout[row] != 0]
        if kinds.size:
            groups.setdefault(kinds.tobytes(), []).append(row)
    return groups


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``[start, stop)`` of each run of ``True`` in a 1-d boolean array."""
    edges = np.flatnonzero(np.diff(np.concatenate(([0], flags.astype(np.int8), [0]))))
    return list(zip(edges[0::2].tolist(), edges[1::2].tolist(), strict=True))


def _row_chunks(tiles: np.ndarray, row_step: int) -> list[slice]:
    """Split the rows of a group (their kv tiles ``tiles (g, c)``) into chunks of at most ``row_step``.

    Where the rows' tiles move by the same shift from row to row (a band moves by one tile, block-local
    rows by zero, then by a block), chunks end where the shift changes, so that every chunk's tiles can
    be viewed without copying (see :func:`_pieces`), unless that would make chunks much smaller than
    ``row_step`` (scattered tiles, random attention): then the chunks are plain runs of ``row_step``
    rows, whose tiles are gathered.
    """
    g = tiles.shape[0]
    plain = [slice(r, min(g, r + row_step)) for r in range(0, g, row_step)]
    if g == 1 or row_step == 1:
        return plain
    gaps = np.diff(tiles, axis=1) != 1
    shift = np.diff(tiles, axis=0)  # (g - 1, c): row r + 1 minus row r
    joins = (gaps[1:] == gaps[:-1]).all(axis=1)  # rows r and r + 1 break their tiles alike
    same = np.concatenate(([True], (shift[1:] == shift[:-1]).all(axis=1)))  # shift r equals shift r - 1
    chunks, start = [], 0
    for r in range(g - 1):
        if r + 1 - start < row_step and joins[r] and (r == start or same[r]):
            continue
        chunks.append(slice(start, r + 1))
        start = r + 1
    chunks.append(slice(start, g))
    return chunks if len(chunks) <= len(plain) + g // 4 else plain


# Most pieces of kv tiles a chunk is split into (see _pieces); beyond, its tiles are gathered at once.
_MAX_PIECES = 4


def _pieces(tiles: np.ndarray) -> list[tuple[int, int]]:
    """Split the kv-tile slots ``tiles (g, c)`` of a chunk into ``[start, stop)`` ranges of slots that
    :func:`_tile_view` can serve as a strided view without copying: in each, every row's tiles are
    consecutive and the rows' first tiles are evenly spaced (a band, or one tile column shared by every
    row such as global tokens). Up to ``_MAX_PIECES`` pieces; otherwise the whole range, gathered.
    """
    g, c = tiles.shape
    cuts = [0]
    for s in range(1, c):
        if not (tiles[:, s] == tiles[:, s - 1] + 1).all():
            cuts.append(s)
    cuts.append(c)
    pieces = list(zip(cuts[:-1], cuts[1:], strict=True))
    if len(pieces) > _MAX_PIECES:
        return [(0, c)]
    if g > 1:
        for a, _ in pieces:
            steps = np.diff(tiles[:, a])
            if not (steps == steps[0]).all():
                return [(0, c)]
    return pieces


def _tile_view(tiled: np.ndarray, tiles: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The tiles ``tiles (g, c)`` of ``tiled (h, nb, b, f)`` as an array ``(h, g, c * b, f)``.

    When every row of ``tiles`` is a run of consecutive tiles and the runs start at evenly spaced tiles
    (a band), this is a strided view of ``tiled`` with no copy; otherwise the tiles are gathered into
    ``out``.
    """
    h, _, b, f = tiled.shape
    g, c = tiles.shape
    starts = tiles[:, 0]
    step = int(starts[1] - starts[0]) if g > 1 else 0
    if (tiles == starts[:, None] + np.arange(c)).all() and (starts == starts[0] + step * np.arange(g)).all():
        s_h, s_t, s_r, s_f = tiled.strides
        base = tiled[:, starts[0]]
        return as_strided(base, shape=(h, g, c * b, f), strides=(s_h, step * s_t, s_r, s_f), writeable=False)
    gathered = out[: h * g * c * b * f].reshape(h, g * c, b, f)
    np.take(tiled, tiles.ravel(), axis=1, out=gathered)
    return gathered.reshape(h, g, c * b, f)


def _padded(x: np.ndarray, heads: int, size: int, factor: float | None = None) -> np.ndarray:
    """``x`` as a C-contiguous ``(heads, size, f)`` array, zero rows appended up to ``size`` tokens."""
    n, f = x.shape[-2:]
    x = x.reshape(heads, n, f)
    if n == size and factor is None:
        return np.ascontiguousarray(x)
    out = np.zeros((heads, size, f), dtype=x.dtype)
    if factor is None:
        out[:, :n] = x
    else:
        np.multiply(x, x.dtype.type(factor), out=out[:, :n])
    return out


def _check_layout(layout: object, nb: int) -> np.ndarray:
    arr = np.asarray(layout)
    if arr.shape != (nb, nb) or arr.dtype.kind not in "iu":
        raise ValueError(
            f"layout must be the integer block layout pattern.blocks(n, block_size) of shape {(nb, nb)}, "
            f"got {arr.dtype} of shape {arr.shape}"
        )
    if arr.size and (arr.min() < 0 or arr.max() > 2):
        raise ValueError("layout must hold only 0 (empty), 1 (partial) and 2 (full) tiles")
    return arr.astype(np.uint8, copy=False)


def block_sparse_attention(
    q,
    k,
    v,
    pattern: Pattern,
    block_size: int = 128,
    scale: float | None = None,
    layout: np.ndarray | None = None,
) -> np.ndarray:
    """Masked softmax attention computed only on the non-empty tiles of ``pattern``'s block layout.

    Equal (up to rounding) to ``attention(q, k, v, pattern, scale)``. The layout
    ``pattern.blocks(n, block_size)`` marks each ``block_size x block_size`` tile empty (skipped), full
    (all scores kept, the predicate is not evaluated) or partial (the predicate is evaluated on the
    tile's index grid and forbidden scores set to ``-inf``). The softmax of a query row runs across all
    of its tiles with a running maximum; a row with no allowed key gives zeros.

    Query-tile rows with the same sequence of tile kinds are processed together, as batched matrix
    products over their key and value tiles (a strided view, without copying, when the tiles form a
    band); temporaries are bounded by a fixed working buffer, so peak memory grows with the inputs and
    output, not with ``n**2``.

    Parameters
    ----------
    q : ndarray
        Queries, shape ``(..., n, d)``, float32 or float64; any leading (batch, head) dimensions.
    k : ndarray
        Keys, shape ``(..., n, d)``, the dtype of ``q``; same leading dimensions and number of tokens as
        ``q``.
    v : ndarray
        Values, shape ``(..., n, e)``, the dtype of ``q``.
    pattern : Pattern
        A sparsekit pattern, bound to ``n`` here.
    block_size : int
        Tile size; ``>= 1``. ``n`` need not be a multiple of it (the last tiles are smaller).
    scale : float, optional
        Score scale; ``1 / sqrt(d)`` by default.
    layout : ndarray, optional
        ``pattern.blocks(n, block_size)`` when already computed: it depends only on the pattern, ``n``
        and ``block_size``, so, like FlexAttention's ``BlockMask``, it can be built once and reused
        across calls (layers, heads, steps). It must be that layout; only its shape and values are
        checked.

    Returns
    -------
    ndarray
        Shape ``(..., n, e)``, the dtype of ``q``.
    """
    q, k, v = _check_qk(q, k, v)
    if not isinstance(pattern, Pattern):
        raise ValueError(f"pattern must be a sparsekit Pattern, got {type(pattern).__name__}")
    b = check_int("block_size", block_size, low=1)
    scale = _check_scale(scale, q.shape[-1])
    lead, n, m, e = q.shape[:-2], q.shape[-2], k.shape[-2], v.shape[-1]
    if n != m:
        raise ValueError(f"block-sparse attention needs as many queries as keys, got n_q = {n} and n_k = {m}")
    p = pattern.bind(n)
    nb = -(-n // b)
    layout = p.blocks(n, b) if layout is None else _check_layout(layout, nb)
    size = nb * b
    heads, d, dtype = math.prod(lead), q.shape[-1], q.dtype
    tile_bytes = b * b * dtype.itemsize

    # Tiled, zero-padded copies (O(n d)); the scale is folded into the queries. Padded keys are masked
    # in _chunk, padded query rows are dropped at the end.
    qt = _padded(q, heads, size, scale).reshape(heads, nb, b, d)
    kt = _padded(k, heads, size).reshape(heads, nb, b, d)
    vt = _padded(v, heads, size).reshape(heads, nb, b, e)
    out = np.zeros((heads, size, e), dtype=dtype)
    ctx = _Context(p, n, b, nb, dtype)

    # Heads per pass, tiles per segment and query tiles per chunk, so that the scores of a chunk fit
    # the working buffer (rows needing more tiles are split into segments: online softmax).
    head_step = max(1, min(heads, _WORK_BYTES // tile_bytes))
    seg_tiles = max(1, _WORK_BYTES // (head_step * tile_bytes))
    for key, rows in _row_groups(layout).items():
        kinds = np.frombuffer(key, dtype=np.uint8)
        rows = np.asarray(rows)
        tiles = np.stack([np.flatnonzero(layout[r]) for r in rows])
        seg = min(kinds.size, seg_tiles)
        row_step = max(1, _WORK_BYTES // (head_step * seg * tile_bytes))
        ctx.reserve(head_step * min(row_step, rows.size) * seg * b, max(d, e))
        chunks = _row_chunks(tiles, row_step)
        for h0 in range(0, heads, head_step):
            h = slice(h0, h0 + head_step)
            for g in chunks:
                _chunk(ctx, qt[h], kt[h], vt[h], out[h], rows[g], tiles[g], kinds, seg)
    result = out[:, :n] if size != n else out
    return np.ascontiguousarray(result).reshape(lead + (n, e))


class _Context:
    """What every chunk of one call shares: the bound pattern, sizes, reusable buffers and masks.

    The pattern is split into the terms of its union (a pattern that is not a union is one term):
    global tokens (whole rows and columns, from their flags), parts that list their cells (random
    attention, scattered from the list: their predicate compares every cell with every listed key) and
    the other parts, whose predicates are evaluated on the partial tiles.
    """

    def __init__(self, p: Pattern, n: int, b: int, nb: int, dtype) -> None:
        self.p, self.n, self.b, self.nb, self.offsets = p, n, b, nb, np.arange(b)
        self.work = self.gather_k = self.gather_v = np.empty(0, dtype=dtype)
        # Masks of partial tiles shared by the chunks of a band, for this call only (see _part_mask);
        # the oldest are dropped beyond _WORK_BYTES.
        self.shared: OrderedDict = OrderedDict()
        self.shared_bytes = 0
        parts = p.parts if isinstance(p, Union) and not isinstance(p, Intersection) else (p,)
        others: list[Pattern] = []
        self.global_flags = None
        listed = []
        for part in parts:
            flags, cells = part._global_flags(n), part._listed_cells(n)
            if flags is not None:
                self.global_flags = flags if self.global_flags is None else self.global_flags | flags
            elif cells is not None:
                listed.append(cells)
            else:
                others.append(part)
        self.core = None if not others else others[0] if len(others) == 1 else Union(*others)
        self.listed = self.core_layout = None
        if listed:
            cells = np.unique(np.concatenate(listed))  # flat i * n + j, sorted by row
            self.listed = cells, np.searchsorted(cells, np.arange(nb + 1) * b * n)
            if self.core is not None:
                # Random cells make almost every tile partial; the core's own layout tells on which of
                # them its predicate is needed at all (the window of BigBird: a few tiles per row).
                self.core_layout = self.core.blocks(n, b)

    def share(self, key, value: np.ndarray) -> np.ndarray:
        """Keep ``value`` under ``key`` for later chunks, within a bounded number of bytes."""
        self.shared[key] = value
        self.shared_bytes += value.nbytes
        while self.shared_bytes > _WORK_BYTES and len(self.shared) > 1:
            self.shared_bytes -= self.shared.popitem(last=False)[1].nbytes
        return value

    def reserve(self, cells: int, features: int) -> None:
        """Grow the buffers to hold ``cells`` scores by ``b`` and ``cells`` gathered tokens."""
        if self.work.size < cells * self.b:
            self.work = np.empty(cells * self.b, dtype=self.work.dtype)
        if self.gather_k.size < cells * features:
            self.gather_k = np.empty(cells * features, dtype=self.work.dtype)
            self.gather_v = np.empty(cells * features, dtype=self.work.dtype)


def _chunk(ctx: _Context, qt, kt, vt, out, rows, tiles, kinds, seg: int) -> None:
    """Attention for the query tiles ``rows`` over their kv ``tiles``, in segments of ``seg`` tiles.

    The scores of a segment are laid out ``(keys, heads, query tiles, queries)``: keys along axis 0 and
    every query of the chunk along the contiguous last three axes. Each tile row's product ``k q^T``
    (with a short inner dimension ``d``, markedly faster in BLAS than ``q k^T`` for tile-sized
    operands) is written straight into that layout, and the softmax reductions over the keys then run
    over long contiguous rows, as in the dense case.
    """
    b, n, nb = ctx.b, ctx.n, ctx.nb
    h, g = qt.shape[0], rows.size
    e = vt.shape[-1]
    last_valid = n - (nb - 1) * b  # real keys in the last tile
    consecutive = g == 1 or bool((np.diff(rows) == 1).all())
    queries = qt[:, rows[0] : rows[-1] + 1] if consecutive else qt[:, rows]  # a view when consecutive
    queries_t = np.swapaxes(queries, -1, -2)
    top = acc = total = None
    c = kinds.size
    for s0 in range(0, c, seg):
        s1 = min(c, s0 + seg)
        width = (s1 - s0) * b
        grid = ctx.work[: width * h * g * b].reshape(width, h, g, b)
        pieces = _pieces(tiles[:, s0:s1])
        for a, z in pieces:
            keys = _tile_view(kt, tiles[:, s0 + a : s0 + z], ctx.gather_k)
            np.matmul(keys, queries_t, out=grid[a * b : z * b].transpose(1, 2, 0, 3))
        # Partial tiles: -inf where the predicate forbids; full tiles are left alone.
        for a, z in _runs(kinds[s0:s1] == 1):
            bias = _partial_bias(ctx, rows, tiles[:, s0 + a : s0 + z], grid.dtype)
            region = grid[a * b : z * b]
            np.add(region, bias[:, None], out=region)
        if last_valid < b:
            # A row's last tile may stick out past n (tiles ascend, so only the final slot can be tile
            # nb - 1); its padded keys are never attended.
            padded = tiles[:, s1 - 1] == nb - 1
            if padded.all():
                grid[width - b + last_valid :] = -np.inf
            elif padded.any():
                grid[width - b + last_valid :, :, padded] = -np.inf
        seg_top = grid.max(axis=0, keepdims=True)
        new_top = seg_top if top is None else np.maximum(top, seg_top)
        shift = new_top.copy()
        shift[np.isneginf(shift)] = 0  # queries with nothing allowed (yet): exp(-inf - 0) = 0, not NaN
        grid -= shift
        np.exp(grid, out=grid)
        part = None
        for a, z in pieces:
            values = _tile_view(vt, tiles[:, s0 + a : s0 + z], ctx.gather_v)
            piece = np.matmul(grid[a * b : z * b].transpose(1, 2, 3, 0), values)
            part = piece if part is None else np.add(part, piece, out=part)
        part_total = grid.sum(axis=0)[..., None]
        if acc is None:
            acc, total = part, part_total
        else:
            # Online softmax: rescale what earlier segments accumulated to the new running maximum.
            alpha = np.exp(top - shift)[0, ..., None]
            acc *= alpha
            acc += part
            total *= alpha
            total += part_total
        top = new_top
    target = out.reshape(h, -1, b, e)
    if consecutive:  # normalize straight into the output
        total[total == 0] = 1  # as in _normalize_: queries with no allowed key keep their zeros
        np.divide(acc, total, out=target[:, rows[0] : rows[-1] + 1])
    else:
        _normalize_(acc, total)
        target[:, rows] = acc


def _partial_bias(ctx: _Context, rows: np.ndarray, tiles: np.ndarray, dtype) -> np.ndarray:
    """Additive mask (0 allowed, -inf forbidden) of the partial tiles ``tiles (g, t)`` of ``rows (g,)``.

    Laid out like the scores without their head axis: shape ``(t * b, g, b)`` (keys, rows, queries), or
    ``(t * b, 1, b)`` when every row's tiles hold the same cells (see :func:`_part_mask`). The union's
    terms are combined with ``or``; global tokens and listed cells only where the chunk meets them.
    """
    b, n = ctx.b, ctx.n
    masks, keys = [], []
    if ctx.core_layout is not None:
        mask = _core_mask_by_tiles(ctx, rows, tiles)
        if mask is not None:
            masks.append(mask)
            keys.append(None)
    elif ctx.core is not None:
        mask, key = _part_mask(ctx, ctx.core, rows, tiles)
        masks.append(mask)
        keys.append(key)
    if ctx.global_flags is not None:
        flags = ctx.global_flags
        q_flags = flags[np.minimum(rows[:, None] * b + ctx.offsets, n - 1)]  # (g, b)
        kv_flags = flags[np.minimum(tiles[:, :, None] * b + ctx.offsets, n - 1)].reshape(rows.size, -1)
        if q_flags.any() or kv_flags.any():
            masks.append(kv_flags.T[:, :, None] | q_flags[None])
            keys.append(None)
    if ctx.listed is not None:
        mask = _listed_mask(ctx, rows, tiles)
        if mask is not None:
            masks.append(mask)
            keys.append(None)
    cache = ("bias", *keys) if keys and None not in keys else None
    if cache is not None and cache in ctx.shared:
        return ctx.shared[cache]
    if masks:
        allowed = masks[0] if len(masks) == 1 else reduce(np.logical_or, masks)
    else:  # no term has a cell here (only with a layout that is not the pattern's)
        allowed = np.zeros((tiles.shape[1] * b, 1, b), dtype=bool)
    bias = np.where(allowed, dtype.type(0), dtype.type(-np.inf))
    return bias if cache is None else ctx.share(cache, bias)


def _part_mask(ctx: _Context, part: Pattern, rows: np.ndarray, tiles: np.ndarray):
    """``part``'s predicate on the chunk's partial tiles, a bool array ``(t * b, g or 1, b)``, and its
    cache key (``None`` when not shared).

    For a shift-invariant part (``p(i + P, j + P) == p(i, j)``) tiles ``(I, J)`` and ``(I', J')`` agree
    when ``I - J == I' - J'`` and ``(I' - I) * b`` is a multiple of ``P``, as for the rows of a band: the
    predicate is then evaluated on one row of tiles, once per call, and shared by every chunk.
    """
    b, n = ctx.b, ctx.n
    whole = n // b  # tiles inside [0, n) in both directions
    key = None
    if part.period is not None and rows[-1] < whole and tiles.max() < whole:
        cycle = math.lcm(part.period, b) // b
        if (rows % cycle == rows[0] % cycle).all() and (rows[:, None] - tiles == rows[0] - tiles[0]).all():
            key = (id(part), int(rows[0] % cycle), (rows[0] - tiles[0]).tobytes())
            if key in ctx.shared:
                return ctx.shared[key], key
            rows, tiles = rows[:1], tiles[:1]
    # Token indices, clamped into [0, n) (cells past n are padding, masked or dropped elsewhere), as
    # broadcastable grids (keys, rows, 1) and (1, rows, queries) in the layout of the scores.
    q_idx = np.minimum(rows[:, None] * b + ctx.offsets, n - 1)[None]
    kv_idx = np.minimum((tiles[:, :, None] * b + ctx.offsets).reshape(rows.size, -1).T, n - 1)[..., None]
    allowed = np.asarray(part.predicate(q_idx, kv_idx), dtype=bool)
    allowed = np.broadcast_to(allowed, (kv_idx.shape[0], rows.size, b))
    return (allowed if key is None else ctx.share(key, allowed)), key


def _core_mask_by_tiles(ctx: _Context, rows: np.ndarray, tiles: np.ndarray) -> np.ndarray | None:
    """The core's cells in the chunk's tiles, a bool array ``(t * b, g, b)``, or ``None`` when the core
    has no cell there: its predicate is evaluated only on the slots where its own layout has cells."""
    b, n = ctx.b, ctx.n
    slots = np.flatnonzero(ctx.core_layout[rows[:, None], tiles].any(axis=0))
    if not slots.size:
        return None
    mask = np.zeros((tiles.shape[1] * b, rows.size, b), dtype=bool)
    q_idx = np.minimum(rows[:, None] * b + ctx.offsets, n - 1)[None]
    kv_tok = (tiles[:, slots, None] * b + ctx.offsets).reshape(rows.size, -1).T
    allowed = ctx.core.predicate(q_idx, np.minimum(kv_tok, n - 1)[..., None])
    where = (slots[:, None] * b + ctx.offsets).ravel()
    mask[where] = np.broadcast_to(np.asarray(allowed, dtype=bool), (where.size, rows.size, b))
    return mask


def _listed_mask(ctx: _Context, rows: np.ndarray, tiles: np.ndarray) -> np.ndarray | None:
    """The listed cells (random attention) that fall in the chunk's tiles, as a bool array
    ``(t * b, g, b)``, or ``None`` when there are none."""
    b, n = ctx.b, ctx.n
    cells, starts = ctx.listed
    mask = None
    for g, row in enumerate(rows.tolist()):
        i, j = np.divmod(cells[starts[row] : starts[row + 1]], n)
        slot = np.minimum(np.searchsorted(tiles[g], j // b), tiles.shape[1] - 1)
        inside = tiles[g, slot] == j // b  # the key's tile is one of this chunk's tiles
        if inside.any():
            if mask is None:
                mask = np.zeros((tiles.shape[1] * b, rows.size, b), dtype=bool)
            mask[slot[inside] * b + j[inside] % b, g, i[inside] - row * b] = True
    return mask

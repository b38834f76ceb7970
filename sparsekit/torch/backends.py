"""Attention backends: every way sparsekit computes attention in PyTorch, in one place.

An attention function takes ``q, k, v`` shaped ``(batch, heads, length, head_dim)`` and returns the
output of the same shape. The backends:

* :func:`causal_sdpa`: dense causal ``scaled_dot_product_attention``, no mask tensor (the floor of dense
  attention);
* :func:`masked_sdpa_fn`: dense SDPA under a boolean ``n x n`` mask, the dense reference (and the CPU
  fallback where FlexAttention cannot run);
* :func:`flex_attention_fn`: ``flex_attention`` with a :class:`~torch.nn.attention.flex_attention.BlockMask`,
  eager or compiled. Compiled calls go through :func:`compiled_flex_attention`, a bounded cache of
  compiled callables, one recompile region per pattern, so a process may compile any number of patterns;
* :func:`tile_layout` and :func:`tile_attention`: attention whose backward walks the tiles the mask lists
  (exact softmax gradients, a learnable score-bias table included). FlexAttention in torch 2.13 refuses
  gradients on the CPU, eager or compiled (``NotImplementedError: FlexAttention does not support
  backward on CPU``), so on the CPU its forward runs on detached tensors inside an autograd function
  whose backward is this one; on other devices FlexAttention's own backward runs.

What FlexAttention does on a CPU (torch 2.13): eager, it is PyTorch's *unfused* reference, which builds
the ``n x n`` scores and evaluates the ``mask_mod`` on every cell; it reads only the ``mask_mod`` of the
``BlockMask`` and ignores its tile tables (emptying them changes nothing), so it costs more than dense
SDPA. ``torch.compile(flex_attention)`` generates a C++ kernel that walks the tile tables: it skips
empty tiles and applies the ``mask_mod`` only on partial ones (emptying the tables changes its output).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from ..masks.longrange import Random
from ..pattern import Complement, Pattern, Union
from .blockmask import block_mask, flex_layout

__all__ = [
    "AttentionFn",
    "BiasIndex",
    "Tile",
    "TileLayout",
    "causal_sdpa",
    "compiled_flex_attention",
    "flex_attention_fn",
    "masked_sdpa_fn",
    "safe_softmax",
    "tile_attention",
    "tile_layout",
    "tile_scores",
]

#: ``(q, k, v) -> out`` on tensors ``(batch, heads, length, head_dim)``: the attention a layer runs.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
#: ``index(rows, cols) -> int64 (len(rows), len(cols))``: where each (query, key) pair reads its score
#: bias in a table flattened to ``(heads, entries)`` (see :func:`tile_scores`).
BiasIndex = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

_EAGER_WARNING = "flex_attention called without torch.compile"


# ------------------------------------------------------------------------------------------------
# Dense SDPA
# ------------------------------------------------------------------------------------------------
def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Dense causal ``scaled_dot_product_attention`` (no mask tensor)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def masked_sdpa_fn(mask: np.ndarray | torch.Tensor) -> AttentionFn:
    """Dense SDPA under a boolean mask ``(n, n)`` (``True`` = may attend): the dense reference."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if m.dtype != torch.bool or m.ndim != 2:
        raise ValueError(f"mask must be a 2-D boolean array, got {m.dtype} of shape {tuple(m.shape)}")

    def masked_sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    return masked_sdpa


# ------------------------------------------------------------------------------------------------
# FlexAttention, eager or compiled through a bounded cache
# ------------------------------------------------------------------------------------------------
def _flex_call(q, k, v, block_mask, **options):
    """``flex_attention`` as sparsekit compiles it: a code object of its own, so that dropping
    sparsekit's compiled graphs never touches a caller's ``torch.compile(flex_attention)``."""
    return flex_attention(q, k, v, block_mask=block_mask, **options)


# Compiled regions by (pattern name, lengths, tile size, input shapes); see compiled_flex_attention.
_compiled_regions: dict = {}


def _region(mask: BlockMask, q, k, v) -> Callable:
    """The compiled ``_flex_call`` of ``mask``'s pattern, lengths and tile size and of the inputs'
    shapes, dtype and device (made on first use)."""
    pattern = getattr(mask.mask_mod, "pattern", None)
    inputs = (tuple(q.shape), tuple(k.shape), tuple(v.shape), q.dtype, q.device.type)
    key = (mask.mask_mod if pattern is None else pattern.name, mask.seq_lengths, mask.BLOCK_SIZE, inputs)
    if key not in _compiled_regions:
        config = torch._dynamo.config
        if len(_compiled_regions) + 1 > config.accumulated_recompile_limit // config.recompile_limit:
            torch._dynamo.reset_code(_flex_call.__code__)
            _compiled_regions.clear()
        _compiled_regions[key] = torch.compile(_flex_call, dynamic=False, isolate_recompiles=True)
    return _compiled_regions[key]


def compiled_flex_attention(q, k, v, *, block_mask: BlockMask, **options):
    """``torch.compile(flex_attention, dynamic=False)(q, k, v, block_mask=block_mask, **options)``.

    A drop-in for a compiled ``flex_attention`` that survives any number of patterns in one process.
    With one compiled function every pattern is a new graph of it, and the 9th pattern of a process
    hits dynamo's ``recompile_limit`` (8). Here each pattern (its name, lengths and tile size) and
    each input shape (batch, heads, head size, dtype) gets a recompile region of its own
    (``isolate_recompiles=True``), so a region compiles once (again only for other options, such as
    another ``score_mod``) and a layer fed many batch sizes never meets that limit. All regions share
    ``accumulated_recompile_limit``; keeping at most ``accumulated // recompile_limit`` regions,
    and dropping every compiled graph of this cache when one more is needed, keeps the cache bounded
    and under that cap (a dropped graph recompiles from inductor's on-disk cache in about a second).
    Compile with ``dynamic=False``: a symbolic shape fails to compile in the
    CPU kernel of torch 2.13 (see :mod:`sparsekit.torch.blockmask`).
    """
    return _region(block_mask, q, k, v)(q, k, v, block_mask=block_mask, **options)


def flex_attention_fn(mask: BlockMask, compile: bool = False) -> Callable[..., torch.Tensor]:
    """``flex_attention`` with ``mask`` as an attention function ``(q, k, v, **options) -> out``.

    ``options`` go to ``flex_attention`` (``score_mod``, ``scale``, ...). Eager (``compile=False``) runs
    PyTorch's unfused reference, which evaluates the ``mask_mod`` on every cell; its one-time "called
    without torch.compile" warning is silenced here because that path is chosen on purpose.
    ``compile=True`` runs :func:`compiled_flex_attention` (a C++ kernel on the CPU, compiled once per
    pattern and input shape: seconds). Should a region still pass dynamo's ``recompile_limit`` (8 sets
    of options for one pattern and shape), the call raises ``FailOnRecompileLimitHit`` instead of
    silently running eagerly, so "compiled" never means eager. The returned function keeps ``mask``
    as ``.block_mask``.
    """
    if not isinstance(mask, BlockMask):
        raise ValueError(f"mask must be a FlexAttention BlockMask, got {type(mask).__name__}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")

    def flex(q, k, v, **options):
        strict = torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)
        with warnings.catch_warnings(), strict if compile else contextlib.nullcontext():
            warnings.filterwarnings("ignore", message=_EAGER_WARNING)
            attend = compiled_flex_attention if compile else flex_attention
            return attend(q, k, v, block_mask=mask, **options)

    flex.block_mask = mask
    return flex


# ------------------------------------------------------------------------------------------------
# Tile attention: FlexAttention forward, a backward that walks the listed tiles (CPU-capable)
# ------------------------------------------------------------------------------------------------
@dataclass
class Tile:
    """One query tile: rows ``start:stop``, the key columns its listed tiles cover, and their mask.

    ``mask`` is ``None`` when every listed cell is allowed (only full tiles).
    """

    start: int
    stop: int
    cols: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class TileLayout:
    """A pattern at one length: its ``BlockMask`` (``None`` when not built) and its query tiles."""

    pattern: Pattern
    n: int
    block_mask: BlockMask | None
    tiles: list[Tile]


def _listed(p: Pattern) -> bool:
    """Whether ``p`` contains a part defined by a list of cells (random attention)."""
    if isinstance(p, Union):  # Intersection is a Union subclass
        return any(_listed(part) for part in p.parts)
    if isinstance(p, Complement):
        return _listed(p.inner)
    return isinstance(p, Random)


def tile_layout(
    pattern: Pattern, n: int, block_size: int = 128, device: torch.device | str = "cpu", flex: bool = True
) -> TileLayout:
    """The tiles of ``pattern`` at length ``n`` for :func:`tile_attention`, and its ``BlockMask``.

    Each query tile (``block_size`` rows) lists the key columns of the tiles FlexAttention computes for
    it, in FlexAttention's conventions (:func:`~sparsekit.torch.blockmask.flex_layout`), with the cell
    mask of its partial tiles. ``flex=False`` skips the ``BlockMask``. For a pattern with random
    attention the ``BlockMask``'s ``mask_mod`` becomes a lookup in the ``n x n`` boolean mask: eager
    FlexAttention evaluates the ``mask_mod`` on every cell, and random attention's predicate compares
    each cell with every drawn key of its row (``n * n`` bytes buy that back).
    """
    device = torch.device(device)
    p = pattern.bind(n)
    bm = block_mask(p, n, block_size=block_size, device=device) if flex else None
    dense = None
    if _listed(p):
        dense = p.dense(n)
        dense_lookup = torch.from_numpy(dense).to(device)
        if bm is not None:

            def lookup_mask_mod(b, h, q_idx, kv_idx):
                return dense_lookup[q_idx, kv_idx]

            bm.mask_mod = lookup_mask_mod
    grid = flex_layout(p, n, block_size)
    tiles = []
    span = np.arange(block_size)
    for bi in range(grid.shape[0]):
        start, stop = bi * block_size, min(n, (bi + 1) * block_size)
        chosen = np.flatnonzero(grid[bi])
        cols = (chosen[:, None] * block_size + span).ravel()
        partial = np.repeat(grid[bi, chosen] == 1, block_size)
        keep = cols < n
        cols, partial = cols[keep], partial[keep]
        mask = None
        if partial.any():
            rows = np.arange(start, stop)
            mask = np.ones((rows.size, cols.size), dtype=bool)
            sub = cols[partial]
            if dense is not None:
                mask[:, partial] = dense[rows[:, None], sub[None, :]]
            else:
                mask[:, partial] = np.broadcast_to(
                    np.asarray(p.predicate(rows[:, None], sub[None, :]), dtype=bool), (rows.size, sub.size)
                )
            mask = torch.from_numpy(mask).to(device)
        tiles.append(Tile(start, stop, torch.from_numpy(cols.astype(np.int64)).to(device), mask))
    return TileLayout(p, n, bm, tiles)


def tile_scores(q, k, tile: Tile, scale: float, table=None, index: BiasIndex | None = None):
    """Scores of one query tile against its listed keys, with bias and mask: ``(B, h, rows, cols)``.

    Returns ``(scores, keys of the listed columns, flat bias index or None)``; masked cells are
    ``-inf``. ``table`` ``(h, ...)`` adds ``table.flatten(1)[:, index(rows, cols)]``.
    """
    ks = k.index_select(2, tile.cols)
    s = (q[:, :, tile.start : tile.stop] @ ks.transpose(-2, -1)) * scale
    flat = None
    if table is not None:
        flat = index(torch.arange(tile.start, tile.stop, device=q.device), tile.cols)
        s = s + table.flatten(1)[:, flat]
    if tile.mask is not None:
        s = s.masked_fill(~tile.mask, float("-inf"))
    return s, ks, flat


def safe_softmax(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis; rows with no allowed key are all zero (as FlexAttention returns)."""
    p = torch.softmax(s, dim=-1)
    return torch.where(torch.isinf(s).all(dim=-1, keepdim=True), torch.zeros_like(p), p)


class _TileAttention(torch.autograd.Function):
    """``attend``'s forward (FlexAttention), the exact backward tile by tile over the listed tiles."""

    @staticmethod
    def forward(ctx, q, k, v, table, layout, index, attend):
        # Detached: flex_attention refuses CPU inputs that require grad, even with grad mode off.
        out = attend(q.detach(), k.detach(), v.detach(), None if table is None else table.detach())
        ctx.save_for_backward(q, k, v, table, out)
        ctx.layout, ctx.index = layout, index
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, table, out = ctx.saved_tensors
        scale = q.shape[-1] ** -0.5
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dtable = None if table is None else torch.zeros_like(table)
        # delta_i = sum_j P_ij dP_ij = <dO_i, O_i>: the softmax Jacobian term, from the saved output.
        delta = (grad_out * out).sum(dim=-1, keepdim=True)
        for tile in ctx.layout.tiles:
            rows = slice(tile.start, tile.stop)
            s, ks, flat = tile_scores(q, k, tile, scale, table, ctx.index)
            p = safe_softmax(s)
            vs = v.index_select(2, tile.cols)
            do = grad_out[:, :, rows]
            dv.index_add_(2, tile.cols, p.transpose(-2, -1) @ do)
            ds = p * (do @ vs.transpose(-2, -1) - delta[:, :, rows])
            dq[:, :, rows] = (ds @ ks) * scale
            dk.index_add_(2, tile.cols, (ds.transpose(-2, -1) @ q[:, :, rows]) * scale)
            if dtable is not None:
                dtable.view(dtable.shape[0], -1).index_add_(1, flat.flatten(), ds.sum(0).flatten(1))
        return dq, dk, dv, dtable, None, None, None


def tile_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: TileLayout,
    attend: Callable,
    table: torch.Tensor | None = None,
    index: BiasIndex | None = None,
) -> torch.Tensor:
    """``attend(q, k, v, table)`` with gradients on every device.

    ``attend`` is the forward (FlexAttention under ``layout.block_mask``, the bias applied as its
    ``score_mod``), and must compute ``softmax(q k^T / sqrt(d) + table[index] masked) v`` over the
    layout's pattern. Off the CPU, or when no input needs a gradient, it runs as it is (FlexAttention's
    own backward). On the CPU with gradients it runs on detached inputs inside an autograd function
    whose backward recomputes, for each query tile, the scores against the keys of the listed tiles
    (the only keys a row may attend to) and applies the exact softmax gradient: it costs the listed
    tiles, not ``n x n``, and gives ``table`` its gradient too.
    """
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (q, k, v, table))
    if not needs_grad or q.device.type != "cpu":
        return attend(q, k, v, table)
    return _TileAttention.apply(q, k, v, table, layout, index, attend)

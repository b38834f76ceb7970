"""A sparse-attention layer for feature maps, run by FlexAttention with sparsekit's block masks.

A ``B x C x H x W`` feature map is read row-major into ``n = H * W`` tokens (pixel ``(r, c)`` is token
``r * W + c``, as in the image-patterns chapter). :class:`SparseAttention2d` projects the map to queries,
keys and values with ``1 x 1`` convolutions, lets every head attend under one sparsekit pattern, and
projects back:

* :func:`vision_pattern` turns the names of the seed project (``"random"``, ``"block"``, ``"strided"``,
  ``"axial"``, ``"longformer"``, plus ``"dense"``) into exact sparsekit patterns over the ``H * W``
  tokens;
* the forward pass calls ``torch.nn.attention.flex_attention.flex_attention`` with the ``BlockMask`` of
  :func:`sparsekit.torch.blockmask.block_mask` (built once per map size and cached), an optional learnable
  relative position bias as its ``score_mod``, and a learnable gate per head that can prune heads;
* on a GPU the backward pass is FlexAttention's own; on the CPU it is sparsekit's: FlexAttention in torch
  2.13 refuses gradients on the CPU, eager or compiled (``NotImplementedError: FlexAttention does not
  support backward on CPU. Please set the input requires_grad to False or use another device.``), so
  :class:`SparseAttention2d` wraps it in an autograd function whose backward walks the same
  ``BlockMask`` one query tile at a time, touching only the key tiles the mask lists (exact softmax
  gradients, relative-bias gradients included);
* :meth:`SparseAttention2d.attention_stats` recomputes, exactly, the mean weight, row entropy, mean row
  maximum and realised sparsity of the attention of the last forward pass.

:class:`SparseAttentionClassifier`, :func:`synthetic_images` and :func:`train_steps` make a small
CIFAR-10-shaped classifier that trains in seconds on a CPU, and :func:`measure_layer` times the layer
against the same layer with dense ``scaled_dot_product_attention`` and records peak memory.

What FlexAttention does on a CPU (torch 2.13): called eagerly it is an *unfused* reference
implementation that evaluates the mask and ``score_mod`` on every one of the ``n x n`` cells (the block
tables are not used), so its cost is that of dense attention plus the mask; ``torch.compile`` makes a
fused C++ kernel that skips empty tiles, but on the CPU only for inference (``compile=True`` here uses it
for the forward pass; the backward is sparsekit's either way).
"""

from __future__ import annotations

import contextlib
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, flex_attention

from .._validate import check_fraction, check_int
from ..masks.image import axial
from ..masks.local import block_local, window
from ..masks.longrange import Random, longformer, random
from ..masks.sparse_transformer import strided
from ..pattern import Complement, Pattern, Union
from .blockmask import block_mask, flex_layout

__all__ = [
    "VISION_PATTERNS",
    "SparseAttention2d",
    "SparseAttentionClassifier",
    "format_measurements",
    "measure_layer",
    "synthetic_images",
    "train_steps",
    "vision_pattern",
]

#: Pattern names :func:`vision_pattern` accepts, each with its options and their defaults (``None``:
#: derived from the map, see :func:`vision_pattern`).
VISION_PATTERNS: dict[str, dict[str, object]] = {
    "random": {"attention_ratio": 0.1, "seed": 0},
    "block": {"block": 128},
    "strided": {"window": None, "stride": None},
    "axial": {},
    "longformer": {"window": None, "global_width": 4},
    "dense": {},
}


# --------------------------------------------------------------------------------------------------
# Patterns over the tokens of a feature map
# --------------------------------------------------------------------------------------------------
def vision_pattern(name: str | Pattern, height: int, width: int, **options: object) -> Pattern:
    """The sparsekit pattern called ``name`` over the ``height * width`` tokens of a row-major map.

    The returned pattern is bound to ``n = height * width`` (its views and predicate are ready to use).

    ``"random"``
        :func:`sparsekit.random`: each query attends to ``max(1, round(attention_ratio * n))`` distinct
        uniformly drawn keys; options ``attention_ratio`` in ``(0, 1]`` (default 0.1) and ``seed``
        (default 0). The draw depends on ``(seed, n)`` only.
    ``"block"``
        :func:`sparsekit.block_local` over the token sequence, option ``block`` (tokens, default 128).
        Blocks are runs of consecutive tokens, so a block of ``k * width`` tokens is a stripe of ``k``
        whole image rows (not a square patch). This keeps the pattern one exact sparsekit family, and
        with ``block`` a multiple of the FlexAttention tile (128 by default) every tile is either full
        or empty: the best case for a block-sparse kernel.
    ``"strided"``
        :func:`sparsekit.strided` (Sparse Transformer, causal), options ``window`` and ``stride``, both
        ``width`` by default: the previous ``width`` tokens (the current image row so far and the end of
        the row above) and every token straight above in the same image column.
    ``"axial"``
        :func:`sparsekit.axial` on the ``height x width`` grid: the whole image row and column.
    ``"longformer"``
        :func:`sparsekit.longformer`, options ``window`` (default ``2 * width``, so the band reaches the
        pixels directly above and below) and ``global_width`` (default 4, the first tokens are global).
    ``"dense"``
        Every token attends to every token, as the pattern ``~sparsekit.window(0)`` (the complement of
        the empty band); :class:`SparseAttention2d` runs it with dense ``scaled_dot_product_attention``.

    A sparsekit :class:`~sparsekit.Pattern` is accepted as it is (no options), bound to ``n``.

    Raises
    ------
    ValueError
        For an unknown name or option, a bad option value, or a pattern that does not fit ``n``.
    """
    height = check_int("height", height, low=1)
    width = check_int("width", width, low=1)
    n = height * width
    if isinstance(name, Pattern):
        if options:
            raise ValueError(f"options {sorted(options)} only apply to pattern names, not to a Pattern")
        return name.bind(n)
    opts = _check_options(name, options)
    if name == "random":
        pattern = random(max(1, round(opts["attention_ratio"] * n)), seed=opts["seed"])
    elif name == "block":
        pattern = block_local(opts["block"])
    elif name == "strided":
        w, s = opts["window"], opts["stride"]
        pattern = strided(width if w is None else w, width if s is None else s)
    elif name == "axial":
        pattern = axial(height, width)
    elif name == "longformer":
        w = 2 * width if opts["window"] is None else opts["window"]
        pattern = longformer(w, check_int("global_width", opts["global_width"], low=0, high=n))
    else:  # dense
        pattern = ~window(0)
    return pattern.bind(n)


def _check_options(name: object, options: dict[str, object]) -> dict[str, object]:
    """Check a pattern name and its options (everything that does not depend on the map size)."""
    if not isinstance(name, str) or name not in VISION_PATTERNS:
        raise ValueError(
            f"pattern must be a sparsekit Pattern or one of {list(VISION_PATTERNS)}, got {name!r}"
        )
    allowed = VISION_PATTERNS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        names = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"pattern {name!r} takes the options [{names}], got unknown {unknown}")
    opts = {**allowed, **options}
    if name == "random":
        if check_fraction("attention_ratio", opts["attention_ratio"]) == 0.0:
            raise ValueError("attention_ratio must be a number in (0, 1], got 0.0")
        opts["attention_ratio"] = float(opts["attention_ratio"])
        opts["seed"] = check_int("seed", opts["seed"], low=0)
    elif name == "block":
        opts["block"] = check_int("block", opts["block"], low=1)
    elif name in ("strided", "longformer"):
        if opts["window"] is not None:
            opts["window"] = check_int("window", opts["window"], low=0)
        if name == "strided" and opts["stride"] is not None:
            opts["stride"] = check_int("stride", opts["stride"], low=1)
        if name == "longformer":
            opts["global_width"] = check_int("global_width", opts["global_width"], low=0)
    return opts


def _listed(p: Pattern) -> bool:
    """Whether ``p`` contains a part defined by a list of cells (random attention)."""
    if isinstance(p, Union):  # Intersection is a Union subclass
        return any(_listed(part) for part in p.parts)
    if isinstance(p, Complement):
        return _listed(p.inner)
    return isinstance(p, Random)


# --------------------------------------------------------------------------------------------------
# The pattern at one map size: BlockMask for FlexAttention, tile lists for backward and statistics
# --------------------------------------------------------------------------------------------------
@dataclass
class _Tile:
    """One query tile: rows ``start:stop``, the key columns its listed tiles cover, and their mask.

    ``mask`` is ``None`` when every listed cell is allowed (only full tiles).
    """

    start: int
    stop: int
    cols: torch.Tensor
    mask: torch.Tensor | None


@dataclass
class _Layout:
    height: int
    width: int
    pattern: Pattern
    block_mask: BlockMask | None
    tiles: list[_Tile]

    @property
    def n(self) -> int:
        return self.height * self.width


def _build_layout(
    pattern: Pattern, height: int, width: int, block_size: int, flex: bool, device: torch.device
) -> _Layout:
    n = height * width
    p = pattern.bind(n)
    bm = block_mask(p, n, block_size=block_size, device=device) if flex else None
    dense = None
    if _listed(p):
        # Random attention's predicate compares every cell with all drawn keys of its row, and eager
        # FlexAttention evaluates the mask_mod on every (batch, head, query, key) cell: an n x n boolean
        # table lookup is the same mask at a fraction of the cost (n * n bytes).
        dense = p.dense(n)
        dense_lookup = torch.from_numpy(dense).to(device)
        if bm is not None:

            def lookup_mask_mod(b, h, q_idx, kv_idx):
                return dense_lookup[q_idx, kv_idx]

            bm.mask_mod = lookup_mask_mod
    # Tile lists from the exact block layout, in FlexAttention's conventions.
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
        tiles.append(_Tile(start, stop, torch.from_numpy(cols.astype(np.int64)).to(device), mask))
    return _Layout(height, width, p, bm, tiles)


def _offsets(rows: torch.Tensor, cols: torch.Tensor, width: int, reach: int) -> torch.Tensor:
    """Flat index into a ``(2 * reach + 1) ** 2`` relative-position table of each (row, col) pair."""
    dy = torch.clamp(rows[:, None] // width - cols[None, :] // width, -reach, reach) + reach
    dx = torch.clamp(rows[:, None] % width - cols[None, :] % width, -reach, reach) + reach
    return dy * (2 * reach + 1) + dx


def _tile_scores(q, k, table, layout: _Layout, tile: _Tile, reach: int, scale: float):
    """Scores of one query tile against its listed keys, with bias and mask: ``(B, h, rows, cols)``."""
    ks = k.index_select(2, tile.cols)
    s = (q[:, :, tile.start : tile.stop] @ ks.transpose(-2, -1)) * scale
    flat = None
    if table is not None:
        rows = torch.arange(tile.start, tile.stop, device=q.device)
        flat = _offsets(rows, tile.cols, layout.width, reach)
        s = s + table.flatten(1)[:, flat]
    if tile.mask is not None:
        s = s.masked_fill(~tile.mask, float("-inf"))
    return s, ks, flat


def _safe_softmax(s: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis; rows with no allowed key are all zero (as FlexAttention returns)."""
    p = torch.softmax(s, dim=-1)
    return torch.where(torch.isinf(s).all(dim=-1, keepdim=True), torch.zeros_like(p), p)


class _SparseAttentionFunction(torch.autograd.Function):
    """FlexAttention forward, tile-by-tile exact backward over the same BlockMask (CPU-capable)."""

    @staticmethod
    def forward(ctx, q, k, v, table, layout, reach, attend):
        # Detached: flex_attention refuses CPU inputs that require grad, even with grad mode off.
        out = attend(q.detach(), k.detach(), v.detach(), None if table is None else table.detach())
        ctx.save_for_backward(q, k, v, table, out)
        ctx.layout, ctx.reach = layout, reach
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        q, k, v, table, out = ctx.saved_tensors
        layout, reach = ctx.layout, ctx.reach
        scale = q.shape[-1] ** -0.5
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dtable = None if table is None else torch.zeros_like(table)
        # delta_i = sum_j P_ij dP_ij = <dO_i, O_i>: the softmax Jacobian term, from the saved output.
        delta = (grad_out * out).sum(dim=-1, keepdim=True)
        for tile in layout.tiles:
            rows = slice(tile.start, tile.stop)
            s, ks, flat = _tile_scores(q, k, table, layout, tile, reach, scale)
            p = _safe_softmax(s)
            vs = v.index_select(2, tile.cols)
            do = grad_out[:, :, rows]
            dv.index_add_(2, tile.cols, p.transpose(-2, -1) @ do)
            ds = p * (do @ vs.transpose(-2, -1) - delta[:, :, rows])
            dq[:, :, rows] = (ds @ ks) * scale
            dk.index_add_(2, tile.cols, (ds.transpose(-2, -1) @ q[:, :, rows]) * scale)
            if dtable is not None:
                dtable.view(dtable.shape[0], -1).index_add_(1, flat.flatten(), ds.sum(0).flatten(1))
        return dq, dk, dv, dtable, None, None, None


def _flex(compiled: bool, mask: BlockMask) -> Callable:
    if not compiled:
        return flex_attention
    # The compile cache the fusion module keeps: one recompile region per pattern and size, bounded,
    # so any number of map sizes and patterns compile in one process (dynamo's recompile limit would
    # otherwise send the 9th back to eager FlexAttention).
    from .fusion import _compiled_flex_attention

    return _compiled_flex_attention(mask)


# --------------------------------------------------------------------------------------------------
# The layer
# --------------------------------------------------------------------------------------------------
class SparseAttention2d(nn.Module):
    """Multi-head sparse self-attention over the pixels of a ``B x C x H x W`` feature map.

    Queries, keys and values are ``1 x 1`` convolutions of the input to ``out_channels`` channels
    (``num_heads`` heads of ``out_channels // num_heads``); each head attends under the same sparsekit
    pattern (see :func:`vision_pattern`), its output is scaled by a learnable gate, and a ``1 x 1``
    convolution projects the heads back to ``out_channels``. The result is ``B x out_channels x H x W``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output; ``out_channels`` must be a multiple of ``num_heads``.
    num_heads : int
        Attention heads; ``>= 1``.
    pattern : str or Pattern
        A name of :data:`VISION_PATTERNS` (built for each map size with ``pattern_options``) or a
        sparsekit pattern. ``"dense"`` runs ``torch.nn.functional.scaled_dot_product_attention``
        without a mask (the baseline); everything else runs FlexAttention.
    block_size : int
        FlexAttention tile size, ``>= 1`` (its compiled kernels expect 128 or a multiple of 16).
    relative_position_bias : bool
        Add a learnable per-head bias ``table[h, dy, dx]`` to every score, indexed by the 2-D offset
        between the query and key pixels, each component clipped to ``[-max_relative_position,
        max_relative_position]``; applied through FlexAttention's ``score_mod``.
    max_relative_position : int
        Largest offset the bias table tells apart; ``>= 0``.
    head_gate : bool
        Multiply each head's output by a learnable gate (initialised to 1); its absolute value is
        :meth:`head_importance`.
    compile : bool
        Run the forward pass with ``torch.compile(flex_attention, dynamic=False)``, a fused kernel that
        skips empty tiles (on the CPU torch 2.13 compiles FlexAttention for inference only; the backward
        is this module's tile backward either way). The first call for each shape compiles (seconds).
        Each pattern and map size compiles in a recompile region of its own (the bounded cache of
        :mod:`sparsekit.torch.fusion`), so dynamo's ``recompile_limit`` is never reached.
    **pattern_options
        Options of the named pattern, see :func:`vision_pattern`.

    Notes
    -----
    Why a custom backward: ``flex_attention`` in torch 2.13 raises ``NotImplementedError:
    FlexAttention does not support backward on CPU`` whenever an input requires grad. On any other
    device the layer lets FlexAttention compute its own gradients. On the CPU it calls
    it on detached tensors inside an autograd function whose backward recomputes, for each query tile,
    the scores against the keys of the tiles the BlockMask lists (the only keys a row may attend to)
    and applies the exact softmax gradient; it costs the listed tiles, not ``n x n``.

    What the forward costs: eager ``flex_attention`` on the CPU evaluates the mask and ``score_mod`` on
    all ``n x n`` cells (time and memory of dense attention, whatever the pattern); ``compile=True``
    skips empty tiles and evaluates the mask only on partial ones. :func:`measure_layer` measures both
    against dense ``scaled_dot_product_attention``.

    The layer keeps (detached) references to the queries and keys of the last forward pass for
    :meth:`attention_stats`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_heads: int,
        pattern: str | Pattern = "block",
        *,
        block_size: int = 128,
        relative_position_bias: bool = False,
        max_relative_position: int = 32,
        head_gate: bool = True,
        compile: bool = False,
        **pattern_options: object,
    ) -> None:
        super().__init__()
        self.in_channels = check_int("in_channels", in_channels, low=1)
        self.out_channels = check_int("out_channels", out_channels, low=1)
        self.num_heads = check_int("num_heads", num_heads, low=1, high=out_channels)
        if out_channels % num_heads:
            raise ValueError(
                f"out_channels must be a multiple of num_heads={num_heads}, got out_channels={out_channels}"
            )
        self.head_dim = out_channels // num_heads
        self.block_size = check_int("block_size", block_size, low=1)
        self.max_relative_position = check_int("max_relative_position", max_relative_position, low=0)
        self.compile = bool(compile)
        # Check the name and options now (all that does not depend on the map), not at the first forward.
        if not isinstance(pattern, Pattern):
            _check_options(pattern, pattern_options)
        elif pattern_options:
            raise ValueError(
                f"options {sorted(pattern_options)} only apply to pattern names, not to a Pattern"
            )
        self.pattern = pattern
        self.pattern_options = dict(pattern_options)
        self.qkv = nn.Conv2d(in_channels, 3 * out_channels, kernel_size=1)
        self.proj = nn.Conv2d(out_channels, out_channels, kernel_size=1)
        side = 2 * self.max_relative_position + 1
        self.relative_bias = (
            nn.Parameter(torch.randn(num_heads, side, side) * 0.02) if relative_position_bias else None
        )
        self.gate = nn.Parameter(torch.ones(num_heads)) if head_gate else None
        self.register_buffer("active_heads", torch.ones(num_heads, dtype=torch.bool))
        self._layouts: dict[tuple[int, int, str], _Layout] = {}
        self._last: tuple | None = None

    def extra_repr(self) -> str:
        name = self.pattern if isinstance(self.pattern, str) else self.pattern.name
        return (
            f"{self.in_channels}, {self.out_channels}, num_heads={self.num_heads}, pattern={name!r}, "
            f"block_size={self.block_size}, relative_position_bias={self.relative_bias is not None}, "
            f"head_gate={self.gate is not None}, compile={self.compile}"
        )

    # ------------------------------------------------------------------------------------------------
    # Pattern and masks
    # ------------------------------------------------------------------------------------------------
    @property
    def dense(self) -> bool:
        """Whether the layer runs dense ``scaled_dot_product_attention`` (pattern ``"dense"``)."""
        return self.pattern == "dense"

    def pattern_at(self, height: int, width: int) -> Pattern:
        """The sparsekit pattern the layer uses on a ``height x width`` map, bound to ``height * width``."""
        return self._layout(height, width).pattern

    def block_mask_at(self, height: int, width: int, device: torch.device | str = "cpu") -> BlockMask:
        """The cached FlexAttention ``BlockMask`` for a ``height x width`` map (built on first use)."""
        layout = self._layout(height, width, device)
        if layout.block_mask is None:
            raise ValueError('pattern "dense" runs scaled_dot_product_attention and has no BlockMask')
        return layout.block_mask

    def _layout(self, height: int, width: int, device: torch.device | str = "cpu") -> _Layout:
        device = torch.device(device)
        key = (height, width, str(device))
        if key not in self._layouts:
            if isinstance(self.pattern, str):
                p = vision_pattern(self.pattern, height, width, **self.pattern_options)
            else:
                p = vision_pattern(self.pattern, height, width)
            self._layouts[key] = _build_layout(p, height, width, self.block_size, not self.dense, device)
        return self._layouts[key]

    # ------------------------------------------------------------------------------------------------
    # Heads
    # ------------------------------------------------------------------------------------------------
    def head_importance(self) -> torch.Tensor:
        """``|gate|`` of each head (a detached copy, ``(num_heads,)``), 0 for pruned heads."""
        if self.gate is None:
            raise ValueError("head_importance needs head_gate=True")
        return self.gate.detach().abs() * self.active_heads

    def prune_heads(
        self, keep: Iterable[int] | torch.Tensor | None = None, *, threshold: float | None = None
    ) -> torch.Tensor:
        """Prune heads: keep exactly the heads ``keep``, or the heads with importance ``>= threshold``.

        Pruned heads are not computed at all (their query, key and value channels are not projected and
        FlexAttention runs on the remaining heads) and contribute exactly zero to the output. Listing a
        pruned head in ``keep`` restores it. Returns the boolean mask of active heads.

        Parameters
        ----------
        keep : iterable of int or torch.Tensor, optional
            Head indices in ``[0, num_heads - 1]`` to keep, or a boolean mask of ``num_heads`` entries.
        threshold : float, optional
            Keep the active heads whose :meth:`head_importance` is at least this; needs ``head_gate``.
        """
        if (keep is None) == (threshold is None):
            raise ValueError("prune_heads needs exactly one of keep= or threshold=")
        if threshold is not None:
            if isinstance(threshold, bool) or not isinstance(threshold, int | float) or math.isnan(threshold):
                raise ValueError(f"threshold must be a number, got {threshold!r}")
            mask = (self.head_importance() >= threshold) & self.active_heads
        elif isinstance(keep, torch.Tensor) and keep.dtype == torch.bool:
            if keep.shape != (self.num_heads,):
                raise ValueError(f"keep as a boolean mask must have shape ({self.num_heads},)")
            mask = keep.clone()
        else:
            indices = torch.as_tensor(keep).reshape(-1).tolist()
            mask = torch.zeros(self.num_heads, dtype=torch.bool)
            for i in indices:
                mask[check_int("keep[]", i, low=0, high=self.num_heads - 1)] = True
        if not mask.any():
            raise ValueError("prune_heads would remove every head; keep at least one")
        self.active_heads.copy_(mask.to(self.active_heads.device))
        return self.active_heads.clone()

    # ------------------------------------------------------------------------------------------------
    # Forward
    # ------------------------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the pixels of ``x`` (``B x in_channels x H x W``); returns ``B x out x H x W``."""
        if not isinstance(x, torch.Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"x must be a B x {self.in_channels} x H x W tensor, got {shape}")
        batch, _, height, width = x.shape
        n = height * width
        layout = self._layout(height, width, x.device)
        heads = torch.nonzero(self.active_heads).flatten()
        h, d = heads.numel(), self.head_dim
        # Channels of the active heads, in the q | k | v blocks of the joint projection.
        head_ch = (heads[:, None] * d + torch.arange(d, device=heads.device)).reshape(-1)
        if h == self.num_heads:
            w_qkv, b_qkv, w_out = self.qkv.weight, self.qkv.bias, self.proj.weight
        else:
            rows = torch.cat([head_ch + i * self.out_channels for i in range(3)])
            w_qkv, b_qkv = self.qkv.weight[rows], self.qkv.bias[rows]
            w_out = self.proj.weight[:, head_ch]
        # 1 x 1 convolutions as matrix products on (B, n, C) tokens, so that q, k, v come out with the
        # head dimension innermost (stride 1): SDPA's fused CPU kernel needs it and otherwise falls back
        # to its math path, which materializes the n x n scores.
        tokens = x.flatten(2).transpose(1, 2)
        qkv = F.linear(tokens, w_qkv.flatten(1), b_qkv).reshape(batch, n, 3, h, d).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each (B, h, n, d)
        table = None if self.relative_bias is None else self.relative_bias[heads]
        out = self._attend(q, k, v, table, layout)
        if self.gate is not None:
            out = out * self.gate[heads].view(1, h, 1, 1)
        self._last = (q.detach(), k.detach(), None if table is None else table.detach(), layout, heads)
        out = F.linear(out.transpose(1, 2).reshape(batch, n, h * d), w_out.flatten(1), self.proj.bias)
        return out.transpose(1, 2).reshape(batch, self.out_channels, height, width)

    def _attend(self, q, k, v, table, layout: _Layout) -> torch.Tensor:
        reach = self.max_relative_position
        if self.dense:
            bias = None
            if table is not None:
                idx = torch.arange(layout.n, device=q.device)
                bias = table.flatten(1)[:, _offsets(idx, idx, layout.width, reach)]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

        flex = _flex(self.compile, layout.block_mask)
        width = layout.width

        def attend(q, k, v, table):
            score_mod = None
            if table is not None:

                def score_mod(score, b, h, q_idx, kv_idx):
                    dy = torch.clamp(q_idx // width - kv_idx // width, -reach, reach) + reach
                    dx = torch.clamp(q_idx % width - kv_idx % width, -reach, reach) + reach
                    return score + table[h, dy, dx]

            return flex(q, k, v, score_mod=score_mod, block_mask=layout.block_mask)

        needs_grad = torch.is_grad_enabled() and any(
            t is not None and t.requires_grad for t in (q, k, v, table)
        )
        # Off the CPU FlexAttention has its own backward (a fused kernel when compiled): use it. Only the
        # CPU, where torch refuses FlexAttention gradients, needs the tile backward below.
        if not needs_grad or q.device.type != "cpu":
            return attend(q, k, v, table)
        return _SparseAttentionFunction.apply(q, k, v, table, layout, reach, attend)

    # ------------------------------------------------------------------------------------------------
    # Statistics
    # ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def attention_stats(self) -> dict[str, object]:
        """Exact statistics of the attention weights of the last forward pass.

        Recomputed from the queries and keys of the last forward pass (the layer keeps a reference to
        them, detached) one query tile at a time (memory of one tile of scores), with the relative bias
        and the mask exactly as the forward pass applied them, in float64. Averages run over the batch,
        the active heads and the rows with at least one allowed key.

        Returns
        -------
        dict
            ``mean_weight``: mean attention weight over the allowed cells; every row of weights sums
            to 1, so this is ``n / nnz``, one over the mean number of keys per row (a property of the
            pattern, reported as a check). ``entropy``: mean row entropy ``-sum_j p_ij log p_ij`` in
            nats (``log`` of the keys per row for uniform attention, 0 for one-hot). ``max_weight``:
            mean of each row's largest weight. ``sparsity``: fraction of the ``n x n`` cells that were
            masked, which equals the pattern's exact ``sparsity(n)``. ``head_entropy``: mean row
            entropy of each head, a ``(num_heads,)`` tensor with NaN for pruned heads. ``tokens``:
            ``n``; ``heads``: the number of active heads.
        """
        if self._last is None:
            raise ValueError("attention_stats needs a forward pass first")
        q, k, table, layout, heads = self._last
        scale = q.shape[-1] ** -0.5
        batch, h, n = q.shape[0], q.shape[1], layout.n
        weight_sum = entropy = maximum = 0.0
        head_entropy = torch.zeros(h, dtype=torch.float64)
        rows_with_keys = 0
        allowed = 0
        for tile in layout.tiles:
            s, _, _ = _tile_scores(q, k, table, layout, tile, self.max_relative_position, scale)
            p = _safe_softmax(s).double()
            row_entropy = -torch.special.xlogy(p, p).sum(-1)
            head_entropy += row_entropy.sum(dim=(0, 2))
            weight_sum += float(p.sum())
            entropy += float(row_entropy.sum())
            maximum += float(p.amax(-1).sum())
            if tile.mask is None:
                allowed += (tile.stop - tile.start) * tile.cols.numel()
                rows_with_keys += (tile.stop - tile.start) if tile.cols.numel() else 0
            else:
                allowed += int(tile.mask.sum())
                rows_with_keys += int(tile.mask.any(-1).sum())
        per_head = torch.full((self.num_heads,), float("nan"), dtype=torch.float64)
        per_head[heads.cpu()] = head_entropy / (batch * max(rows_with_keys, 1))
        rows = batch * h * max(rows_with_keys, 1)
        return {
            "mean_weight": weight_sum / (batch * h * max(allowed, 1)),
            "entropy": entropy / rows,
            "max_weight": maximum / rows,
            "sparsity": (n * n - allowed) / (n * n),
            "head_entropy": per_head,
            "tokens": n,
            "heads": h,
        }


# --------------------------------------------------------------------------------------------------
# A small classifier and data to train it on
# --------------------------------------------------------------------------------------------------
class SparseAttentionClassifier(nn.Module):
    """A CNN stem, one :class:`SparseAttention2d` block with a residual connection, pooling and a head.

    The stem takes ``3 x 32 x 32`` images to a ``channels x 16 x 16`` feature map (256 tokens: two
    ``3 x 3`` convolutions with batch norm and ReLU, one ``2 x 2`` max-pool), or to ``8 x 8`` with
    ``feature_size=8`` (a second pool). Global average pooling and a linear layer give the logits.

    Parameters
    ----------
    num_classes : int
        Output classes; ``>= 2``.
    pattern : str, Pattern or None
        Attention pattern, see :func:`vision_pattern`; ``None`` leaves the attention block out (the
        stem feeds the pooling directly), a baseline that shows what attention adds.
    channels : int
        Feature channels; a multiple of ``num_heads``.
    num_heads : int
        Attention heads.
    feature_size : int
        Side of the feature map the attention sees: 16 or 8.
    **attention_options
        Passed to :class:`SparseAttention2d` (``block_size``, ``relative_position_bias``, pattern
        options, ...).
    """

    def __init__(
        self,
        num_classes: int = 10,
        pattern: str | Pattern | None = "block",
        *,
        channels: int = 32,
        num_heads: int = 4,
        feature_size: int = 16,
        **attention_options: object,
    ) -> None:
        super().__init__()
        num_classes = check_int("num_classes", num_classes, low=2)
        if feature_size not in (8, 16):
            raise ValueError(f"feature_size must be 8 or 16, got {feature_size!r}")
        channels = check_int("channels", channels, low=1)
        layers: list[nn.Module] = [
            nn.Conv2d(3, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.BatchNorm2d(channels),
            nn.ReLU(),
        ]
        if feature_size == 8:
            layers.append(nn.MaxPool2d(2))
        self.stem = nn.Sequential(*layers)
        if pattern is None and attention_options:
            raise ValueError(f"attention options {sorted(attention_options)} need a pattern, got None")
        self.attention = (
            None
            if pattern is None
            else SparseAttention2d(channels, channels, num_heads, pattern, **attention_options)
        )
        self.norm = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, num_classes)`` of images ``(B, 3, 32, 32)``."""
        x = self.stem(images)
        x = self.norm(x if self.attention is None else x + self.attention(x))
        return self.head(x.mean(dim=(2, 3)))


def synthetic_images(
    num_samples: int, num_classes: int = 10, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-10-shaped synthetic images whose class shows in their structure; nothing is downloaded.

    Class ``c`` is a sinusoidal grating at orientation ``pi * c / num_classes`` with a class frequency,
    drawn in a class colour, at a random phase and under Gaussian noise (standard deviation 0.5), so
    both colour statistics and spatial structure (orientation, frequency) identify the class. Labels
    cycle through the classes and are then shuffled.

    Returns
    -------
    images : torch.Tensor
        ``float32 (num_samples, 3, 32, 32)``, roughly zero mean and unit scale.
    labels : torch.Tensor
        ``int64 (num_samples,)`` in ``[0, num_classes - 1]``.
    """
    num_samples = check_int("num_samples", num_samples, low=1)
    num_classes = check_int("num_classes", num_classes, low=2)
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    labels = (torch.arange(num_samples) % num_classes)[torch.randperm(num_samples, generator=gen)]
    # Class colours come from their own generator: the same classes look the same for every seed.
    colours = torch.rand(num_classes, 3, generator=torch.Generator().manual_seed(1234)) * 2 - 1
    angle = math.pi * labels.double() / num_classes
    frequency = 2 * math.pi * (2 + (labels.double() % 3)) / 32
    phase = torch.rand(num_samples, generator=gen, dtype=torch.float64) * 2 * math.pi
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    along = torch.cos(angle)[:, None, None] * xx + torch.sin(angle)[:, None, None] * yy
    grating = torch.sin(frequency[:, None, None] * along + phase[:, None, None])  # (N, 32, 32)
    images = colours[labels][:, :, None, None].double() * (0.5 + 0.5 * grating[:, None])
    images = images + 0.5 * torch.randn(num_samples, 3, 32, 32, generator=gen, dtype=torch.float64)
    return images.float(), labels


def train_steps(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    steps: int,
    lr: float = 3e-3,
    seed: int = 0,
    batch_size: int = 32,
) -> list[float]:
    """Train ``model`` with Adam on random mini-batches; returns the loss of every step.

    The batches are drawn from a generator seeded with ``seed``, so with a seeded model the losses are
    the same on every run (on the same machine and thread count).
    """
    steps = check_int("steps", steps, low=1)
    batch_size = check_int("batch_size", batch_size, low=1)
    seed = check_int("seed", seed, low=0)
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not lr > 0:
        raise ValueError(f"lr must be a number > 0, got {lr!r}")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(
            f"images and labels must have the same length, got {images.shape[0]} and {labels.shape[0]}"
        )
    gen = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, images.shape[0], (batch_size,), generator=gen)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    return losses


# --------------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to the null device for a moment (output of C++ code, not Python's)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Largest number of bytes held by tensors allocated while ``fn`` runs, above the level at its start.

    Replays the allocation and free records of ``torch.profiler`` (``profile_memory=True``) in time
    order; tensors that already existed (weights, inputs, cached masks) are not counted, and tensors
    ``fn`` returns are (they are allocated during the call).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # The profiler logs every start and stop, and allocator notes, on the C-level stderr.
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            records.append((node.start_time_ns, node.typed[1].alloc_size))
        stack.extend(node.children)
    records.sort()
    level = peak = 0
    for _, size in records:
        level += size
        peak = max(peak, level)
    return peak


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure_layer(
    pattern: str | Pattern,
    height: int,
    width: int,
    channels: int = 64,
    heads: int = 4,
    repeats: int = 3,
    *,
    batch: int = 1,
    block_size: int = 128,
    compile: bool = False,
    seed: int = 0,
    **pattern_options: object,
) -> dict[str, object]:
    """Time and peak memory of :class:`SparseAttention2d` against the same layer with dense attention.

    Two layers with the same weights (seeded) run on the same random ``batch x channels x height x
    width`` input: the sparse one (FlexAttention, eager unless ``compile``) and ``pattern="dense"``
    (``scaled_dot_product_attention``). For each: the median wall time over ``repeats`` runs (after
    one warm-up run) of a forward pass under ``torch.no_grad()`` and of a forward plus backward pass
    (sum of the output), and the peak memory of each, measured by ``_peak_bytes`` (bytes of tensor
    memory allocated during one run, above the level at its start, from ``torch.profiler`` allocation
    records; parameter gradients are cleared first so every backward allocates them).

    With ``compile=True`` the sparse layer's forward uses the compiled FlexAttention kernel (compiled in
    the warm-up run; its backward is the layer's tile backward either way). The layers are initialised
    from ``torch.manual_seed(seed)`` (the global generator is reseeded). Timings follow
    ``torch.get_num_threads()``; on a machine whose cores are busy one thread gives steadier numbers.

    Returns
    -------
    dict
        ``pattern`` (name), ``height``, ``width``, ``tokens``, ``channels``, ``heads``, ``batch``,
        ``block_size``, ``compile``, ``threads`` (``torch.get_num_threads()``), ``repeats``,
        ``sparsity`` (exact), ``empty_tiles`` (fraction of tiles FlexAttention may skip),
        ``{sparse,dense}_forward_s``, ``{sparse,dense}_train_s``, ``{sparse,dense}_forward_bytes``,
        ``{sparse,dense}_train_bytes``.
    """
    repeats = check_int("repeats", repeats, low=1)
    batch = check_int("batch", batch, low=1)
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    torch.manual_seed(seed)
    sparse = SparseAttention2d(
        channels, channels, heads, pattern, block_size=block_size, compile=compile, **pattern_options
    )
    dense = SparseAttention2d(channels, channels, heads, "dense", block_size=block_size)
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(batch, channels, height, width, generator=gen)
    p = sparse.pattern_at(height, width)
    n = height * width
    result: dict[str, object] = {
        "pattern": pattern if isinstance(pattern, str) else p.name,
        "height": height,
        "width": width,
        "tokens": n,
        "channels": channels,
        "heads": heads,
        "batch": batch,
        "block_size": block_size,
        "compile": bool(compile),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "sparsity": p.sparsity(n),
        "empty_tiles": p.block_sparsity(n, block_size),
    }
    for name, layer in (("sparse", sparse), ("dense", dense)):

        def forward(layer=layer):
            with torch.no_grad():
                return layer(x)

        def train(layer=layer):
            layer.zero_grad(set_to_none=True)
            layer(x).sum().backward()

        for label, fn in (("forward", forward), ("train", train)):
            fn()  # warm-up: builds and caches the BlockMask, compiles if asked
            result[f"{name}_{label}_s"] = _median_seconds(fn, repeats)
            result[f"{name}_{label}_bytes"] = _peak_bytes(fn)
    return result


def format_measurements(rows: Sequence[dict[str, object]]) -> str:
    """A plain-text table of :func:`measure_layer` results (times in ms, memory in MiB)."""
    head = (
        f"{'pattern':<11}{'tokens':>7}{'sparsity':>9}{'empty':>7}"
        f"{'fwd ms':>9}{'dense':>8}{'f+b ms':>9}{'dense':>8}"
        f"{'fwd MiB':>9}{'dense':>8}{'f+b MiB':>9}{'dense':>8}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['pattern']!s:<11}{r['tokens']:>7}{r['sparsity']:>9.3f}{r['empty_tiles']:>7.2f}"
            f"{r['sparse_forward_s'] * 1e3:>9.1f}{r['dense_forward_s'] * 1e3:>8.1f}"
            f"{r['sparse_train_s'] * 1e3:>9.1f}{r['dense_train_s'] * 1e3:>8.1f}"
            f"{r['sparse_forward_bytes'] / 2**20:>9.1f}{r['dense_forward_bytes'] / 2**20:>8.1f}"
            f"{r['sparse_train_bytes'] / 2**20:>9.1f}{r['dense_train_bytes'] / 2**20:>8.1f}"
        )
    return "\n".join(lines)

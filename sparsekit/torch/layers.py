"""A sparse-attention layer for feature maps, run by FlexAttention with sparsekit's block masks.

A ``B x C x H x W`` feature map is read row-major into ``n = H * W`` tokens (pixel ``(r, c)`` is token
``r * W + c``, as in the image-patterns chapter). :class:`SparseAttention2d` projects the map to queries,
keys and values with ``1 x 1`` convolutions, lets every head attend under one sparsekit pattern, and
projects back:

* :func:`sparsekit.vision_pattern` turns the names of the seed project (``"random"``, ``"block"``,
  ``"strided"``, ``"axial"``, ``"longformer"``, plus ``"dense"``) into exact sparsekit patterns over the
  ``H * W`` tokens;
* the forward pass calls ``flex_attention`` with the ``BlockMask`` of
  :func:`sparsekit.torch.blockmask.block_mask` (built once per map size and cached), an optional learnable
  relative position bias as its ``score_mod``, and a learnable gate per head that can prune heads;
* on a GPU the backward pass is FlexAttention's own; on the CPU, where torch 2.13 refuses FlexAttention
  gradients, it is the exact tile backward of :func:`sparsekit.torch.backends.tile_attention`, which
  walks the same ``BlockMask`` one query tile at a time (relative-bias gradients included);
* :meth:`SparseAttention2d.attention_stats` recomputes, exactly, the mean weight, row entropy, mean row
  maximum and realised sparsity of the attention of the last forward pass.

:class:`SparseAttentionClassifier` puts the layer into a small CIFAR-10-shaped classifier (synthetic
data and training steps: :mod:`sparsekit.torch.training`; time and memory:
:func:`sparsekit.torch.measure.measure_layer`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask

from .._validate import check_int
from ..masks.vision import check_vision_options, vision_pattern
from ..pattern import Pattern
from .backends import TileLayout, flex_attention_fn, safe_softmax, tile_attention, tile_layout, tile_scores

__all__ = ["SparseAttention2d", "SparseAttentionClassifier"]


def _offsets(rows: torch.Tensor, cols: torch.Tensor, width: int, reach: int) -> torch.Tensor:
    """Flat index into a ``(2 * reach + 1) ** 2`` relative-position table of each (row, col) pair."""
    dy = torch.clamp(rows[:, None] // width - cols[None, :] // width, -reach, reach) + reach
    dx = torch.clamp(rows[:, None] % width - cols[None, :] % width, -reach, reach) + reach
    return dy * (2 * reach + 1) + dx


class SparseAttention2d(nn.Module):
    """Multi-head sparse self-attention over the pixels of a ``B x C x H x W`` feature map.

    Queries, keys and values are ``1 x 1`` convolutions of the input to ``out_channels`` channels
    (``num_heads`` heads of ``out_channels // num_heads``); each head attends under the same sparsekit
    pattern (see :func:`sparsekit.vision_pattern`), its output is scaled by a learnable gate, and a ``1 x 1``
    convolution projects the heads back to ``out_channels``. The result is ``B x out_channels x H x W``.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels of the input and of the output; ``out_channels`` must be a multiple of ``num_heads``.
    num_heads : int
        Attention heads; ``>= 1``.
    pattern : str or Pattern
        A name of ``sparsekit.VISION_PATTERNS`` (built for each map size with ``pattern_options``) or a
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
        Each pattern, map size and input shape (batch size, active heads) compiles in a recompile
        region of its own (:func:`sparsekit.torch.backends.compiled_flex_attention`, a bounded
        cache), so any number of map sizes, batch sizes and patterns compile in one process.
    **pattern_options
        Options of the named pattern, see :func:`sparsekit.vision_pattern`.

    Notes
    -----
    Why a custom backward: ``flex_attention`` in torch 2.13 raises ``NotImplementedError:
    FlexAttention does not support backward on CPU`` whenever an input requires grad. On any other
    device the layer lets FlexAttention compute its own gradients. On the CPU it runs
    :func:`sparsekit.torch.backends.tile_attention`: FlexAttention on detached tensors inside an
    autograd function whose backward recomputes, for each query tile, the scores against the keys of
    the tiles the BlockMask lists (the only keys a row may attend to) and applies the exact softmax
    gradient; it costs the listed tiles, not ``n x n``.

    What the forward costs: eager ``flex_attention`` on the CPU evaluates the mask and ``score_mod`` on
    all ``n x n`` cells (time and memory of dense attention, whatever the pattern); ``compile=True``
    skips empty tiles and evaluates the mask only on partial ones.
    :func:`sparsekit.torch.measure.measure_layer` measures both against dense
    ``scaled_dot_product_attention``.

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
            check_vision_options(pattern, pattern_options)
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
        self._layouts: dict[tuple[int, int, str], TileLayout] = {}
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

    def _layout(self, height: int, width: int, device: torch.device | str = "cpu") -> TileLayout:
        device = torch.device(device)
        key = (height, width, str(device))
        if key not in self._layouts:
            if isinstance(self.pattern, str):
                p = vision_pattern(self.pattern, height, width, **self.pattern_options)
            else:
                p = vision_pattern(self.pattern, height, width)
            n = height * width
            self._layouts[key] = tile_layout(p, n, self.block_size, device, flex=not self.dense)
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
        out = self._attend(q, k, v, table, layout, width)
        if self.gate is not None:
            out = out * self.gate[heads].view(1, h, 1, 1)
        detached = None if table is None else table.detach()
        self._last = (q.detach(), k.detach(), detached, layout, width, heads)
        out = F.linear(out.transpose(1, 2).reshape(batch, n, h * d), w_out.flatten(1), self.proj.bias)
        return out.transpose(1, 2).reshape(batch, self.out_channels, height, width)

    def _bias_index(self, width: int):
        """Where each (query, key) pair of a ``width``-wide map reads its relative-position bias."""
        return functools.partial(_offsets, width=width, reach=self.max_relative_position)

    def _attend(self, q, k, v, table, layout: TileLayout, width: int) -> torch.Tensor:
        reach = self.max_relative_position
        if self.dense:
            bias = None
            if table is not None:
                idx = torch.arange(layout.n, device=q.device)
                bias = table.flatten(1)[:, _offsets(idx, idx, width, reach)]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

        flex = flex_attention_fn(layout.block_mask, self.compile)

        def attend(q, k, v, table):
            score_mod = None
            if table is not None:

                def score_mod(score, b, h, q_idx, kv_idx):
                    dy = torch.clamp(q_idx // width - kv_idx // width, -reach, reach) + reach
                    dx = torch.clamp(q_idx % width - kv_idx % width, -reach, reach) + reach
                    return score + table[h, dy, dx]

            return flex(q, k, v, score_mod=score_mod)

        return tile_attention(q, k, v, layout, attend, table, self._bias_index(width))

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
        q, k, table, layout, width, heads = self._last
        scale = q.shape[-1] ** -0.5
        index = self._bias_index(width)
        batch, h, n = q.shape[0], q.shape[1], layout.n
        weight_sum = entropy = maximum = 0.0
        head_entropy = torch.zeros(h, dtype=torch.float64)
        rows_with_keys = 0
        allowed = 0
        for tile in layout.tiles:
            s, _, _ = tile_scores(q, k, tile, scale, table, index)
            p = safe_softmax(s).double()
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
        Attention pattern, see :func:`sparsekit.vision_pattern`; ``None`` leaves the attention block out (the
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

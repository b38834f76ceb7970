"""Run sparsekit patterns through PyTorch's FlexAttention (optional: needs ``torch``).

Two bridges from a pattern to FlexAttention:

* :func:`mask_mod` turns a pattern into a FlexAttention ``mask_mod(b, h, q_idx, kv_idx)`` that calls the
  pattern's vectorized predicate on index tensors;
* :func:`block_mask` builds the :class:`~torch.nn.attention.flex_attention.BlockMask` from sparsekit's
  own exact block layout (:meth:`~sparsekit.Pattern.blocks`) with ``BlockMask.from_kv_blocks``. It never
  evaluates the ``n x n`` cells that ``create_block_mask`` evaluates: for a periodic pattern the layout
  comes from one representative tile per class of tile diagonals near the main one (the far diagonals
  repeat), so its cost is writing the ``ceil(n / block_size) ** 2`` tables, not ``n ** 2`` cells.

Under ``torch.compile(flex_attention)`` the ``mask_mod`` runs inside the fused kernel, which on the CPU
lowers its graph (traced on 0-d indices) again on 2-D tiles of indices. Every pattern's predicate
therefore evaluates torch tensors with elementwise operations only (no new axes, no reductions: random
attention ORs one comparison per listed key). Compile with ``dynamic=False``: otherwise an integer
parameter that differs between two compiled patterns (a window, a stride) becomes a symbol, which the
CPU kernel of torch 2.13 fails to compile (C++ error: ``cur_qSplitSize2`` was not declared).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch.nn.attention.flex_attention import BlockMask

from .._validate import check_int, check_size
from ..pattern import Pattern, require_memory

__all__ = ["block_mask", "block_tables", "flex_layout", "mask_mod"]

# Rows of tiles sorted at once when building the index tables (2-3x faster than one whole-table sort
# at n = 262144 on a 2-core machine: the temporaries fit in cache).
_ROWS_PER_SORT = 256


def _check_pattern(pattern: object) -> Pattern:
    if not isinstance(pattern, Pattern):
        raise ValueError(f"pattern must be a sparsekit Pattern, got {type(pattern).__name__}")
    return pattern


def mask_mod(pattern: Pattern, n: int | None = None, device="cpu") -> Callable:
    """A FlexAttention ``mask_mod`` for ``pattern``: ``(b, h, q_idx, kv_idx) -> bool tensor``.

    The batch and head indices are ignored: the pattern is the same for every batch and head. Give
    ``n`` to bind the pattern to a length first (random attention draws its columns for ``n``;
    grid and segment patterns check that ``n`` fits); without it the pattern is used as it is.

    Parameters
    ----------
    pattern : Pattern
        Any sparsekit pattern.
    n : int, optional
        Sequence length to bind to.
    device : str or torch.device
        Device of the index tensors FlexAttention will pass. The predicate is evaluated once there, so
        that lookup tables (random columns, segment starts) are copied to the device now: FlexAttention
        traces the ``mask_mod`` and refuses a first call that fills a cache.
    """
    p = _check_pattern(pattern)
    if n is not None:
        p = p.bind(check_size(n))
    zero = torch.zeros((), dtype=torch.int64, device=device)
    p.predicate(zero, zero)

    def sparsekit_mask_mod(b, h, q_idx, kv_idx):
        return p.predicate(q_idx, kv_idx)

    sparsekit_mask_mod.pattern = p
    return sparsekit_mask_mod


def flex_layout(pattern: Pattern, n: int, block_size: int) -> np.ndarray:
    """``pattern.blocks(n, block_size)`` as FlexAttention sees it: tiles that stick out past ``n`` are
    never full (FlexAttention pads the sequence to a multiple of ``block_size`` with masked cells)."""
    layout = pattern.blocks(n, block_size)
    if n % block_size:
        for line in (layout[-1, :], layout[:, -1]):
            line[line == 2] = 1
    return layout


def block_tables(pattern: Pattern, n: int, block_size: int = 128) -> dict[str, np.ndarray]:
    """The block-sparse tables of ``pattern`` at length ``n``, in FlexAttention's conventions (numpy).

    Returns a dict of ``int32`` arrays: ``kv_num_blocks`` ``(nb,)`` and ``kv_indices`` ``(nb, nb)``
    for partial tiles, ``full_kv_num_blocks`` and ``full_kv_indices`` for full tiles, and the same four
    for the transposed layout (``q_num_blocks``, ``q_indices``, ...: the query tiles of each key
    tile, used by the backward pass). Each index row lists its tiles in ascending order, followed by
    the remaining tile indices in ascending order, as ``create_block_mask`` does. Tiles that stick
    out past ``n`` are never full, because FlexAttention pads the sequence to a multiple of
    ``block_size`` with masked cells.
    """
    b = check_int("block_size", block_size, low=1)
    nb = -(-check_size(n) // b)
    # The uint8 layout, then per table a bool selection, an int64 argsort and the int32 result.
    instead = "pattern.block_summary(n, block_size) or a larger block_size"
    require_memory("block_mask tables", n, 32 * nb * nb, instead)
    layout = flex_layout(_check_pattern(pattern), n, b)
    tables = {}
    for axis, grid in (("kv", layout), ("q", np.ascontiguousarray(layout.T))):
        for name, code in (("", 1), ("full_", 2)):
            num = tables[f"{name}{axis}_num_blocks"] = np.empty(nb, dtype=np.int32)
            indices = tables[f"{name}{axis}_indices"] = np.empty((nb, nb), dtype=np.int32)
            # A few rows at a time, so the int64 argsort stays in cache and lands in int32 directly.
            for r in range(0, nb, _ROWS_PER_SORT):
                not_chosen = grid[r : r + _ROWS_PER_SORT] != code
                num[r : r + _ROWS_PER_SORT] = nb - np.count_nonzero(not_chosen, axis=1)
                # Stable sort on "not chosen": chosen tiles first, each group in ascending order.
                indices[r : r + _ROWS_PER_SORT] = np.argsort(not_chosen, axis=1, kind="stable")
    return tables


def block_mask(pattern: Pattern, n: int, block_size: int = 128, device="cpu") -> BlockMask:
    """FlexAttention ``BlockMask`` of ``pattern`` at length ``n``, from sparsekit's block layout.

    Equal to ``create_block_mask(mask_mod(pattern, n), 1, 1, n, n, device=device,
    BLOCK_SIZE=block_size)`` (same partial and full tiles, same index order, same ``mask_mod``), but
    built from :meth:`~sparsekit.Pattern.blocks` and ``BlockMask.from_kv_blocks`` without evaluating
    the ``n x n`` mask. Partial tiles apply the pattern's predicate through the ``mask_mod``; full
    tiles skip it. The mask has batch and head dimensions of size 1 (broadcast by FlexAttention).

    Parameters
    ----------
    pattern : Pattern
        Any sparsekit pattern.
    n : int
        Sequence length (queries and keys).
    block_size : int
        FlexAttention's tile size; ``>= 1`` (its kernels expect 128 or a multiple of 16).
    device : str or torch.device
        Where the block tables live.
    """
    p = _check_pattern(pattern).bind(check_size(n))
    tables = block_tables(p, n, block_size)

    def tensor(name: str, dims: int) -> torch.Tensor:
        value = torch.from_numpy(tables[name]).to(device)
        return value.reshape((1, 1) + value.shape[:dims])

    mask = BlockMask.from_kv_blocks(
        tensor("kv_num_blocks", 1),
        tensor("kv_indices", 2),
        tensor("full_kv_num_blocks", 1),
        tensor("full_kv_indices", 2),
        BLOCK_SIZE=(block_size, block_size),
        mask_mod=mask_mod(p, device=device),
        seq_lengths=(n, n),
        compute_q_blocks=False,
    )
    # The transposed tables come from the same layout; from_kv_blocks would rebuild them with a dense
    # (nb, nb) scatter and argsort in torch, most of the cost at large n.
    for name in ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):
        setattr(mask, name, tensor(name, 1 if name.endswith("num_blocks") else 2))
    return mask

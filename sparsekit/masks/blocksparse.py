"""BigBird as in the paper: global, window and random attention on a grid of blocks (Zaheer et al., 2020).

The paper's implementation (ITC BigBird) never works on single tokens: the sequence is cut into
blocks of ``block_size`` tokens and every part of the pattern selects whole blocks.
"""

from __future__ import annotations

import numpy as np

from .._validate import check_int, check_size
from ..pattern import DIAGONAL, GLOBAL, LOCAL, Pattern, _is_torch
from ._intervals import IntervalRows


def _draw_ranks(rng: np.random.Generator, available: np.ndarray, k: int) -> np.ndarray:
    """``min(k, available[i])`` distinct ranks in ``[0, available[i])`` per row, uniformly; ``-1`` pads.

    Floyd's algorithm vectorized over rows: for ``top`` from ``a - k`` to ``a - 1``, draw ``t`` in
    ``[0, top]`` and keep ``t``, or ``top`` when ``t`` is already taken.
    """
    chosen = np.full((available.size, k), -1, dtype=np.int64)
    few = available <= k  # rows that take every available rank
    chosen[few] = np.where(np.arange(k) < available[few, None], np.arange(k), -1)
    rows = np.flatnonzero(~few)
    for s in range(k):
        top = available[rows] - k + s
        pick = rng.integers(0, top + 1)
        taken = (chosen[rows, :s] == pick[:, None]).any(axis=1)
        chosen[rows, s] = np.where(taken, top, pick)
    return chosen


class BigBirdBlocks(IntervalRows):
    """Block-sparse BigBird on the grid of ``block_size`` blocks; see :func:`bigbird_blocks`.

    Labels: 1 the diagonal, 2 the window blocks, 3 global and random blocks.
    """

    family = "bigbird_blocks"

    def __init__(
        self,
        block_size: int,
        random_blocks: int,
        window_blocks: int,
        global_blocks: int,
        seed: int,
        size: int | None = None,
    ) -> None:
        super().__init__(
            block_size=block_size,
            random_blocks=random_blocks,
            window_blocks=window_blocks,
            global_blocks=global_blocks,
            seed=seed,
        )
        self.block_size, self.random_blocks, self.seed = block_size, random_blocks, seed
        self.window_blocks, self.global_blocks, self.size = window_blocks, global_blocks, size
        self._table: np.ndarray | None = None
        self._torch_tables: dict = {}

    def bind(self, n: int) -> Pattern:
        n = check_size(n)
        nb = -(-n // self.block_size)
        if self.global_blocks > nb:
            raise ValueError(
                f"global_blocks must be an integer in [0, ceil(n / block_size) = {nb}], "
                f"got {self.global_blocks}"
            )
        if self.size == n:
            return self
        args = (self.block_size, self.random_blocks, self.window_blocks, self.global_blocks, self.seed)
        return BigBirdBlocks(*args, size=n)

    @property
    def num_blocks(self) -> int:
        if self.size is None:
            raise ValueError(
                f"{self.name} draws its random blocks for a sequence length: call .bind(n) before "
                f"evaluating the predicate; the views (dense(n), ...) bind automatically"
            )
        return -(-self.size // self.block_size)

    def _band(self, bq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """First and last window block column of block rows ``bq`` outside the global columns."""
        half, nb, g = self.window_blocks // 2, self.num_blocks, self.global_blocks
        return np.maximum(bq - half, g), np.minimum(bq + half, nb - 1)

    @property
    def table(self) -> np.ndarray:
        """Random block columns of each block row, sorted, ``-1`` padded: ``(num_blocks, random_blocks)``.

        Global block rows draw none; any other row draws ``random_blocks`` distinct columns (or all of
        them, when fewer remain) among those neither global nor in its window, reproducibly from
        ``(seed, n)``.
        """
        if self._table is None:
            nb, g, r = self.num_blocks, self.global_blocks, self.random_blocks
            bq = np.arange(g, nb)
            lo, hi = self._band(bq)
            in_band = np.maximum(hi - lo + 1, 0)
            ranks = _draw_ranks(np.random.default_rng(self.seed), nb - g - in_band, r)
            # Rank k among the free columns [g, nb) minus the band [lo, hi].
            cols = g + ranks
            cols = np.where((cols >= lo[:, None]) & (in_band[:, None] > 0), cols + in_band[:, None], cols)
            cols = np.where(ranks < 0, -1, cols)
            cols.sort(axis=1)
            table = np.full((nb, r), -1, dtype=np.int64)
            table[g:] = cols
            self._table = table
        return self._table

    def predicate(self, q, kv):
        b, g = self.block_size, self.global_blocks
        bq, bk = q // b, kv // b
        allowed = (bq < g) | (bk < g) | (abs(bq - bk) <= self.window_blocks // 2)
        if not self.random_blocks:
            return allowed
        nb = self.num_blocks
        if _is_torch(q):
            import torch

            key = str(q.device)
            if key not in self._torch_tables:
                self._torch_tables[key] = torch.as_tensor(self.table.ravel(), device=q.device)
            flat, row = self._torch_tables[key], bq.clamp(0, nb - 1) * self.random_blocks
            for j in range(self.random_blocks):  # elementwise ORs: see masks/longrange.py
                allowed = allowed | (flat[row + j] == bk)
            return allowed
        return allowed | (self.table[np.clip(bq, 0, nb - 1)] == np.asarray(bk)[..., None]).any(-1)

    def code(self, q, kv):
        window = abs(q // self.block_size - kv // self.block_size) <= self.window_blocks // 2
        return np.where(q == kv, DIAGONAL, np.where(window, LOCAL, GLOBAL))

    def _row_counts(self, n: int) -> np.ndarray:
        return np.repeat(self._block_row_counts(n), self.block_size)[:n]

    def _nnz_closed(self, n: int) -> int:
        rows = np.minimum(self.block_size, n - np.arange(self.num_blocks) * self.block_size)
        return sum(int(c) * int(r) for c, r in zip(self._block_row_counts(n), rows, strict=True))

    def _block_row_counts(self, n: int) -> np.ndarray:
        """Keys of each block row's queries (the same for every query of a block row)."""
        lo, hi = self._block_intervals(n)
        return (hi - lo).sum(axis=0)

    def _intervals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._block_intervals(n)
        rows = np.arange(n) // self.block_size
        return lo[:, rows], hi[:, rows]

    def _block_intervals(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Key intervals of each block row, ``(2 + random_blocks, num_blocks)``."""
        # The global columns, the window outside them, and each random block.
        b, g, nb = self.block_size, self.global_blocks, self.num_blocks
        bq = np.arange(nb)
        lo_band, hi_band = self._band(bq)
        blocks_lo = np.concatenate([np.zeros((1, nb), np.int64), lo_band[None], self.table.T])
        band_hi = np.maximum(hi_band + 1, lo_band)[None]  # empty when the window lies in the globals
        blocks_hi = np.concatenate([np.full((1, nb), g), band_hi, self.table.T + 1])
        lo, hi = np.minimum(blocks_lo * b, n), np.minimum(blocks_hi * b, n)
        hi = np.where(blocks_lo < 0, 0, hi)  # padding of the random table
        lo = np.where(blocks_lo < 0, 0, lo)
        global_rows = bq < g
        lo[:, global_rows], hi[:, global_rows] = 0, 0
        hi[0, global_rows] = n
        return lo, hi


def bigbird_blocks(
    block_size: int, random_blocks: int, window_blocks: int, global_blocks: int, seed: int = 0
) -> Pattern:
    """BigBird as in the paper (Zaheer et al., 2020): global, window and random attention by blocks.

    On the grid of ``block_size`` blocks (the last one shorter when ``block_size`` does not divide
    ``n``): the first ``global_blocks`` block rows and block columns are fully allowed; block
    ``(bq, bk)`` is allowed when ``|bq - bk| <= window_blocks // 2``; every other block row draws
    ``random_blocks`` distinct further block columns (neither global nor in its window; all of them
    when fewer remain), reproducibly from ``(seed, n)``. Every cell of an allowed block is allowed.
    Labels: 1 the diagonal, 2 the window blocks, 3 the global and random blocks.

    Parameters
    ----------
    block_size : int
        Tokens per block; ``>= 1`` (the paper uses 64).
    random_blocks : int
        Random block columns per block row; ``>= 0`` (the paper uses 3).
    window_blocks : int
        Width of the block band; ``>= 1`` (the paper uses 3: the block and one on each side).
    global_blocks : int
        Leading global blocks; in ``[0, ceil(n / block_size)]``.
    seed : int
        Seed of the random blocks; ``>= 0``.
    """
    return BigBirdBlocks(
        check_int("block_size", block_size, low=1),
        check_int("random_blocks", random_blocks, low=0),
        check_int("window_blocks", window_blocks, low=1),
        check_int("global_blocks", global_blocks, low=0),
        check_int("seed", seed, low=0),
    )

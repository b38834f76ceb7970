"""Tree attention for speculative decoding (SpecInfer, Medusa): candidate continuations as a tree.

A causal prefix is followed by the nodes of a token tree, node ``t`` at position ``prefix + t``.
Each node attends to the whole prefix, to itself and to its ancestors, so every root-to-leaf path is
verified as if it were its own sequence, all in one forward pass.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .._validate import check_int, check_size
from ..pattern import DIAGONAL, GLOBAL, LOCAL, Pattern, _is_torch
from ._intervals import interval_block_counts


class Tree(Pattern):
    """A causal prefix, then tree nodes that see the prefix, themselves and their ancestors.

    The rule is one interval test on a depth-first numbering: position ``p`` gets ``enter[p]`` and
    ``leave[p]`` such that ``kv`` is allowed for ``q`` exactly when ``enter[kv] <= enter[q] < leave[kv]``.
    A prefix position is numbered by itself with ``leave = length`` (every later position sees it); a
    node by ``prefix`` plus its preorder rank, with ``leave - enter`` its subtree size (the nodes whose
    ancestor it is). Labels: 1 the diagonal, 2 causal prefix cells, 3 ancestor cells.

    Attributes
    ----------
    parents : tuple of int
        Parent of each node (``-1`` for a root), ``parents[t] < t``.
    prefix, length : int
        Prefix length and ``prefix + len(parents)``; views require ``n == length``.
    depth : numpy.ndarray
        Number of ancestors of each node, ``int64 (len(parents),)``.
    """

    family = "tree"

    def __init__(self, parents: tuple[int, ...], prefix: int) -> None:
        super().__init__(parents=parents, prefix=prefix)
        self.parents, self.prefix = parents, prefix
        self.length = prefix + len(parents)
        t = len(parents)
        size = np.ones(t, dtype=np.int64)
        for node in range(t - 1, -1, -1):  # parents come first: children's sizes are final
            if parents[node] >= 0:
                size[parents[node]] += size[node]
        rank, depth = np.empty(t, np.int64), np.zeros(t, np.int64)
        free = np.empty(t, np.int64)  # next preorder rank for the next child of each node
        next_root = 0
        for node, parent in enumerate(parents):
            if parent < 0:
                rank[node], next_root = next_root, next_root + size[node]
            else:
                rank[node], depth[node] = free[parent], depth[parent] + 1
                free[parent] += size[node]
            free[node] = rank[node] + 1
        self.depth = depth
        self._enter = np.concatenate([np.arange(prefix), prefix + rank]).astype(np.int64)
        self._leave = np.concatenate([np.full(prefix, self.length), prefix + rank + size]).astype(np.int64)
        self._torch_tables: dict = {}

    def bind(self, n: int) -> Pattern:
        n = check_size(n)
        if n != self.length:
            raise ValueError(
                f"{self.name}: n = {n} but prefix + len(parents) = {self.length}; n must equal "
                f"prefix + len(parents)"
            )
        return self

    def _numbers(self, x):
        last = self.length - 1
        if _is_torch(x):
            import torch

            key = str(x.device)
            if key not in self._torch_tables:
                self._torch_tables[key] = tuple(
                    torch.as_tensor(a, device=x.device) for a in (self._enter, self._leave)
                )
            enter, leave = self._torch_tables[key]
            x = x.clamp(0, last)
            return enter[x], leave[x]
        x = np.clip(x, 0, last)
        return self._enter[x], self._leave[x]

    def predicate(self, q, kv):
        enter_q, _ = self._numbers(q)
        enter_kv, leave_kv = self._numbers(kv)
        inside = (q < self.length) & (kv < self.length)
        return inside & (enter_kv <= enter_q) & (enter_q < leave_kv)

    def code(self, q, kv):
        q, kv = np.asarray(q), np.asarray(kv)
        return np.where(q == kv, DIAGONAL, np.where(kv < self.prefix, LOCAL, GLOBAL))

    def ancestor_cells(self) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` of the node cells: each node with itself and each of its ancestors."""
        t = len(self.parents)
        parents = np.asarray(self.parents, dtype=np.int64)
        rows, cols = [], []
        node, current = np.arange(t), np.arange(t)
        while node.size:
            rows.append(node + self.prefix)
            cols.append(current + self.prefix)
            current = parents[current]
            node, current = node[current >= 0], current[current >= 0]
        if not rows:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(rows), np.concatenate(cols)

    def _row_counts(self, n: int) -> np.ndarray:
        return np.concatenate([np.arange(1, self.prefix + 1), self.prefix + self.depth + 1]).astype(np.int64)

    def _nnz_closed(self, n: int) -> int:
        nodes = len(self.parents)
        return self.prefix * (self.prefix + 1) // 2 + nodes * (self.prefix + 1) + int(self.depth.sum())

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        # Prefix columns as one interval per row, plus the listed node cells.
        q = np.arange(n, dtype=np.int64)
        hi = np.minimum(q + 1, self.prefix)[None]
        counts = interval_block_counts(np.zeros_like(hi), hi, n, b)
        rows, cols = self.ancestor_cells()
        nb = counts.shape[0]
        counts += np.bincount((rows // b) * nb + cols // b, minlength=nb * nb).reshape(nb, nb)
        return counts


def tree(parents: Sequence[int], prefix: int) -> Pattern:
    """Tree attention for speculative decoding (SpecInfer, Miao et al., 2024; Medusa, Cai et al., 2024).

    Positions ``0 .. prefix - 1`` are causal. Node ``t`` of the token tree sits at position
    ``prefix + t`` and attends to every prefix position, to itself and to its ancestors, nothing
    else; ``parents[t] < t`` is its parent, ``-1`` for a root. Node row ``prefix + t`` has
    ``prefix + depth[t] + 1`` keys. Labels: 1 the diagonal, 2 the causal prefix cells (in prefix rows
    and node rows alike), 3 the ancestor cells. Views require ``n == prefix + len(parents)``.

    Parameters
    ----------
    parents : sequence of int
        Parent of each node; ``parents[t]`` in ``[-1, t - 1]``.
    prefix : int
        Length of the causal prefix (the accepted context); ``>= 0``, with ``prefix + len(parents) >= 1``.
    """
    if isinstance(parents, str | bytes) or not isinstance(parents, Sequence | np.ndarray):
        raise ValueError(f"parents must be a sequence of integers in [-1, t - 1], got {parents!r}")
    values = np.asarray(parents).tolist()
    checked = tuple(check_int(f"parents[{t}]", v, low=-1, high=t - 1) for t, v in enumerate(values))
    prefix = check_int("prefix", prefix, low=0 if checked else 1)
    return Tree(checked, prefix)

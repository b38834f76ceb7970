"""MoBA's block layout without ``n x n`` work, against the generic cell-by-cell engine and dense scores.

Run by hand: ``.venv/bin/python benchmarks/bench_selection.py`` (numpy only). At d = 64, block 512,
top-k 3, for n = 4096 .. 32768 it prints:

* ``select``: ``sk.moba`` (block means ``n*d``, scores ``n * n/B * d``, the choice ``n * n/B``);
* ``layout``: ``pattern.blocks(n, 512)`` from the table of choices: per tile row, how many rows
  chose each block (``n * n/B`` additions), the diagonal tiles from each row's causal limit;
* ``generic``: the same layout from the predicate, cell by cell (``Pattern._block_counts`` of the
  base class: ``n**2`` cells), the baseline; checked equal to ``layout``;
* ``q @ k.T``: the dense score matrix that attending to every key would compute (``n**2 * d``).

Ratios divide the baseline by sparsekit's time. Times are the best of a few runs.
"""

from __future__ import annotations

import numpy as np

import sparsekit as sk
from sparsekit.pattern import Pattern
from sparsekit.torch.measure import best_of

D, BLOCK, TOP_K = 64, 512, 3


def main() -> None:
    rng = np.random.default_rng(0)
    print(f"moba(q, k, block_size={BLOCK}, top_k={TOP_K}), d = {D}, float32 inputs; best of 3 (generic: 1)")
    header = f"{'n':>6} {'select':>9} {'layout':>9} {'generic':>9} {'ratio':>7} {'q @ k.T':>9} {'ratio':>7}"
    print(header)
    for n in (4096, 8192, 16384, 32768):
        q, k = rng.normal(size=(2, n, D)).astype(np.float32)
        t_select, pattern = best_of(lambda q=q, k=k: sk.moba(q, k, BLOCK, TOP_K), 3)
        t_layout, layout = best_of(lambda p=pattern, n=n: p.blocks(n, BLOCK), 3)
        if n <= 16384:
            t_generic, counts = best_of(lambda p=pattern, n=n: Pattern._block_counts(p, n, BLOCK), 1)
            area = BLOCK * BLOCK
            generic = np.where(counts == 0, 0, np.where(counts == area, 2, 1))
            assert np.array_equal(generic, layout), "the two layouts differ"
            generic_text = f"{t_generic:9.3f} {t_generic / t_layout:7.0f}"
        else:
            generic_text = f"{'-':>9} {'-':>7}"
        t_dense, _ = best_of(lambda q=q, k=k: q @ k.T, 3)
        total = t_select + t_layout
        print(f"{n:>6} {t_select:9.4f} {t_layout:9.4f} {generic_text} {t_dense:9.4f} {t_dense / total:7.1f}")
    print("seconds; the last ratio is (q @ k.T) / (select + layout)")


if __name__ == "__main__":
    main()

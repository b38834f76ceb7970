"""Benchmark of the resource calculator (run: ``python benchmarks/bench_resources.py``).

1. At mask_size 1024, the vectorized :func:`sparsekit.resources.analyze` against a straightforward
   per-point Python loop (sets per step), on the same ordered products; the figures must agree.
2. Every mask type at mask_size 16384 with the defaults (64 products, read limit 1000), timed.
"""

from __future__ import annotations

import argparse

import numpy as np

from sparsekit import resources as res
from sparsekit.torch.measure import best_of


def per_point_loop(cells: np.ndarray, m: int, r: int) -> tuple[list[int], list[int], list[int]]:
    """The packing rule one product at a time; returns products, rows and columns of every step."""
    sizes, rows_per_step, cols_per_step = [], [], []
    rows: set[int] = set()
    cols: set[int] = set()
    count = 0
    for i, j in cells.tolist():
        grow = (i not in rows) + (j not in cols)
        if count and count < m and len(rows) + len(cols) + grow <= r:
            count += 1
        else:
            if count:
                sizes.append(count)
                rows_per_step.append(len(rows))
                cols_per_step.append(len(cols))
            rows, cols, count = set(), set(), 1
        rows.add(i)
        cols.add(j)
    if count:
        sizes.append(count)
        rows_per_step.append(len(rows))
        cols_per_step.append(len(cols))
    return sizes, rows_per_step, cols_per_step


def compare(n: int, masks: list[str], m: int, r: int) -> None:
    print(f"vectorized vs per-point loop, mask_size {n}, num_multiplications {m}, read_limit {r}")
    print(f"{'mask':<24}{'nnz':>10}{'loop s':>9}{'vector s':>10}{'ratio':>8}")
    for name in masks:
        pattern = res.build_mask(name, n)
        cells = res.ordered_nonzeros(pattern, n)
        loop, (sizes, rows, cols) = best_of(lambda c=cells: per_point_loop(c, m, r), 1)
        fast, a = best_of(lambda p=pattern: res.analyze(p, n, m, r), 1)
        assert a.products.tolist() == sizes and a.rows.tolist() == rows and a.cols.tolist() == cols
        print(f"{name:<24}{a.nnz:>10}{loop:>9.3f}{fast:>10.3f}{loop / fast:>7.1f}x")


def scale(n: int, masks: list[str], m: int, r: int) -> None:
    print(f"\nall patterns at mask_size {n}, num_multiplications {m}, read_limit {r} (analyze, seconds)")
    total = 0.0
    for name in masks:
        pattern = res.build_mask(name, n)
        took, a = best_of(lambda p=pattern: res.analyze(p, n, m, r), 1)
        total += took
        print(f"{name:<24}{a.nnz:>12} products {a.num_steps:>9} steps {took:>7.2f} s")
    print(f"{'all':<24}{total:>43.2f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=1024)
    parser.add_argument("--large", type=int, default=16384)
    parser.add_argument("--masks", default=",".join(res.MASK_TYPES))
    args = parser.parse_args()
    masks = args.masks.split(",")
    compare(args.small, masks, 64, 1000)
    compare(args.small, ["normal", "strided"], 64, 40)
    scale(args.large, masks, 64, 1000)


if __name__ == "__main__":
    main()

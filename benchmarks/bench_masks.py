"""Speed of the mask views, each against a baseline measured in the same run.

Run by hand: ``.venv/bin/python benchmarks/bench_masks.py``. Prints:

* ``dense(16384)`` for every pattern against the floor: allocating and filling an n x n bool array;
* the closed forms at n = 2**40: ``nnz``, ``sparsity`` and ``block_summary`` of every structured pattern
  (goal: under 50 ms each), with the exact values;
* exact sparsity at n = 2**20 (no n x n mask is built);
* ``blocks(131072, 128)`` for every pattern;
* a per-cell Python loop at n = 1024 against ``dense(1024)``, for contrast.
"""

from __future__ import annotations

import numpy as np

import sparsekit as sk
from sparsekit.masks.segments import paraphrase_fusion
from sparsekit.torch.measure import best_of


def patterns(n: int) -> dict[str, sk.Pattern]:
    height = 1 << (n.bit_length() - 1) // 2  # n is a power of two: the squarest grid
    grid = (height, n // height)
    return {
        "causal": sk.causal(),
        "strided(128,128)": sk.strided(128, 128),
        "fixed(128)": sk.fixed(128),
        "sliding_window(512)": sk.sliding_window(512),
        "dilated(512,2)": sk.dilated_sliding_window(512, 2),
        "block_local(128)": sk.block_local(128),
        f"axial{grid}": sk.axial(*grid),
        "global_tokens(64)": sk.global_tokens(64),
        "window(256)": sk.window(256),
        "fusion(8 paraphrases)": paraphrase_fusion(
            num_paraphrases=8,
            tokens_per_paraphrase=n // 8 - 16,
            separator_tokens=4,
            prefix_tokens=100,
            num_generated_tokens=n - 8 * (n // 8 - 16) - 28 - 100,
        ),
        "random(32)": sk.random(32, seed=0),
        "longformer(512,64)": sk.longformer(512, 64),
        "bigbird(32,256,64)": sk.bigbird(32, 256, 64, seed=0),
    }


def main() -> None:
    n = 16384
    floor, _ = best_of(lambda: np.ones((n, n), dtype=bool))
    print(f"dense({n}): floor (np.ones n x n bool) = {floor * 1e3:.1f} ms")
    for name, p in patterns(n).items():
        t, _ = best_of(lambda p=p: p.dense(n))
        print(f"  {name:24s} {t * 1e3:8.1f} ms  {t / floor:6.2f} x floor")

    huge = 1 << 40
    print(f"\nclosed forms at n = 2**40 = {huge} (goal: under 50 ms each; exact Python integers)")
    for name, p in patterns(huge).items():
        if p.bind(huge)._nnz_closed(huge) is None:
            print(f"  {name:24s} no closed form (a union with random attention): see 2**20 below")
            continue
        t_nnz, _ = best_of(lambda p=p: p.nnz(huge))
        t_sparsity, _ = best_of(lambda p=p: p.sparsity(huge))
        if p.bind(huge)._block_summary_closed(huge, 128) is not None:
            t_blocks, _ = best_of(lambda p=p: p.block_summary(huge, 128))
            tiles = f"block_summary {t_blocks * 1e3:6.2f} ms  empty tiles={p.block_summary(huge)['empty']}"
        else:
            tiles = "block_summary: no closed form (refused above the memory budget)"
        print(
            f"  {name:24s} nnz {t_nnz * 1e3:6.2f} ms  sparsity {t_sparsity * 1e3:6.2f} ms  "
            f"nnz={p.nnz(huge)}  sparsity={p.sparsity(huge):.12f}  {tiles}"
        )

    big = 1 << 20
    print(f"\nexact sparsity at n = 2**20 = {big}")
    for name, p in patterns(big).items():
        t, _ = best_of(lambda p=p: p.sparsity(big), repeat=1)
        print(f"  {name:24s} {t * 1e3:8.1f} ms  sparsity {p.sparsity(big):.6%}")

    m = 131072
    print(f"\nblocks({m}, 128)")
    for name, p in patterns(m).items():
        t, _ = best_of(lambda p=p: p.blocks(m, 128), repeat=1)
        print(f"  {name:24s} {t * 1e3:8.1f} ms")

    small = 1024
    p = sk.strided(32, 32)

    def per_cell_loop():
        out = np.zeros((small, small), dtype=bool)
        for i in range(small):
            for j in range(small):
                out[i, j] = j <= i and (i - j < 32 or (i - j) % 32 == 0)
        return out

    loop, _ = best_of(per_cell_loop, repeat=1)
    fast, _ = best_of(lambda: p.dense(small))
    print(f"\nper-cell Python loop, strided n = {small}: {loop * 1e3:.0f} ms; dense(): {fast * 1e3:.2f} ms")
    print(f"  dense() is {loop / fast:.0f} x faster")


if __name__ == "__main__":
    main()

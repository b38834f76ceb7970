"""Patterns since 2023 at large n: exact counts, tile layouts and FlexAttention block masks.

Run by hand: ``.venv/bin/python benchmarks/bench_modern.py`` (the last part needs torch; CPU). Prints,
for each static pattern of chapter 12:

* ``nnz(2**20)`` and ``sparsity(2**20)``: exact, from closed forms or O(n) passes (an ``n x n`` mask
  would be 1 TiB);
* ``blocks(131072, 128)``: the 1024 x 1024 tile layout from the rows' key intervals;
* ``sparsekit.torch.block_mask`` at n = 65536 against torch's *compiled* ``create_block_mask``
  (``_compile=True``, which evaluates every cell through the ``mask_mod`` in a generated kernel),
  measured in the same run, with the ratio, after checking that both give the same tiles.

Times are the best of a few runs; the compiled baseline is timed after one warm-up call (its compile).
"""

from __future__ import annotations

import argparse
import platform
import warnings

import sparsekit as sk
from sparsekit.torch.measure import best_of


def patterns(n: int) -> dict[str, sk.Pattern]:
    """One realistic instance of each family at length ``n`` (a power of two, at least 65536)."""
    height = 2 ** ((n.bit_length() - 1) // 2)  # a square grid, or twice as wide as high
    width = n // height
    documents = [n // 2, 1, n // 8, 3] + [997] * ((n - n // 2 - n // 8 - 4) // 997)
    documents.append(n - sum(documents))
    tree_nodes = 1023  # a complete binary tree of speculative tokens after the context
    return {
        "attention_sinks(4, 4096)": sk.attention_sinks(4, 4096),
        "causal_window(4096)": sk.causal_window(4096),
        "prefix_lm(n / 4)": sk.prefix_lm(n // 4),
        "chunked(8192)": sk.chunked(8192),
        "document(uneven)": sk.document(documents),
        f"neighborhood_2d({height}x{width}, 7x7)": sk.neighborhood_2d(height, width, 7, 7),
        "tree(1023 nodes)": sk.tree([-1] + [(t - 1) // 2 for t in range(1, tree_nodes)], n - tree_nodes),
        "bigbird_blocks(64, 3, 3, 2)": sk.bigbird_blocks(64, 3, 3, 2, seed=0),
    }


def counts(n: int) -> None:
    print(f"\nExact counts at n = {n} (2**{n.bit_length() - 1})")
    print(f"{'pattern':34s} {'nnz':>16} {'sparsity':>12} {'time':>10}")
    for name, p in patterns(n).items():
        seconds, nnz = best_of(lambda p=p: p.nnz(n), 3)
        print(f"{name:34s} {nnz:16,d} {p.sparsity(n):12.8f} {seconds * 1e3:7.1f} ms")


def layouts(n: int, block: int) -> None:
    print(f"\nTile layout blocks({n}, {block})")
    print(f"{'pattern':34s} {'empty':>9} {'partial':>9} {'full':>9} {'time':>10}")
    for name, p in patterns(n).items():
        seconds, layout = best_of(lambda p=p: p.blocks(n, block), 3)
        empty, partial, full = ((layout == k).sum() for k in range(3))
        print(f"{name:34s} {empty:9d} {partial:9d} {full:9d} {seconds * 1e3:7.1f} ms")


def block_masks(n: int, block: int) -> None:
    import torch
    from torch.nn.attention.flex_attention import create_block_mask

    import sparsekit.torch as skt

    print(f"\nBlockMask at n = {n}, block {block}: sparsekit against compiled create_block_mask")
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}")
    print(f"{'pattern':34s} {'sparsekit':>12} {'compiled':>12} {'ratio':>8}")
    for name, p in patterns(n).items():
        ours_t, ours = best_of(lambda p=p: skt.block_mask(p, n, block), 3)
        mod = skt.mask_mod(p, n)

        def theirs(mod=mod):
            return create_block_mask(mod, 1, 1, n, n, device="cpu", BLOCK_SIZE=block, _compile=True)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            theirs()  # compile
            theirs_t, reference = best_of(theirs, 2)
        for table in ("kv_num_blocks", "full_kv_num_blocks"):
            assert torch.equal(getattr(ours, table), getattr(reference, table)), f"{name}: {table} differ"
        assert torch.equal(ours.to_dense(), reference.to_dense()), f"{name}: tiles differ"
        print(f"{name:34s} {ours_t * 1e3:9.1f} ms {theirs_t * 1e3:9.1f} ms {theirs_t / ours_t:7.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-torch", action="store_true", help="skip the BlockMask comparison")
    args = parser.parse_args()
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    counts(2**20)
    layouts(131072, 128)
    if not args.no_torch:
        block_masks(65536, 128)


if __name__ == "__main__":
    main()

"""FlexAttention BlockMask: sparsekit's construction from its block layout against ``create_block_mask``.

Run by hand: ``.venv/bin/python benchmarks/bench_blockmask.py`` (needs torch; CPU). Prints, at block
size 128:

* ``sparsekit.torch.block_mask`` against eager ``create_block_mask`` (which evaluates all ``n**2``
  cells through the ``mask_mod``) at n = 1024, 4096, 16384, with the ratio, after checking that both
  give the same tiles;
* ``sparsekit.torch.block_mask`` alone at n = 65536 and 262144, where ``create_block_mask`` would
  need an ``n x n`` boolean mask (64 GiB at n = 262144) and more for its temporaries.

Times are the best of a few runs (one run for the slowest eager constructions).
"""

from __future__ import annotations

import warnings

import torch
from _timing import best_of
from torch.nn.attention.flex_attention import create_block_mask

import sparsekit as sk
import sparsekit.torch as skt
from sparsekit.masks.segments import paraphrase_fusion

BLOCK = 128


def fusion(n: int) -> sk.Pattern:
    """Eight paraphrases with separators between a question prefix and generated tokens, n tokens."""
    prefix, separator, generated, k = n // 32, 4, n // 16, 8
    rest = n - prefix - generated - separator * (k - 1)
    lengths = [rest // k] * (k - 1) + [rest - (k - 1) * (rest // k)]
    return paraphrase_fusion(
        lengths=lengths, separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated
    )


def patterns(n: int) -> dict[str, sk.Pattern]:
    return {
        "causal": sk.causal(),
        "sliding_window(1024)": sk.sliding_window(1024),
        "longformer(512,64)": sk.longformer(512, 64),
        "paraphrase_fusion(8)": fusion(n),
    }


def same_tiles(a, b) -> bool:
    return all(
        torch.equal(getattr(a, name), getattr(b, name))
        for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")
    )


def main() -> None:
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, block size {BLOCK}")
    print(f"{'n':>7} {'pattern':24s} {'sparsekit':>12} {'create_block_mask':>18} {'ratio':>9}")
    for n in (1024, 4096, 16384):
        for name, p in patterns(n).items():
            ours_t, ours = best_of(lambda p=p, n=n: skt.block_mask(p, n, BLOCK), 5)
            mod = skt.mask_mod(p, n)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                theirs_t, theirs = best_of(
                    lambda mod=mod, n=n: create_block_mask(mod, 1, 1, n, n, device="cpu", BLOCK_SIZE=BLOCK),
                    3 if n <= 4096 else 1,
                )
            assert same_tiles(ours, theirs), f"{name} at n={n}: tiles differ"
            ratio = theirs_t / ours_t
            print(f"{n:7d} {name:24s} {ours_t * 1e3:9.2f} ms {theirs_t * 1e3:15.1f} ms {ratio:8.0f}x")
    for n in (65536, 262144):
        for name, p in patterns(n).items():
            ours_t, ours = best_of(lambda p=p, n=n: skt.block_mask(p, n, BLOCK), 2)
            tiles = ours.kv_num_blocks.shape[-1] ** 2
            used = int(ours.kv_num_blocks.sum() + ours.full_kv_num_blocks.sum())
            print(
                f"{n:7d} {name:24s} {ours_t * 1e3:9.2f} ms {'(n x n: not run)':>18} "
                f"  {used}/{tiles} tiles non-empty"
            )


if __name__ == "__main__":
    main()

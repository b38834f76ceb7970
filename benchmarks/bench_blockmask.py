"""FlexAttention BlockMask: sparsekit's construction from its block layout against ``create_block_mask``.

Run by hand: ``.venv/bin/python benchmarks/bench_blockmask.py`` (needs torch; CPU). Prints, at block
size 128:

* ``sparsekit.torch.block_mask`` against eager ``create_block_mask`` (which evaluates all ``n**2``
  cells through the ``mask_mod``) at n = 1024 and 4096, with the ratio, after checking that both give
  the same tiles;
* ``sparsekit.torch.block_mask`` against *compiled* ``create_block_mask`` (``_compile=True``, warmed
  up, so compilation is not timed) at n = 65536 and 262144 for the periodic patterns, in the same run,
  with the ratio and the same check; the aperiodic ones (Longformer, paraphrase fusion) alone.

Times are the best of a few runs (one or two for the slowest constructions).
"""

from __future__ import annotations

import warnings

import torch
from torch.nn.attention.flex_attention import create_block_mask

import sparsekit as sk
import sparsekit.torch as skt
from sparsekit.torch.measure import best_of, timing_pattern

BLOCK = 128


def patterns(n: int) -> dict[str, sk.Pattern]:
    return {
        "causal": sk.causal(),
        "sliding_window(1024)": sk.sliding_window(1024),
        "strided(128,128)": sk.strided(128, 128),
        "longformer(512,64)": sk.longformer(512, 64),
        "paraphrase_fusion(8)": timing_pattern(n),
    }


def same_tiles(a, b) -> bool:
    return all(
        torch.equal(getattr(a, name), getattr(b, name))
        for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices")
    )


def compare(n: int, name: str, p: sk.Pattern, compiled: bool, repeat: int) -> None:
    """Time both constructions at ``n``, check they give the same tiles, print the ratio."""
    ours_t, ours = best_of(lambda: skt.block_mask(p, n, BLOCK), 5)
    mod = skt.mask_mod(p, n)

    def theirs_fn():
        return create_block_mask(mod, 1, 1, n, n, device="cpu", BLOCK_SIZE=BLOCK, _compile=compiled)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if compiled:
            theirs_fn()  # compile once, untimed
        theirs_t, theirs = best_of(theirs_fn, repeat)
    assert same_tiles(ours, theirs), f"{name} at n={n}: tiles differ"
    kind = "compiled" if compiled else "eager"
    print(
        f"{n:7d} {name:24s} {ours_t * 1e3:9.2f} ms {theirs_t * 1e3:12.1f} ms {kind:>8} "
        f"{theirs_t / ours_t:8.0f}x"
    )


def main() -> None:
    print(f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}, block size {BLOCK}")
    print(f"{'n':>7} {'pattern':24s} {'sparsekit':>12} {'create_block_mask':>24} {'ratio':>9}")
    for n in (1024, 4096):
        for name, p in patterns(n).items():
            compare(n, name, p, compiled=False, repeat=3)
    for n in (65536, 262144):
        for name, p in patterns(n).items():
            if p.period is not None:
                compare(n, name, p, compiled=True, repeat=2)
                continue
            ours_t, ours = best_of(lambda p=p, n=n: skt.block_mask(p, n, BLOCK), 2)
            tiles = ours.kv_num_blocks.shape[-1] ** 2
            used = int(ours.kv_num_blocks.sum() + ours.full_kv_num_blocks.sum())
            skipped = "(not compared)"
            print(f"{n:7d} {name:24s} {ours_t * 1e3:9.2f} ms {skipped:>24}  {used}/{tiles} tiles used")


if __name__ == "__main__":
    main()

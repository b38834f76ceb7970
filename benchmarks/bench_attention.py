"""From masks to compute: block-sparse numpy attention against dense numpy and compiled FlexAttention.

Run by hand: ``.venv/bin/python benchmarks/bench_attention.py`` (``--n 4096`` for a quick run; ``--help``).
Prints the machine context (CPUs, load, numpy's BLAS and its float32 matmul GFLOP/s measured now), then
for each layout at ``n`` tokens, ``d`` features, ``block`` tile size and float32:

* the block density (non-empty tiles / all tiles) and the ideal speed-up ``1 / density``;
* ``sparsekit.attention.attention`` (dense numpy, every one of the ``n**2`` scores, given the boolean
  mask) and ``block_sparse_attention`` (given the block layout), best of a few runs, the speed-up and
  its fraction of the ideal; the one-off costs of the boolean mask (``pattern.dense``) and of the layout
  (``pattern.blocks``) separately;
* peak memory (tracemalloc, which sees numpy's allocations) of one call of each built from the
  pattern, i.e. including the mask or the layout;
* the largest absolute difference between the two outputs;
* the peak memory of ``block_sparse_attention`` for the sliding window at ``n / 4``, ``n / 2`` and ``n``
  (it follows the non-empty tiles, while the dense mask alone grows as ``n**2``);
* then compiled ``flex_attention`` on the CPU (``sparsekit.torch.flex_attention_fn(mask, compile=True)``)
  with ``sparsekit.torch.block_mask(pattern, n, block)`` (skipped with ``--no-torch``; timing itself
  uses :mod:`sparsekit.torch.measure`, so torch must be installed), compiled for each layout: the first call
  (compilation, or a hit in inductor's on-disk cache), the time per head, the ratio numpy
  block-sparse / flex per head, and the largest difference from the numpy output, flagged when over
  1e-3. Torch runs after every numpy timing, so its thread pool cannot disturb them.

Every ratio is between two times measured in this run. Other processes on the machine make times noisy;
the load average is printed before and after.
"""

from __future__ import annotations

import argparse
import os
import platform

import numpy as np

import sparsekit as sk
from sparsekit._validate import int_arg
from sparsekit.attention import attention, block_sparse_attention
from sparsekit.torch.measure import best_of, traced_peak_bytes

# Name (as given to --layouts) -> pattern; the parameters are in the name.
LAYOUTS = {
    "sliding_window_512": lambda: sk.sliding_window(512),
    "sliding_window_256": lambda: sk.sliding_window(256),
    "block_local_512": lambda: sk.block_local(512),
    "longformer_512_128": lambda: sk.longformer(512, 128),
    "causal": lambda: sk.causal(),
    "bigbird_3_512_128": lambda: sk.bigbird(3, 512, 128, seed=0),
}


def blas_gflops(size: int = 2048, repeat: int = 5) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    t, _ = best_of(lambda: a @ b, repeat)
    return 2 * size**3 / t / 1e9


def machine_context() -> None:
    blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    print(
        f"machine: {platform.processor() or platform.machine()}, os.cpu_count() = {os.cpu_count()}, "
        f"usable CPUs = {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.2f}"
    )
    print(
        f"numpy {np.__version__}, BLAS {blas.get('name')} {blas.get('version')}, "
        f"float32 matmul 2048^3: {blas_gflops():.1f} GFLOP/s (measured now)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int_arg(1), default=16384, help="tokens (default 16384)")
    parser.add_argument("--d", type=int_arg(1), default=64, help="features per head (default 64)")
    parser.add_argument("--heads", type=int_arg(1), default=1, help="heads (default 1)")
    parser.add_argument("--block", type=int_arg(1), default=128, help="tile size (default 128)")
    parser.add_argument("--repeat", type=int_arg(1), default=3, help="best of this many runs (default 3)")
    parser.add_argument(
        "--layouts", default=",".join(LAYOUTS), help=f"comma-separated, from: {', '.join(LAYOUTS)}"
    )
    parser.add_argument("--no-torch", action="store_true", help="skip compiled flex_attention")
    args = parser.parse_args()
    names = [s.strip() for s in args.layouts.split(",") if s.strip()]
    unknown = [s for s in names if s not in LAYOUTS]
    if unknown:
        parser.error(f"unknown layouts {unknown}; choose from {list(LAYOUTS)}")
    n, d, h, b, repeat = args.n, args.d, args.heads, args.block, args.repeat

    machine_context()
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((h, n, d), dtype=np.float32) for _ in range(3))
    print(
        f"\nn = {n}, d = {d}, heads = {h}, block = {b}, float32; dense: best of {repeat}, sparse: best of "
        f"{repeat + 2}; an n x n float32 score matrix is {n * n * 4 / 2**20:.0f} MiB per head"
    )
    print(
        f"{'layout':22s} {'density':>8s} {'dense s':>8s} {'sparse s':>9s} {'speed-up':>9s} {'ideal':>7s} "
        f"{'of ideal':>9s} {'mask s':>7s} {'layout s':>9s} {'dense MiB':>10s} {'sparse MiB':>11s} "
        f"{'max diff':>9s}"
    )
    results = {}
    for name in names:
        pattern = LAYOUTS[name]().bind(n)
        layout_t, layout = best_of(lambda p=pattern: p.blocks(n, b), 1)
        density = np.count_nonzero(layout) / layout.size
        mask_t, mask = best_of(lambda p=pattern: p.dense(n), 1)
        dense_t, dense_out = best_of(lambda m=mask: attention(q, k, v, m), repeat)
        del mask
        sparse_t, sparse_out = best_of(
            lambda p=pattern, lay=layout: block_sparse_attention(q, k, v, p, b, layout=lay), repeat + 2
        )
        dense_mem = traced_peak_bytes(lambda p=pattern: attention(q, k, v, p))
        sparse_mem = traced_peak_bytes(lambda p=pattern: block_sparse_attention(q, k, v, p, b))
        diff = float(np.abs(dense_out - sparse_out).max())
        speedup, ideal = dense_t / sparse_t, 1 / density
        print(
            f"{name:22s} {density:8.2%} {dense_t:8.3f} {sparse_t:9.4f} {speedup:8.1f}x {ideal:6.1f}x "
            f"{speedup / ideal:9.0%} {mask_t:7.3f} {layout_t:9.4f} {dense_mem / 2**20:10.1f} "
            f"{sparse_mem / 2**20:11.1f} {diff:9.1e}"
        )
        results[name] = (pattern, sparse_t, sparse_out)
        del dense_out
    memory_scaling(n, d, h, b)
    print(f"load average after numpy: {os.getloadavg()[0]:.2f}")
    if not args.no_torch:
        flex_section(results, q, k, v, n, h, b, repeat)


def memory_scaling(n: int, d: int, h: int, b: int) -> None:
    """Peak memory of block_sparse_attention for the sliding window at n / 4, n / 2 and n."""
    print(f"\npeak memory of block_sparse_attention, sliding_window_512, as n grows (heads = {h}, d = {d}):")
    print(
        f"{'n':>7s} {'non-empty tiles':>16s} {'sparse MiB':>11s} {'inputs+output MiB':>18s} "
        f"{'n x n bool MiB':>15s}"
    )
    rng = np.random.default_rng(1)
    for size in sorted({max(b, n // 4), max(b, n // 2), n}):
        q, k, v = (rng.standard_normal((h, size, d), dtype=np.float32) for _ in range(3))
        pattern = LAYOUTS["sliding_window_512"]()
        tiles = int(np.count_nonzero(pattern.blocks(size, b)))
        peak = traced_peak_bytes(lambda p=pattern, q=q, k=k, v=v: block_sparse_attention(q, k, v, p, b))
        io = 4 * q.nbytes
        print(f"{size:7d} {tiles:16d} {peak / 2**20:11.1f} {io / 2**20:18.1f} {size * size / 2**20:15.1f}")


def flex_section(results: dict, q, k, v, n: int, h: int, b: int, repeat: int) -> None:
    import torch

    import sparsekit.torch as skt

    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads: compiled flex_attention "
        f"(sparsekit.torch.flex_attention_fn(mask, compile=True)), mask = "
        f"sparsekit.torch.block_mask(pattern, n, {b}); per head, best of {repeat + 2}"
    )
    print(
        f"{'layout':22s} {'1st call s':>10s} {'flex s/head':>12s} {'numpy s/head':>13s} "
        f"{'numpy/flex':>11s} {'max diff':>9s}"
    )
    tq, tk, tv = (torch.from_numpy(x)[None] for x in (q, k, v))
    for name, (pattern, sparse_t, sparse_out) in results.items():
        # A compilation per layout (its own recompile region): the mask_mod is traced into the kernel.
        try:
            compiled = skt.flex_attention_fn(skt.block_mask(pattern, n, b), compile=True)
            compile_t, _ = best_of(lambda f=compiled: f(tq, tk, tv), 1)
            flex_t, out = best_of(lambda f=compiled: f(tq, tk, tv), repeat + 2)
        except Exception as error:  # report why inductor could not compile or run it, and go on
            print(f"{name:22s} failed: {type(error).__name__}: {str(error).splitlines()[0][:80]}")
            continue
        diff = float(np.abs(out[0].numpy() - sparse_out).max())
        flag = "  <- compiled flex differs (numpy dense and block-sparse agree)" if diff > 1e-3 else ""
        print(
            f"{name:22s} {compile_t:10.1f} {flex_t / h:12.4f} {sparse_t / h:13.4f} "
            f"{sparse_t / flex_t:10.2f}x {diff:9.1e}{flag}"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

"""Time and peak memory, measured on this machine: the one home of sparsekit's measurements.

The chapters print timings computed when the page is built, and the scripts in ``benchmarks/`` print
ratios against baselines measured in the same run; both measure with the functions here:

* :func:`best_of` and :func:`median_of`: wall time of repeated calls (``time.perf_counter``);
* :func:`traced_peak_bytes`: peak memory of a call as ``tracemalloc`` sees it (numpy's buffers);
* :func:`tensor_peak_bytes`: peak tensor memory of a call from ``torch.profiler``'s allocation records;
* :func:`measure_layer` (and :func:`format_measurements`): :class:`~sparsekit.torch.layers.SparseAttention2d`
  against the same layer with dense attention, time and memory, forward and forward plus backward;
* :func:`time_backends`: one attention call through each backend of :mod:`sparsekit.torch.backends`
  on a paraphrase-fusion layout (:func:`timing_pattern`) at growing length.

Nothing is hard-coded: every number comes from running the code now. Times on a machine shared with
other work are noisy; the functions that time torch take ``num_threads`` or follow
``torch.get_num_threads()`` (one thread gives steadier numbers on a busy machine).
"""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from .._validate import check_int
from ..masks.segments import ParaphraseFusion, paraphrase_fusion
from ..pattern import Pattern
from .backends import causal_sdpa, flex_attention_fn, masked_sdpa_fn
from .blockmask import block_mask
from .layers import SparseAttention2d

__all__ = [
    "best_of",
    "format_measurements",
    "measure_layer",
    "median_of",
    "tensor_peak_bytes",
    "time_backends",
    "timing_pattern",
    "traced_peak_bytes",
]


# ------------------------------------------------------------------------------------------------
# Wall time and peak memory of any call
# ------------------------------------------------------------------------------------------------
def _times(fn: Callable[[], object], repeat: int) -> tuple[list[float], object]:
    """Seconds of each of ``repeat`` calls of ``fn``, and the last call's result."""
    repeat = check_int("repeat", repeat, low=1)
    seconds, result = [], None
    for _ in range(repeat):
        result = None  # release the previous result first: two large ones are never held at once
        start = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - start)
    return seconds, result


def best_of(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Best wall time of ``repeat`` calls of ``fn`` in seconds, and the last call's result.

    The best time is the one least disturbed by other work; nothing is called before the first timed
    call (call ``fn`` once first to leave out a warm-up or a compilation).
    """
    seconds, result = _times(fn, repeat)
    return min(seconds), result


def median_of(fn: Callable[[], object], repeat: int = 3) -> tuple[float, object]:
    """Median wall time of ``repeat`` calls of ``fn`` in seconds, and the last call's result."""
    seconds, result = _times(fn, repeat)
    return statistics.median(seconds), result


def traced_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak memory allocated while ``fn`` runs, as ``tracemalloc`` sees it (numpy's buffers included).

    Tracing starts just before the call, so what existed before does not count; what ``fn`` returns
    does (it is allocated during the call) and is released before this returns.
    """
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = fn()
        peak = tracemalloc.get_traced_memory()[1] - before
        del result
    finally:
        tracemalloc.stop()
    return peak


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to the null device for a moment (output of C++ code, not Python's)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def tensor_peak_bytes(fn: Callable[[], object]) -> int:
    """Largest number of bytes held by tensors allocated while ``fn`` runs, above the level at its start.

    Replays the allocation and free records of ``torch.profiler`` (``profile_memory=True``) in time
    order; tensors that already existed (weights, inputs, cached masks) are not counted, and tensors
    ``fn`` returns are (they are allocated during the call).
    """
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    # The profiler logs every start and stop, and allocator notes, on the C-level stderr.
    with _native_stderr_silenced(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    records: list[tuple[int, int]] = []
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        node = stack.pop()
        if node.typed[0] == _EventType.Allocation:
            records.append((node.start_time_ns, node.typed[1].alloc_size))
        stack.extend(node.children)
    records.sort()
    level = peak = 0
    for _, size in records:
        level += size
        peak = max(peak, level)
    return peak


# ------------------------------------------------------------------------------------------------
# The sparse-attention layer against the same layer with dense attention
# ------------------------------------------------------------------------------------------------
def measure_layer(
    pattern: str | Pattern,
    height: int,
    width: int,
    channels: int = 64,
    heads: int = 4,
    repeats: int = 3,
    *,
    batch: int = 1,
    block_size: int = 128,
    compile: bool = False,
    seed: int = 0,
    **pattern_options: object,
) -> dict[str, object]:
    """Time and peak memory of a :class:`~sparsekit.torch.layers.SparseAttention2d` against dense attention.

    Two layers with the same weights (seeded) run on the same random ``batch x channels x height x
    width`` input: the sparse one (FlexAttention, eager unless ``compile``) and ``pattern="dense"``
    (``scaled_dot_product_attention``). For each: the median wall time over ``repeats`` runs (after
    one warm-up run) of a forward pass under ``torch.no_grad()`` and of a forward plus backward pass
    (sum of the output), and the peak memory of each, measured by :func:`tensor_peak_bytes` (bytes of tensor
    memory allocated during one run, above the level at its start, from ``torch.profiler`` allocation
    records; parameter gradients are cleared first so every backward allocates them).

    With ``compile=True`` the sparse layer's forward uses the compiled FlexAttention kernel (compiled in
    the warm-up run; its backward is the layer's tile backward either way). The layers are initialised
    from ``torch.manual_seed(seed)`` (the global generator is reseeded). Timings follow
    ``torch.get_num_threads()``; on a machine whose cores are busy one thread gives steadier numbers.

    Returns
    -------
    dict
        ``pattern`` (name), ``height``, ``width``, ``tokens``, ``channels``, ``heads``, ``batch``,
        ``block_size``, ``compile``, ``threads`` (``torch.get_num_threads()``), ``repeats``,
        ``sparsity`` (exact), ``empty_tiles`` (fraction of tiles FlexAttention may skip),
        ``{sparse,dense}_forward_s``, ``{sparse,dense}_train_s``, ``{sparse,dense}_forward_bytes``,
        ``{sparse,dense}_train_bytes``.
    """
    repeats = check_int("repeats", repeats, low=1)
    batch = check_int("batch", batch, low=1)
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    torch.manual_seed(seed)
    sparse = SparseAttention2d(
        channels, channels, heads, pattern, block_size=block_size, compile=compile, **pattern_options
    )
    dense = SparseAttention2d(channels, channels, heads, "dense", block_size=block_size)
    dense.load_state_dict(sparse.state_dict())
    x = torch.randn(batch, channels, height, width, generator=gen)
    p = sparse.pattern_at(height, width)
    n = height * width
    result: dict[str, object] = {
        "pattern": pattern if isinstance(pattern, str) else p.name,
        "height": height,
        "width": width,
        "tokens": n,
        "channels": channels,
        "heads": heads,
        "batch": batch,
        "block_size": block_size,
        "compile": bool(compile),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "sparsity": p.sparsity(n),
        "empty_tiles": p.block_sparsity(n, block_size),
    }
    for name, layer in (("sparse", sparse), ("dense", dense)):

        def forward(layer=layer):
            with torch.no_grad():
                return layer(x)

        def train(layer=layer):
            layer.zero_grad(set_to_none=True)
            layer(x).sum().backward()

        for label, fn in (("forward", forward), ("train", train)):
            fn()  # warm-up: builds and caches the BlockMask, compiles if asked
            result[f"{name}_{label}_s"], _ = median_of(fn, repeats)
            result[f"{name}_{label}_bytes"] = tensor_peak_bytes(fn)
    return result


def format_measurements(rows: Sequence[dict[str, object]]) -> str:
    """A plain-text table of :func:`measure_layer` results (times in ms, memory in MiB)."""
    head = (
        f"{'pattern':<11}{'tokens':>7}{'sparsity':>9}{'empty':>7}"
        f"{'fwd ms':>9}{'dense':>8}{'f+b ms':>9}{'dense':>8}"
        f"{'fwd MiB':>9}{'dense':>8}{'f+b MiB':>9}{'dense':>8}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{r['pattern']!s:<11}{r['tokens']:>7}{r['sparsity']:>9.3f}{r['empty_tiles']:>7.2f}"
            f"{r['sparse_forward_s'] * 1e3:>9.1f}{r['dense_forward_s'] * 1e3:>8.1f}"
            f"{r['sparse_train_s'] * 1e3:>9.1f}{r['dense_train_s'] * 1e3:>8.1f}"
            f"{r['sparse_forward_bytes'] / 2**20:>9.1f}{r['dense_forward_bytes'] / 2**20:>8.1f}"
            f"{r['sparse_train_bytes'] / 2**20:>9.1f}{r['dense_train_bytes'] / 2**20:>8.1f}"
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# One attention call through each backend
# ------------------------------------------------------------------------------------------------
def timing_pattern(n: int) -> ParaphraseFusion:
    """The layout timed by :func:`time_backends`: 8 paraphrases, a question of ``n // 32`` tokens,
    4 separator tokens between paraphrases and ``n // 16`` generated tokens, ``n`` tokens in all."""
    n = check_int("n", n, low=64)
    prefix, separator, generated, k = n // 32, 4, n // 16, 8
    rest = n - prefix - generated - separator * (k - 1)
    lengths = [rest // k] * (k - 1) + [rest - (k - 1) * (rest // k)]
    return paraphrase_fusion(
        lengths=lengths, separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated
    )


def _best_ms(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, torch.Tensor]:
    """Best of ``repeat`` calls after one warm-up call (and, compiled, the compilation), in ms."""
    fn()
    seconds, out = best_of(fn, repeat)
    return 1e3 * seconds, out


def time_backends(
    lengths: Sequence[int] = (256, 512, 1024, 2048, 4096),
    num_heads: int = 4,
    head_dim: int = 16,
    block_size: int = 128,
    repeat: int = 3,
    compile: bool = True,
    seed: int = 0,
    num_threads: int | None = None,
) -> list[dict[str, object]]:
    """Measure one attention call on this machine for each length ``n`` of :func:`timing_pattern`.

    Inputs are float32 ``(1, num_heads, n, head_dim)`` from a seeded generator. Times are the best of
    ``repeat`` calls after one warm-up call, in milliseconds, with ``num_threads`` intra-op threads
    (default: ``torch.get_num_threads()``; restored afterwards); nothing is hard-coded. On a machine
    shared with other work, use ``num_threads=1``: OpenMP threads waiting for a descheduled sibling
    slowed eager ``flex_attention`` 20-30 times on a busy 2-core machine. Each dict holds ``n``,
    ``density`` (allowed fraction of cells), ``tiles_computed`` (non-empty tiles / all tiles at
    ``block_size``), ``threads``, and:

    * ``sdpa_causal_ms``: dense causal SDPA without a mask tensor (the unpatched model; a different
      mask, shown as the floor of dense attention);
    * ``sdpa_mask_ms``: dense SDPA with the boolean ``n x n`` mask (the dense reference);
    * ``flex_eager_ms``: eager ``flex_attention`` with the segment ``BlockMask``;
    * ``flex_compiled_ms`` and ``compile_s`` (first call, compilation included): the same through
      ``torch.compile``; ``None`` when ``compile=False`` or compilation failed, with the error text in
      ``compile_error``;
    * ``eager_max_abs_diff`` and ``compiled_max_abs_diff`` against ``sdpa_mask``.
    """
    if isinstance(lengths, str) or not isinstance(lengths, Sequence) or not lengths:
        raise ValueError("lengths must be a non-empty sequence of integers >= 64")
    sizes = [check_int(f"lengths[{k}]", v, low=64) for k, v in enumerate(lengths)]
    num_heads = check_int("num_heads", num_heads, low=1)
    head_dim = check_int("head_dim", head_dim, low=1)
    block_size = check_int("block_size", block_size, low=1)
    repeat = check_int("repeat", repeat, low=1)
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    previous = torch.get_num_threads()
    threads = previous if num_threads is None else check_int("num_threads", num_threads, low=1)
    rows = []
    try:
        torch.set_num_threads(threads)
        for n in sizes:
            q, k, v = (torch.randn(1, num_heads, n, head_dim, generator=gen) for _ in range(3))
            with torch.no_grad():
                rows.append(_time_one(q, k, v, block_size, repeat, compile))
    finally:
        torch.set_num_threads(previous)
    return rows


def _time_one(q, k, v, block_size: int, repeat: int, compile: bool) -> dict[str, object]:
    """One row of :func:`time_backends`, for inputs of length ``n = q.shape[-2]``."""
    n = q.shape[-2]
    pattern = timing_pattern(n)
    dense = masked_sdpa_fn(pattern.dense(n))
    eager = flex_attention_fn(block_mask(pattern, n, block_size))
    tiles = pattern.blocks(n, block_size)
    row: dict[str, object] = {
        "n": n,
        "density": pattern.density(n),
        "tiles_computed": float(np.count_nonzero(tiles)) / tiles.size,
        "threads": torch.get_num_threads(),
    }
    row["sdpa_causal_ms"], _ = _best_ms(lambda: causal_sdpa(q, k, v), repeat)
    row["sdpa_mask_ms"], ref = _best_ms(lambda: dense(q, k, v), repeat)
    row["flex_eager_ms"], out = _best_ms(lambda: eager(q, k, v), repeat)
    row["eager_max_abs_diff"] = float((out - ref).abs().max())
    row.update(flex_compiled_ms=None, compile_s=None, compiled_max_abs_diff=None, compile_error=None)
    if compile:
        compiled = flex_attention_fn(eager.block_mask, compile=True)
        start = time.perf_counter()
        try:
            compiled(q, k, v)
        except Exception as err:  # report the limitation, keep the other measurements
            row["compile_error"] = f"{type(err).__name__}: {err}"
        else:
            row["compile_s"] = time.perf_counter() - start
            row["flex_compiled_ms"], out = _best_ms(lambda: compiled(q, k, v), repeat)
            row["compiled_max_abs_diff"] = float((out - ref).abs().max())
    return row

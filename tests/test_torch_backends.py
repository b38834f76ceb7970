"""sparsekit.torch.backends: every attention backend against an independent dense reference.

The reference is softmax attention written out (``test_torch_blockmask.dense_attention``: scores,
``-inf`` outside the boolean mask of ``pattern.dense(n)``, zeros for a row with no key). Dense SDPA,
eager FlexAttention and compiled FlexAttention (with SPARSEKIT_COMPILE_TESTS=1) must equal it within
1e-5 in float32; compiled FlexAttention must read sparsekit's tile tables and survive more patterns
than dynamo's recompile limit in one process. Skipped without torch.
"""

from __future__ import annotations

import numpy as np
import pytest
from marks import compiles

import sparsekit as sk

torch = pytest.importorskip("torch")  # the one optional dependency; sparsekit.torch must import

from test_torch_blockmask import TOLERANCE  # noqa: E402  (after the skip: the module needs torch)
from test_torch_blockmask import dense_attention as reference  # noqa: E402

import sparsekit.torch as skt  # noqa: E402
from sparsekit.torch import backends  # noqa: E402


def fusion_layout() -> sk.Pattern:
    """A paraphrase-fusion layout of 85 tokens: a question, three paraphrases, separators, answers."""
    return sk.paraphrase_fusion(
        lengths=[23, 31, 18], separator_tokens=2, prefix_tokens=5, num_generated_tokens=4
    )


def inputs(n: int, seed: int, heads: int = 2, dim: int = 8):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, heads, n, dim, generator=gen) for _ in range(3))


def test_sdpa_backends_equal_the_reference():
    pattern = fusion_layout()
    n = pattern.length
    q, k, v = inputs(n, 0)
    torch.testing.assert_close(
        backends.masked_sdpa_fn(pattern.dense(n))(q, k, v),
        reference(q, k, v, pattern.dense(n)),
        rtol=0,
        atol=TOLERANCE,
    )
    causal = np.tril(np.ones((n, n), dtype=bool))
    torch.testing.assert_close(
        backends.causal_sdpa(q, k, v), reference(q, k, v, causal), rtol=0, atol=TOLERANCE
    )
    # Control: the fusion mask and the causal mask give different outputs, so a swapped mask fails.
    gap = backends.masked_sdpa_fn(pattern.dense(n))(q, k, v) - backends.causal_sdpa(q, k, v)
    assert float(gap.abs().max()) > 0.1


@pytest.mark.parametrize("block_size", [16, 128])
def test_eager_flex_equals_the_reference_and_passes_options(block_size):
    pattern = fusion_layout()
    n = pattern.length
    q, k, v = inputs(n, 1)
    flex = backends.flex_attention_fn(skt.block_mask(pattern, n, block_size=block_size))
    assert flex.block_mask.seq_lengths == (n, n)
    torch.testing.assert_close(flex(q, k, v), reference(q, k, v, pattern.dense(n)), rtol=0, atol=TOLERANCE)
    # Options reach flex_attention: a score_mod that doubles every score is attention at 2 q.
    doubled = flex(q, k, v, score_mod=lambda score, b, h, q_idx, kv_idx: 2 * score)
    torch.testing.assert_close(doubled, reference(2 * q, k, v, pattern.dense(n)), rtol=0, atol=TOLERANCE)


@compiles("compiles a C++ kernel, 3 s warm but 16-24 s with a cold inductor cache on a busy 2-core machine")
def test_compiled_flex_walks_the_tile_tables():
    # Eager flex_attention reads only the mask_mod; the compiled kernel reads sparsekit's tile tables.
    # One compile thread: no pool of worker processes left competing with the other tests. (config.patch,
    # not monkeypatch: restoring the attribute by setattr hides inductor's computed default afterwards.)
    with torch._inductor.config.patch(compile_threads=1):
        pattern = fusion_layout()
        n = pattern.length
        q, k, v = inputs(n, 1)
        dense = reference(q, k, v, pattern.dense(n))
        compiled = backends.flex_attention_fn(skt.block_mask(pattern, n, block_size=16), compile=True)
        torch.testing.assert_close(compiled(q, k, v), dense, rtol=0, atol=TOLERANCE)
        # Declare every tile empty (same mask_mod): eager does not notice, the compiled kernel does.
        emptied = skt.block_mask(pattern, n, block_size=16)
        emptied.kv_num_blocks = torch.zeros_like(emptied.kv_num_blocks)
        emptied.full_kv_num_blocks = torch.zeros_like(emptied.full_kv_num_blocks)
        eager = backends.flex_attention_fn(emptied)(q, k, v)
        torch.testing.assert_close(eager, dense, rtol=0, atol=TOLERANCE)
        gap = backends.flex_attention_fn(emptied, compile=True)(q, k, v) - dense
        assert float(gap.abs().max()) > 0.1


@compiles("compiles 11 C++ kernels, about 30 s warm on a busy 2-core machine")
def test_compiled_flex_survives_more_patterns_than_the_recompile_limit():
    # One more pattern than dynamo's recompile_limit allows one compiled function, in one process: in a
    # single cache the last one raised FailOnRecompileLimitHit. The accumulated limit is lowered so
    # that the bound on regions (here 4) is reached twice: every region is dropped and compiling goes
    # on; the first pattern, dropped meanwhile, compiles again.
    limit = torch._dynamo.config.recompile_limit
    n, bound = 128, 4
    q, k, v = inputs(n, 2)
    caps = torch._dynamo.config.patch(accumulated_recompile_limit=bound * limit)
    with torch._inductor.config.patch(compile_threads=1), caps:
        for window in [*range(0, 2 * limit + 2, 2), 0]:
            pattern = sk.sliding_window(window)
            mask = skt.block_mask(pattern, n, block_size=128)
            out = backends.flex_attention_fn(mask, compile=True)(q, k, v)
            torch.testing.assert_close(out, reference(q, k, v, pattern.dense(n)), rtol=0, atol=TOLERANCE)
            assert 1 <= len(backends._compiled_regions) <= bound


def test_tile_layout_lists_exactly_the_allowed_cells():
    # Independent of the tables: rebuild the n x n mask from the tiles (listed columns, cell masks).
    pattern = sk.longformer(6, 2) | sk.random(2, seed=4)
    n, b = 61, 16
    layout = backends.tile_layout(pattern, n, b, flex=False)
    assert layout.block_mask is None and layout.n == n
    rebuilt = np.zeros((n, n), dtype=bool)
    for tile in layout.tiles:
        cols = tile.cols.numpy()
        allowed = (
            np.ones((tile.stop - tile.start, cols.size), bool) if tile.mask is None else tile.mask.numpy()
        )
        rebuilt[tile.start : tile.stop][:, cols] = allowed
    np.testing.assert_array_equal(rebuilt, pattern.dense(n))
    assert [t.start for t in layout.tiles] == list(range(0, n, b))


def test_tile_attention_backward_equals_autograd_through_the_reference():
    # Float64, with a score-bias table read through an index: gradients of q, k, v and the table.
    pattern = sk.sliding_window(9) | sk.global_tokens(width=1)
    n, b = 40, 16
    layout = backends.tile_layout(pattern, n, b)
    gen = torch.Generator().manual_seed(3)
    q, k, v = (
        torch.randn(2, 2, n, 4, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)
    )
    table = torch.randn(2, 7, generator=gen, dtype=torch.float64, requires_grad=True)

    def index(rows, cols):  # bias by distance, clipped to the table's 7 entries
        return torch.clamp(rows[:, None] - cols[None, :], -3, 3) + 3

    idx = torch.arange(n)
    mask = torch.from_numpy(pattern.dense(n))

    def attend(q, k, v, table):  # the forward as a dense computation (any correct forward will do)
        s = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5 + table[:, index(idx, idx)]
        return torch.softmax(s.masked_fill(~mask, float("-inf")), -1) @ v

    upstream = torch.randn(2, 2, n, 4, generator=gen, dtype=torch.float64)
    ours = torch.autograd.grad(
        (backends.tile_attention(q, k, v, layout, attend, table, index) * upstream).sum(), (q, k, v, table)
    )
    theirs = torch.autograd.grad((attend(q, k, v, table) * upstream).sum(), (q, k, v, table))
    for name, a, e in zip("qkvt", ours, theirs, strict=True):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-10, msg=name)


def test_backends_refuse_bad_input():
    with pytest.raises(ValueError, match="mask"):
        backends.flex_attention_fn(np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="compile"):
        backends.flex_attention_fn(skt.block_mask(sk.causal(), 16, 16), compile="yes")
    with pytest.raises(ValueError, match="2-D boolean"):
        backends.masked_sdpa_fn(np.ones((4, 4)))
    with pytest.raises(ValueError, match="2-D boolean"):
        backends.masked_sdpa_fn(np.ones(4, dtype=bool))

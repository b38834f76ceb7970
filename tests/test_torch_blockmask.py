"""sparsekit.torch: the BlockMask built from sparsekit's block layout equals FlexAttention's own.

For every pattern family and for lengths that are and are not multiples of the block size, the
``BlockMask`` of :func:`sparsekit.torch.blockmask.block_mask` (no ``n x n`` evaluation) must equal
``create_block_mask`` (which evaluates every cell): same partial and full tiles, same index tables,
same dense block picture. ``flex_attention`` with it must equal dense softmax attention under the
boolean mask, within an absolute tolerance of 1e-5 in float32, eager and (with SPARSEKIT_COMPILE_TESTS=1)
compiled. Skipped without torch.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from marks import compiles
from test_segments import allowed_intervals

import sparsekit as sk
from sparsekit.masks.segments import paraphrase_fusion

torch = pytest.importorskip("torch")  # the one optional dependency; sparsekit.torch must import

import torch.nn.attention.flex_attention as flex  # noqa: E402

import sparsekit.torch as skt  # noqa: E402
from sparsekit.torch import backends  # noqa: E402

BLOCK = 16
LENGTHS = (64, 100, 129)
TOLERANCE = 1e-5


def fusion(n: int) -> sk.Pattern:
    """A paraphrase-fusion layout of exactly ``n`` tokens, with uneven paraphrase lengths."""
    prefix, separator, generated, k = 7, 2, 9, 4
    rest = n - prefix - generated - separator * (k - 1)
    lengths = [
        rest // k + (1 if i < rest % k else 0) + (3 if i == 0 else -1 if i == 1 else 0) for i in range(k)
    ]
    lengths[-1] += rest - sum(lengths)
    return paraphrase_fusion(
        lengths=lengths, separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated
    )


def grid(n: int) -> sk.Pattern:
    return {64: sk.axial(8, 8), 100: sk.axial(10, 10), 129: sk.axial(3, 43), 300: sk.axial(15, 20)}[n]


FAMILIES = {
    "causal": lambda n: sk.causal(),
    "strided": lambda n: sk.strided(5, 7),
    "fixed": lambda n: sk.fixed(10, 3),
    "sliding_window": lambda n: sk.sliding_window(21),
    "dilated_sliding_window": lambda n: sk.dilated_sliding_window(12, 3),
    "window": lambda n: sk.window(9),
    "block_local": lambda n: sk.block_local(24),
    "axial": grid,
    "global_tokens": lambda n: sk.global_tokens(indices=[0, 17, n - 1]),
    "random": lambda n: sk.random(5, seed=3),
    "bigbird": lambda n: sk.bigbird(3, 9, 2, seed=1),
    "longformer": lambda n: sk.longformer(16, 3),
    "paraphrase_fusion": fusion,
    "composition": lambda n: (sk.strided(3, 4) | sk.fixed(5)) & ~sk.block_local(32),
}
CASES = [(family, n) for family in sorted(FAMILIES) for n in LENGTHS]


def reference(pattern: sk.Pattern, n: int):
    return flex.create_block_mask(skt.mask_mod(pattern, n), 1, 1, n, n, device="cpu", BLOCK_SIZE=BLOCK)


def valid_prefix(num: torch.Tensor, indices: torch.Tensor) -> list[list[int]]:
    rows = indices.reshape(-1, indices.shape[-1]).tolist()
    return [sorted(row[:k]) for row, k in zip(rows, num.reshape(-1).tolist(), strict=True)]


@pytest.mark.parametrize(("family", "n"), CASES)
def test_block_mask_equals_create_block_mask(family, n):
    pattern = FAMILIES[family](n)
    ours, theirs = skt.block_mask(pattern, n, block_size=BLOCK), reference(pattern, n)
    assert ours.seq_lengths == theirs.seq_lengths == (n, n)
    assert ours.BLOCK_SIZE == theirs.BLOCK_SIZE
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        a_num, b_num = getattr(ours, num), getattr(theirs, num)
        assert a_num.dtype == b_num.dtype == torch.int32
        torch.testing.assert_close(a_num, b_num, rtol=0, atol=0)
        a_idx, b_idx = getattr(ours, idx), getattr(theirs, idx)
        assert a_idx.shape == b_idx.shape
        assert valid_prefix(a_num, a_idx) == valid_prefix(b_num, b_idx)
        torch.testing.assert_close(a_idx, b_idx, rtol=0, atol=0)  # the padding order matches too
    for name in ("q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices"):  # backward tables
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0)
    torch.testing.assert_close(ours.to_dense(), theirs.to_dense(), rtol=0, atol=0)


@pytest.mark.parametrize(("family", "n"), CASES)
def test_block_tables_cover_exactly_the_allowed_cells(family, n):
    # Independent of torch's construction: expand the tiles and compare with the dense mask.
    pattern = FAMILIES[family](n)
    dense = pattern.dense(n)
    tables = skt.block_tables(pattern, n, BLOCK)
    nb = -(-n // BLOCK)
    covered = np.zeros((nb * BLOCK, nb * BLOCK), dtype=bool)
    full = np.zeros_like(covered)
    for prefix, target in (("", covered), ("full_", full)):
        for row in range(nb):
            for col in tables[f"{prefix}kv_indices"][row, : tables[f"{prefix}kv_num_blocks"][row]]:
                target[row * BLOCK : (row + 1) * BLOCK, col * BLOCK : (col + 1) * BLOCK] = True
    assert not (covered & full).any()
    padded = np.zeros_like(covered)
    padded[:n, :n] = dense
    assert not (padded & ~(covered | full)).any()  # every allowed cell lies in a listed tile
    assert padded[full].all()  # full tiles hold only allowed cells


def dense_attention(q, k, v, mask: np.ndarray) -> torch.Tensor:
    scores = (q @ k.transpose(-2, -1)) / q.shape[-1] ** 0.5
    scores = scores.masked_fill(~torch.from_numpy(mask), float("-inf"))
    out = torch.softmax(scores, dim=-1) @ v
    empty = torch.from_numpy(~mask.any(axis=1))[:, None]
    return torch.where(empty, torch.zeros_like(out), out)  # FlexAttention returns 0 for empty rows


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_flex_attention_equals_dense_masked_attention(family):
    n = 100
    pattern = FAMILIES[family](n)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float32) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled
        out = flex.flex_attention(q, k, v, block_mask=skt.block_mask(pattern, n, block_size=BLOCK))
    expected = dense_attention(q, k, v, pattern.dense(n))
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=TOLERANCE)


@pytest.fixture(scope="module")
def compiled_flex():
    """sparsekit's compiled ``flex_attention`` (:func:`sparsekit.torch.backends.flex_attention_fn` with
    ``compile=True``) on one thread and one compile worker; it never runs eagerly.

    Each family's ``mask_mod`` is a new graph: the 14 families are more than dynamo's default
    ``recompile_limit`` (8), which sparsekit's regions per pattern must survive without raising it.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch._inductor.config.patch(compile_threads=1):
            yield lambda q, k, v, block_mask: backends.flex_attention_fn(block_mask, compile=True)(q, k, v)
    finally:
        torch.set_num_threads(previous)


@compiles(
    "compiles one C++ kernel per family: about 60 s in all with a cold inductor cache on a busy "
    "2-core machine (13 s of it one-time set-up, then about 3.5 s a family), 5 s warm"
)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_compiled_flex_attention_equals_dense_masked_attention(family, compiled_flex):
    # The compiled kernel lowers the mask_mod again on tiles of indices (not as eager does): random
    # attention once compiled silently wrong there. n = 300 is not a multiple of the 128 block.
    n = 300
    pattern = FAMILIES[family](n)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float32) for _ in range(3))
    out = compiled_flex(q, k, v, block_mask=skt.block_mask(pattern, n, block_size=128))
    expected = dense_attention(q, k, v, pattern.dense(n))
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize(
    ("pattern", "n"),
    [
        (sk.random(0), 50),
        (sk.random(1, seed=2), 50),
        (sk.random(9, seed=4), 50),
        (sk.random(50, seed=1), 50),  # every key
        (sk.random(128, seed=5), 200),  # the most keys compared one by one
        (sk.random(129, seed=6), 200),  # searched in 11 groups of 12 keys, the last one padded
        (sk.random(150, seed=7), 150),
        (sk.global_tokens(indices=[]), 50),
        (sk.global_tokens(indices=[49]), 50),
        (sk.global_tokens(indices=[0, 1, 2, 30]), 50),
        (sk.random(2, seed=3) | sk.global_tokens(indices=[7]), 50),
    ],
    ids=lambda x: x.name if isinstance(x, sk.Pattern) else str(x),
)
def test_listed_cells_mask_mod_matches_numpy(pattern, n):
    # Random and indexed global tokens evaluate torch tensors elementwise (no reduction): same cells.
    mask = flex.create_mask(skt.mask_mod(pattern, n), 1, 1, n, n, device="cpu")
    np.testing.assert_array_equal(mask[0, 0].numpy(), pattern.dense(n))
    if pattern.family == "global_tokens":  # indices outside [0, n) are never global, as in numpy
        idx = torch.arange(-2, n + 2)
        got = pattern(idx[:, None], idx[None, :]).numpy()
        np.testing.assert_array_equal(got, pattern(idx.numpy()[:, None], idx.numpy()[None, :]))


def test_mask_mod_binds_and_evaluates_tensors():
    p = sk.random(3, seed=5)
    mod = skt.mask_mod(p, 40)
    idx = torch.arange(40)
    got = mod(torch.tensor(0), torch.tensor(0), idx[:, None], idx[None, :])
    np.testing.assert_array_equal(got.numpy(), p.dense(40))
    mask = flex.create_mask(mod, 1, 1, 40, 40, device="cpu")
    np.testing.assert_array_equal(mask[0, 0].numpy(), p.dense(40))


def test_paraphrase_fusion_mask_mod_in_create_mask():
    p = paraphrase_fusion(3, 15, separator_tokens=2, prefix_tokens=4, num_generated_tokens=6)
    mask = flex.create_mask(skt.mask_mod(p, p.length), 1, 1, p.length, p.length, device="cpu")
    np.testing.assert_array_equal(mask[0, 0].numpy(), p.dense(p.length))


def test_block_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="block_size"):
        skt.block_mask(sk.causal(), 64, block_size=0)
    with pytest.raises(ValueError, match="pattern"):
        skt.block_mask("causal", 64)
    with pytest.raises(ValueError, match="n must equal"):
        skt.block_mask(paraphrase_fusion(2, 5), 64)


def test_large_block_mask_is_built_from_tiles():
    # n = 65536 at block 128: 512 x 512 tiles; create_block_mask would evaluate 4.3e9 cells. Reference:
    # each tile's allowed cells from the two key intervals of each row (the layout, written out in
    # test_segments), summed over the tile's rows: empty, full (128 * 128) or partial.
    n, b = 1 << 16, 128
    lengths, separator, prefix = [8000] * 8, 4, 1508
    p = paraphrase_fusion(lengths=lengths, separator_tokens=separator, prefix_tokens=prefix)
    assert p.length == n
    a, start, q = allowed_intervals(lengths, separator, prefix, 0)
    lo, hi = np.arange(0, n, b), np.arange(b, n + 1, b)
    counts = np.empty((n // b, n // b), dtype=np.int64)
    for bi in range(n // b):
        rows = slice(bi * b, bi * b + b)
        overlap = np.clip(np.minimum(hi, a[rows, None]) - lo, 0, None)
        overlap += np.clip(np.minimum(hi, q[rows, None] + 1) - np.maximum(lo, start[rows, None]), 0, None)
        counts[bi] = overlap.sum(axis=0)
    bm = skt.block_mask(p, n)
    for name, chosen in (("", (counts > 0) & (counts < b * b)), ("full_", counts == b * b)):
        num = getattr(bm, f"{name}kv_num_blocks")[0, 0].numpy()
        np.testing.assert_array_equal(num, chosen.sum(axis=1))
        indices = getattr(bm, f"{name}kv_indices")[0, 0].numpy()
        for row in range(0, n // b, 7):
            np.testing.assert_array_equal(np.sort(indices[row, : num[row]]), np.flatnonzero(chosen[row]))

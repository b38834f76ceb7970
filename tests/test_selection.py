"""Content-dependent block selection (MoBA, block_select, Quest and NSA scores) against plain loops.

Every reference below is written from the definition, one query at a time, in Python loops: block
means, scores, ranking with the tie rule, then the allowed cells. The views of the pattern (dense,
row counts, block counts at several tile sizes, the predicate, labels, non-zeros) must match it.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from marks import compiles

import sparsekit as sk


# --------------------------------------------------------------------------------------------------
# References, from the definitions
# --------------------------------------------------------------------------------------------------
def reference_choice(scores, block_size, top_k, causal=True, keep_own=True):
    """Per query: rank the eligible blocks by (score desc, index asc), keep the own block first."""
    n, nb = len(scores), len(scores[0])
    chosen = []
    for i in range(n):
        own = i // block_size
        eligible = [b for b in range(nb) if b <= own or not causal]
        others = [b for b in eligible if not (keep_own and b == own)]
        ranked = sorted(others, key=lambda b: (-scores[i][b], b))
        keep = ranked[: top_k - 1] + [own] if keep_own else ranked[:top_k]
        chosen.append(set(keep))
    return chosen


def reference_mask(chosen, n, block_size, causal=True):
    mask = np.zeros((n, n), dtype=bool)
    for i in range(n):
        for j in range(n):
            mask[i, j] = (j <= i or not causal) and j // block_size in chosen[i]
    return mask


def reference_moba(q, k, block_size, top_k):
    n, d = len(q), len(q[0])
    nb = math.ceil(n / block_size)
    means = []
    for b in range(nb):
        rows = range(b * block_size, min(n, (b + 1) * block_size))
        means.append([sum(k[r][c] for r in rows) / len(rows) for c in range(d)])
    scores = [[sum(q[i][c] * means[b][c] for c in range(d)) for b in range(nb)] for i in range(n)]
    return reference_mask(reference_choice(scores, block_size, top_k), n, block_size)


def check_views(pattern, mask, tiles=(1, 7, 16)):
    """Every view of ``pattern`` agrees with the reference mask, cell by cell."""
    n = mask.shape[0]
    np.testing.assert_array_equal(pattern.dense(n), mask)
    np.testing.assert_array_equal(pattern.row_counts(n), mask.sum(axis=1))
    assert pattern.nnz(n) == mask.sum()
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    np.testing.assert_array_equal(pattern(i, j), mask)
    np.testing.assert_array_equal(pattern.labels(n) > 0, mask)
    np.testing.assert_array_equal(pattern.nonzeros(n), np.argwhere(mask))
    for b in tiles:
        nb = -(-n // b)
        counts = np.zeros((nb, nb), dtype=np.int64)
        np.add.at(counts, (i // b, j // b), mask)
        np.testing.assert_array_equal(pattern.block_counts(n, b), counts)


# --------------------------------------------------------------------------------------------------
# MoBA
# --------------------------------------------------------------------------------------------------
@given(
    n=st.integers(1, 60),
    block_size=st.integers(1, 20),
    top_k=st.integers(1, 8),
    seed=st.integers(0, 2**16),
)
def test_moba_matches_definition(n, block_size, top_k, seed):
    rng = np.random.default_rng(seed)
    q, k = rng.normal(size=(2, n, 3))
    pattern = sk.moba(q, k, block_size, top_k)
    mask = reference_moba(q.tolist(), k.tolist(), block_size, top_k)
    check_views(pattern, mask, tiles=(1, 2, 4, 7, block_size))


@given(
    n=st.integers(1, 50),
    block_size=st.integers(1, 12),
    top_k=st.integers(1, 6),
    values=st.lists(st.integers(-2, 2), min_size=100, max_size=100),
)
def test_moba_ties_from_small_integers(n, block_size, top_k, values):
    # One channel of small integers: many block means are exactly equal, so the tie rule decides.
    q = np.array([values[i % 50] for i in range(n)], dtype=float)[:, None]
    k = np.array([values[50 + i % 50] for i in range(n)], dtype=float)[:, None]
    pattern = sk.moba(q, k, block_size, top_k)
    check_views(pattern, reference_moba(q.tolist(), k.tolist(), block_size, top_k), tiles=(5,))


def test_moba_constructed_tie_goes_to_the_lower_block():
    block, n = 8, 44  # the last block holds 4 keys
    k = np.zeros((n, 2))
    k[: 3 * block] = [1.0, 2.0]  # blocks 0, 1 and 2 have the same mean
    k[3 * block : 4 * block] = [-1.0, 0.0]
    q = np.ones((n, 2))
    pattern = sk.moba(q, k, block, top_k=3)
    # Row 43 (block 5): own block, then the two lowest of the three tied best blocks.
    assert set(np.flatnonzero(pattern.chosen[43])) == {0, 1, 5}
    # Row 20 (block 2): own block 2, then blocks 0 and 1.
    assert set(np.flatnonzero(pattern.chosen[20])) == {0, 1, 2}
    assert pattern.row_counts(n)[43] == 2 * block + 4


def test_moba_top_k_beyond_the_blocks_is_causal_and_one_is_block_local():
    rng = np.random.default_rng(5)
    q, k = rng.normal(size=(2, 50, 4))
    np.testing.assert_array_equal(sk.moba(q, k, 8, 100).dense(50), sk.causal().dense(50))
    local = sk.block_local(8) & sk.causal()
    np.testing.assert_array_equal(sk.moba(q, k, 8, 1).dense(50), local.dense(50))


def test_moba_block_layout_at_length_4096():
    # The layout comes from prefix sums over the table; the reference sums the dense mask per tile.
    rng = np.random.default_rng(1)
    n, block = 4096, 256
    q, k = rng.normal(size=(2, n, 16)).astype(np.float32)
    pattern = sk.moba(q, k, block, 3)
    dense = pattern.dense(n)
    counts = dense.reshape(16, block, 16, block).sum(axis=(1, 3))
    np.testing.assert_array_equal(pattern.block_counts(n, block), counts)
    # Each query keeps min(3, own + 1) blocks: the layout's tiles hold exactly those rows.
    assert (pattern.chosen.sum(axis=1) == np.minimum(3, np.arange(n) // block + 1)).all()


@pytest.mark.parametrize("cells", [1, 40, 200])
@pytest.mark.parametrize(("n", "block_size", "causal"), [(61, 7, True), (50, 16, False), (33, 40, True)])
def test_views_in_small_chunks_of_rows(monkeypatch, cells, n, block_size, causal):
    # Long sequences choose and count in chunks of rows; tiny chunks exercise every boundary.
    import sparsekit.masks.selection as selection

    monkeypatch.setattr(selection, "_CHUNK_CELLS", cells)
    rng = np.random.default_rng(cells + n)
    nb = -(-n // block_size)
    scores = rng.integers(-2, 3, size=(n, nb)).astype(float)
    pattern = sk.block_select(scores, block_size, 3, causal=causal)
    chosen = reference_choice(scores.tolist(), block_size, 3, causal, causal)
    check_views(pattern, reference_mask(chosen, n, block_size, causal), tiles=(1, 5, block_size, 64))


def test_moba_combines_with_static_patterns():
    # NSA-style: the chosen blocks OR a causal sliding window; MoBA AND a window.
    rng = np.random.default_rng(9)
    q, k = rng.normal(size=(2, 70, 4))
    chosen = sk.moba(q, k, 16, 2)
    window = sk.sliding_window(10) & sk.causal()
    for combined, expected in (
        (chosen | window, chosen.dense(70) | window.dense(70)),
        (chosen & sk.sliding_window(40), chosen.dense(70) & sk.sliding_window(40).dense(70)),
    ):
        check_views(combined, expected, tiles=(8, 16))


# --------------------------------------------------------------------------------------------------
# block_select from any score table
# --------------------------------------------------------------------------------------------------
@given(
    n=st.integers(1, 50),
    block_size=st.integers(1, 16),
    top_k=st.integers(1, 7),
    causal=st.booleans(),
    keep_own=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_block_select_matches_definition(n, block_size, top_k, causal, keep_own, seed):
    rng = np.random.default_rng(seed)
    nb = -(-n // block_size)
    scores = rng.integers(-2, 3, size=(n, nb)).astype(float)  # many ties
    scores[rng.random((n, nb)) < 0.1] = -np.inf
    scores[rng.random((n, nb)) < 0.1] = np.inf
    pattern = sk.block_select(scores, block_size, top_k, causal=causal, keep_own=keep_own)
    chosen = reference_choice(scores.tolist(), block_size, top_k, causal, keep_own)
    check_views(pattern, reference_mask(chosen, n, block_size, causal), tiles=(3, block_size))


def test_block_select_keep_own_follows_causal_by_default():
    scores = np.zeros((12, 3))
    scores[:, 0] = 5.0
    assert sk.block_select(scores, 4, 1).chosen[11].tolist() == [False, False, True]
    assert sk.block_select(scores, 4, 1, causal=False).chosen[11].tolist() == [True, False, False]


# --------------------------------------------------------------------------------------------------
# Quest and NSA score tables
# --------------------------------------------------------------------------------------------------
def test_quest_scores_are_the_page_bounds_of_the_cache_at_each_step():
    rng = np.random.default_rng(2)
    n, d, page = 37, 5, 8
    q, k = rng.normal(size=(2, n, d))
    scores = sk.quest_scores(q, k, page)
    for t in range(n):
        for p in range(-(-n // page)):
            keys = [k[j] for j in range(p * page, min(n, (p + 1) * page)) if j <= t]
            if not keys:
                assert scores[t, p] == -np.inf
                continue
            bound = sum(
                max(q[t, c] * max(x[c] for x in keys), q[t, c] * min(x[c] for x in keys)) for c in range(d)
            )
            assert scores[t, p] == pytest.approx(bound, rel=1e-12, abs=1e-12)
            # The bound holds: no cached key of the page scores higher.
            assert max(float(q[t] @ x) for x in keys) <= bound + 1e-12


def test_quest_rule_matches_a_decode_loop():
    # Quest at decode step t: pages of the cache ranked by bound, top K kept (none forced).
    rng = np.random.default_rng(3)
    n, d, page, top_k = 70, 4, 8, 3
    q, k = rng.normal(size=(2, n, d))
    pattern = sk.block_select(sk.quest_scores(q, k, page), page, top_k, keep_own=False)
    for t in range(n):
        bounds = {}
        for p in range(t // page + 1):
            cache = k[p * page : min(t + 1, (p + 1) * page)]
            bounds[p] = sum(max(q[t, c] * cache[:, c].max(), q[t, c] * cache[:, c].min()) for c in range(d))
        best = sorted(bounds, key=lambda p: (-bounds[p], p))[:top_k]
        assert set(np.flatnonzero(pattern.chosen[t])) == set(best)


def test_nsa_scores_follow_equations_7_to_9():
    rng = np.random.default_rng(4)
    n, d, lc, stride, lp = 150, 3, 8, 4, 16
    q, k = rng.normal(size=(2, n, d))
    scores = sk.nsa_scores(q, k, compress_block=lc, stride=stride, select_block=lp)
    for t in range(n):
        # Eq. 7: compression blocks k[i*stride : i*stride + l] with i <= floor((t + 1 - l) / stride).
        count = (t + 1 - lc) // stride + 1 if t + 1 >= lc else 0
        kcmp = [k[i * stride : i * stride + lc].mean(axis=0) for i in range(count)]
        logits = [float(q[t] @ x) for x in kcmp]
        top = max(logits, default=0.0)
        weights = [math.exp(v - top) for v in logits]
        p_cmp = [w / sum(weights) for w in weights]  # Eq. 8
        for j in range(-(-n // lp)):  # Eq. 9, indices outside p_cmp contribute nothing
            terms = [
                p_cmp[lp // stride * j - m - m2]
                for m in range(lp // stride)
                for m2 in range(lc // stride)
                if 0 <= lp // stride * j - m - m2 < count
            ]
            assert scores[t, j] == pytest.approx(sum(terms), rel=1e-12, abs=1e-15)


def test_nsa_equal_blocking_is_the_compression_softmax():
    # With l' = l = d, Eq. 9 reduces to p_slc = p_cmp (the paper's first case).
    rng = np.random.default_rng(6)
    q, k = rng.normal(size=(2, 64, 4))
    scores = sk.nsa_scores(q, k, compress_block=16, stride=16, select_block=16)
    means = k.reshape(4, 16, 4).mean(axis=1)
    t = 63
    logits = q[t] @ means.T
    np.testing.assert_allclose(scores[t], np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum())
    assert (scores[14] == 0).all() and scores[15, 0] == pytest.approx(1.0)  # block 0 ends at key 15


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda q: sk.moba(q, q, 0, 2), "block_size must be an integer >= 1"),
        (lambda q: sk.moba(q, q, 4, 0), "top_k must be an integer >= 1"),
        (lambda q: sk.moba(q, q, 4.5, 2), "block_size must be an integer >= 1"),
        (lambda q: sk.moba(q, q[:5], 4, 2), "q and k must have the same shape"),
        (lambda q: sk.moba(q[:, 0], q[:, 0], 4, 2), "q must be a 2-D array"),
        (lambda q: sk.moba(q[:0], q[:0], 4, 2), r"q.shape\[0\] \(n\) must be an integer >= 1"),
        (lambda q: sk.moba(np.where(q > 0, np.nan, q), q, 4, 2), "q and k must hold finite numbers"),
        (lambda q: sk.block_select(np.zeros((10, 2)), 4, 1), r"scores must have shape .* = \(10, 3\)"),
        (lambda q: sk.block_select(np.full((4, 1), np.nan), 4, 1), "scores must not hold NaN"),
        (lambda q: sk.block_select(np.zeros((4, 1)), 4, -1), "top_k must be an integer >= 1"),
        (lambda q: sk.quest_scores(q, q, 0), "page_size must be an integer >= 1"),
        (lambda q: sk.nsa_scores(q, q, 12, 8, 16), "compress_block must be a multiple of stride=8"),
        (lambda q: sk.nsa_scores(q, q, 16, 8, 8), "select_block must be an integer >= 16"),
        (lambda q: sk.moba(q, q, 4, 2).dense(11), "n must equal the number of query rows 10"),
    ],
)
def test_bad_input_names_the_parameter_and_range(call, message):
    q = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match=message):
        call(q)


# --------------------------------------------------------------------------------------------------
# torch: inputs, predicate, BlockMask and FlexAttention
# --------------------------------------------------------------------------------------------------
def test_torch_and_numpy_inputs_agree():
    torch = pytest.importorskip("torch")
    gen = torch.Generator().manual_seed(0)
    q, k = torch.randn(2, 90, 8, generator=gen)
    from_torch = sk.moba(q, k, 16, 3)
    from_numpy = sk.moba(q.numpy(), k.numpy(), 16, 3)
    np.testing.assert_array_equal(from_torch.chosen, from_numpy.chosen)
    np.testing.assert_array_equal(sk.quest_scores(q, k, 16), sk.quest_scores(q.numpy(), k.numpy(), 16))
    np.testing.assert_array_equal(
        sk.nsa_scores(q, k, 8, 4, 16), sk.nsa_scores(q.numpy(), k.numpy(), 8, 4, 16)
    )
    table = torch.randn(90, 6, generator=gen)
    np.testing.assert_array_equal(
        sk.block_select(table, 16, 2).chosen, sk.block_select(table.numpy(), 16, 2).chosen
    )


@pytest.mark.parametrize("n", [64, 100])
def test_block_mask_and_flex_attention_equal_the_dense_mask(n):
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    import sparsekit.torch as skt

    rng = np.random.default_rng(7)
    q, k = rng.normal(size=(2, n, 8))
    pattern = sk.moba(q, k, 16, 2)
    dense = pattern.dense(n)
    mask = flex.create_mask(skt.mask_mod(pattern, n), 1, 1, n, n, device="cpu")
    np.testing.assert_array_equal(mask[0, 0].numpy(), dense)
    ours = skt.block_mask(pattern, n, block_size=16)
    theirs = flex.create_block_mask(skt.mask_mod(pattern, n), 1, 1, n, n, device="cpu", BLOCK_SIZE=16)
    torch.testing.assert_close(ours.to_dense(), theirs.to_dense(), rtol=0, atol=0)
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        torch.testing.assert_close(getattr(ours, name), getattr(theirs, name), rtol=0, atol=0)
    gen = torch.Generator().manual_seed(0)
    qt, kt, vt = (torch.randn(1, 1, n, 8, generator=gen) for _ in range(3))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled
        out = flex.flex_attention(qt, kt, vt, block_mask=ours)
    scores = (qt @ kt.transpose(-2, -1)) / 8**0.5
    expected = torch.softmax(scores.masked_fill(~torch.from_numpy(dense), float("-inf")), -1) @ vt
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


@compiles("compiles a C++ FlexAttention kernel (tens of seconds on a busy 2-core machine)")
def test_compiled_flex_attention_with_chosen_blocks_equals_dense():
    # The compiled kernel lowers the mask_mod again on tiles of indices: the table lookup must stay
    # elementwise. n = 300 is not a multiple of the 128 block; the last MoBA block is partial.
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    import sparsekit.torch as skt

    n = 300
    rng = np.random.default_rng(8)
    q, k = rng.normal(size=(2, n, 8))
    pattern = sk.moba(q, k, 64, 2)
    gen = torch.Generator().manual_seed(0)
    qt, kt, vt = (torch.randn(1, 2, n, 8, generator=gen) for _ in range(3))
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch._inductor.config.patch(compile_threads=1):
            compiled = torch.compile(flex.flex_attention, dynamic=False)
            out = compiled(qt, kt, vt, block_mask=skt.block_mask(pattern, n, block_size=128))
    finally:
        torch.set_num_threads(previous)
    scores = (qt @ kt.transpose(-2, -1)) / 8**0.5
    mask = torch.from_numpy(pattern.dense(n))
    expected = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1) @ vt
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)

"""Patterns since 2023 against plain double loops written from the issue's definitions.

Each reference below restates the rule of one factory cell by cell with Python integers, without
sparsekit; ``check_views`` then compares every view (dense, labels, row counts, nnz, tile counts at
several block sizes, non-zeros, the predicate) with it.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import brute_force
from test_patterns import check_views

import sparsekit as sk


def sinks_rule(sinks, window):
    return lambda q, kv: kv <= q and (kv < sinks or q - kv < window)


def prefix_rule(prefix):
    return lambda q, kv: kv < prefix or kv <= q


def chunked_rule(chunk):
    return lambda q, kv: kv <= q and q // chunk == kv // chunk


def document_rule(lengths, inner):
    def doc(i):
        start = 0
        for d, size in enumerate(lengths):
            if i < start + size:
                return d, start
            start += size
        raise AssertionError(i)

    def rule(q, kv):
        (dq, sq), (dk, sk_) = doc(q), doc(kv)
        return dq == dk and inner(q - sq, kv - sk_)

    return rule


def natten_rule(height, width, kh, kw):
    def rule(q, kv):
        rq, cq = divmod(q, width)
        rk, ck = divmod(kv, width)
        cr = min(max(rq, kh // 2), height - 1 - kh // 2)
        cc = min(max(cq, kw // 2), width - 1 - kw // 2)
        return abs(cr - rk) <= kh // 2 and abs(cc - ck) <= kw // 2

    return rule


def tree_rule(parents, prefix):
    def ancestors_or_self(t):
        while t != -1:
            yield t
            t = parents[t]

    def rule(q, kv):
        if q < prefix:
            return kv <= q
        return kv < prefix or (kv >= prefix and kv - prefix in set(ancestors_or_self(q - prefix)))

    return rule


def bigbird_blocks_rule(block, window_blocks, global_blocks, random_columns):
    def rule(q, kv):
        bq, bk = q // block, kv // block
        return (
            bq < global_blocks
            or bk < global_blocks
            or abs(bq - bk) <= window_blocks // 2
            or bk in random_columns.get(bq, ())
        )

    return rule


small = st.integers(0, 9)
lengths = st.integers(1, 40)


@given(small, st.integers(1, 12), lengths)
def test_attention_sinks(sinks, window, n):
    p = sk.attention_sinks(sinks, window)
    expected = brute_force(sinks_rule(sinks, window), n)
    check_views(p, n, expected)
    labels = p.labels(n)
    for q, kv in np.argwhere(expected):
        want = 1 if q == kv else 2 if q - kv < window else 3  # sinks: the global-column code
        assert labels[q, kv] == want
    np.testing.assert_array_equal(p.row_counts(n), np.minimum(np.arange(1, n + 1), sinks + window))


@given(st.integers(1, 12), lengths)
def test_causal_window_is_hugging_faces_sliding_window(window, n):
    expected = brute_force(lambda q, kv: kv <= q and kv > q - window, n)  # masking_utils' overlay
    check_views(sk.causal_window(window), n, expected)


@given(lengths, st.data())
def test_prefix_lm(n, data):
    prefix = data.draw(st.integers(0, n))
    p = sk.prefix_lm(prefix)
    expected = brute_force(prefix_rule(prefix), n)
    check_views(p, n, expected)
    labels = p.labels(n)
    for q, kv in np.argwhere(expected):
        assert labels[q, kv] == (1 if q == kv else 2 if kv < q else 3)


@given(st.integers(1, 12), lengths)
def test_chunked(chunk, n):
    p = sk.chunked(chunk)
    check_views(p, n, brute_force(chunked_rule(chunk), n))
    assert set(np.unique(p.labels(n))) <= {0, 1, 2}


INNER = {
    "causal": (None, lambda q, kv: kv <= q),
    "sliding_window": (sk.sliding_window(4), lambda q, kv: abs(q - kv) <= 2),
    "prefix_lm": (sk.prefix_lm(1), lambda q, kv: kv < 1 or kv <= q),
    "strided": (sk.strided(2, 3), lambda q, kv: kv <= q and (q - kv < 2 or (q - kv) % 3 == 0)),
}


@pytest.mark.parametrize("inner", sorted(INNER))
def test_document(inner):
    pattern, rule = INNER[inner]

    @given(st.lists(st.integers(1, 9), min_size=1, max_size=6))
    def run(sizes):
        p = sk.document(sizes, pattern)
        n = sum(sizes)
        expected = brute_force(document_rule(sizes, rule), n)
        check_views(p, n, expected)
        if inner == "causal":
            for q, kv in np.argwhere(expected):
                assert p.labels(n)[q, kv] == (1 if q == kv else 2)

    run()


def test_document_of_length_one_tokens_is_the_diagonal():
    np.testing.assert_array_equal(sk.document([1] * 7).dense(7), np.eye(7, dtype=bool))
    sizes = [1, 3, 1, 1]
    check_views(sk.document(sizes), 6, brute_force(document_rule(sizes, lambda q, kv: kv <= q), 6))


@given(st.integers(1, 7), st.integers(1, 7), st.data())
def test_neighborhood_2d_on_any_canvas(height, width, data):
    kh = data.draw(st.sampled_from(list(range(1, height + 1, 2))))
    kw = data.draw(st.sampled_from(list(range(1, width + 1, 2))))
    p = sk.neighborhood_2d(height, width, kh, kw)
    n = height * width
    expected = brute_force(natten_rule(height, width, kh, kw), n)
    check_views(p, n, expected)
    np.testing.assert_array_equal(expected.sum(axis=1), np.full(n, kh * kw))  # exactly kh * kw keys


def test_neighborhood_2d_non_square_canvas_differs_from_width_clamped_rows():
    # attention-gym's version clamps the grid row against the canvas width; on a 3 x 7 canvas with a
    # 3 x 3 kernel the bottom rows then lose keys. The definition keeps 9 keys everywhere.
    height, width, k = 3, 7, 3
    p = sk.neighborhood_2d(height, width, k, k)
    counts = p.row_counts(height * width)
    assert (counts == k * k).all()

    def width_clamped(q, kv):
        row, col = divmod(q, width)
        cr = min(max(row, k // 2), width - 1 - k // 2)  # the row clamped against the width
        cc = min(max(col, k // 2), width - 1 - k // 2)
        return abs(cr - kv // width) <= k // 2 and abs(cc - kv % width) <= k // 2

    assert (brute_force(width_clamped, height * width).sum(axis=1) < k * k).any()


def random_tree(draw, size):
    return [draw(st.integers(-1, t - 1)) for t in range(size)]


@given(st.integers(0, 8), st.integers(0, 14), st.data())
def test_tree(prefix, size, data):
    if prefix + size == 0:
        return
    parents = random_tree(data.draw, size)
    p = sk.tree(parents, prefix)
    n = prefix + size
    expected = brute_force(tree_rule(parents, prefix), n)
    check_views(p, n, expected)
    labels = p.labels(n)
    for q, kv in np.argwhere(expected):
        assert labels[q, kv] == (1 if q == kv else 2 if kv < prefix else 3)


def test_deep_tree():
    # A chain of depth 5 with side branches: node 6 sees nodes 5, 4, 3, 1, 0 and the prefix.
    parents = [-1, 0, 0, 1, 3, 4, 5, 2, -1]
    p = sk.tree(parents, 4)
    expected = brute_force(tree_rule(parents, 4), 13)
    check_views(p, 13, expected)
    assert p.depth.max() == 5
    assert np.flatnonzero(expected[4 + 6]).tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9, 10]
    assert p.row_counts(13)[4 + 6] == 4 + 5 + 1


@given(
    st.integers(1, 6), st.integers(0, 3), st.integers(1, 5), st.integers(0, 2), st.integers(0, 99), lengths
)
def test_bigbird_blocks(block, random_blocks, window_blocks, global_blocks, seed, n):
    nb = -(-n // block)
    p = sk.bigbird_blocks(block, random_blocks, window_blocks, global_blocks, seed=seed)
    if global_blocks > nb:
        with pytest.raises(ValueError, match="global_blocks"):
            p.dense(n)
        return
    table = p.bind(n).table
    random_columns = {bq: {int(c) for c in row if c >= 0} for bq, row in enumerate(table)}
    # The draw itself: distinct further columns, as many as asked for or every one that is left.
    for bq in range(nb):
        taken = random_columns[bq]
        if bq < global_blocks:
            assert not taken
            continue
        free = {bk for bk in range(global_blocks, nb) if abs(bq - bk) > window_blocks // 2}
        assert taken <= free and len(taken) == min(random_blocks, len(free))
    expected = brute_force(bigbird_blocks_rule(block, window_blocks, global_blocks, random_columns), n)
    check_views(p, n, expected)
    labels = p.labels(n)
    for q, kv in np.argwhere(expected):
        in_window = abs(q // block - kv // block) <= window_blocks // 2
        assert labels[q, kv] == (1 if q == kv else 2 if in_window else 3)
    again = sk.bigbird_blocks(block, random_blocks, window_blocks, global_blocks, seed=seed)
    np.testing.assert_array_equal(again.dense(n), expected)  # reproducible from (seed, n)


def test_bigbird_blocks_random_columns_are_uniform():
    p = sk.bigbird_blocks(1, 2, 1, 0, seed=7).bind(200)
    hits = np.bincount(p.table.ravel(), minlength=200)
    # Every row draws 2 of its 199 other columns: about 2 hits per column; a generous chi-square bound.
    chi2 = ((hits - 2) ** 2 / 2).sum()
    assert chi2 < 290  # 199 degrees of freedom: the 99.99th percentile is about 280


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sk.attention_sinks(-1, 4), "sinks"),
        (lambda: sk.attention_sinks(2, 0), "window"),
        (lambda: sk.causal_window(0), "window"),
        (lambda: sk.prefix_lm(-1), "prefix"),
        (lambda: sk.prefix_lm(9).dense(8), "prefix"),
        (lambda: sk.chunked(0), "chunk"),
        (lambda: sk.document([]), "lengths"),
        (lambda: sk.document([3, 0]), r"lengths\[1\]"),
        (lambda: sk.document("abc"), "lengths"),
        (lambda: sk.document([2, 3], inner="causal"), "inner"),
        (lambda: sk.document([2, 3], inner=sk.random(1)), "inner"),
        (lambda: sk.document([2, 3]).dense(6), r"sum\(lengths\) = 5"),
        (lambda: sk.neighborhood_2d(0, 4, 1, 1), "height"),
        (lambda: sk.neighborhood_2d(4, 4, 2, 1), "kernel_height"),
        (lambda: sk.neighborhood_2d(4, 4, 3, 5), "kernel_width"),
        (lambda: sk.neighborhood_2d(4, 5, 3, 3).dense(21), "height \\* width"),
        (lambda: sk.tree([0], 3), r"parents\[0\]"),
        (lambda: sk.tree([-1, 2, 0], 3), r"parents\[1\]"),
        (lambda: sk.tree([], 0), "prefix"),
        (lambda: sk.tree([-1, 0], 3).dense(4), r"prefix \+ len\(parents\) = 5"),
        (lambda: sk.bigbird_blocks(0, 1, 1, 1), "block_size"),
        (lambda: sk.bigbird_blocks(4, -1, 1, 1), "random_blocks"),
        (lambda: sk.bigbird_blocks(4, 1, 0, 1), "window_blocks"),
        (lambda: sk.bigbird_blocks(4, 1, 1, -1), "global_blocks"),
        (lambda: sk.bigbird_blocks(4, 1, 1, 1, seed=-1), "seed"),
    ],
)
def test_bad_input_names_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()


LARGE = {
    "attention_sinks": sk.attention_sinks(4, 1024),
    "prefix_lm": sk.prefix_lm(3000),
    "chunked": sk.chunked(8192),
    "document": sk.document([1000, 1, 70000, 30000] + [1] * 30071),
    "neighborhood_2d": sk.neighborhood_2d(256, 512, 7, 9),
    "tree": sk.tree([-1] + [t // 2 for t in range(1, 2047)], 131072 - 2047),
    "bigbird_blocks": sk.bigbird_blocks(64, 3, 3, 2, seed=0),
}


@pytest.mark.parametrize("family", sorted(LARGE))
def test_counts_at_large_n_agree_with_a_row_sample(family):
    # Exact counts without the n x n mask; a few rows evaluated by the predicate must agree.
    n = 131072
    p = LARGE[family].bind(n)
    counts = p.row_counts(n)
    rows = np.array([0, 1, 2999, 3000, 65535, 70000, n - 2048, n - 1])
    cols = np.arange(n)
    np.testing.assert_array_equal(p.predicate(rows[:, None], cols[None, :]).sum(axis=1), counts[rows])
    assert p.nnz(n) == int(counts.sum())
    layout = p.blocks(n, 128)
    assert layout.shape == (1024, 1024)
    tiles = p.block_counts(n, 128)
    assert int(tiles.sum()) == p.nnz(n)
    np.testing.assert_array_equal(tiles.sum(axis=1), counts.reshape(1024, 128).sum(axis=1))


def test_document_binds_a_length_dependent_inner_rule_to_its_documents():
    # Random attention drawn once for the common length 5; axial on 2 x 3 grids of 6 tokens.
    p = sk.document([5, 5, 5], sk.random(2, seed=3))
    table = sk.random(2, seed=3).bind(5).table
    expected = brute_force(document_rule([5, 5, 5], lambda q, kv: kv in set(table[q].tolist())), 15)
    check_views(p, 15, expected)
    grids = sk.document([6, 6], sk.axial(2, 3))
    axial = lambda q, kv: q // 3 == kv // 3 or q % 3 == kv % 3  # noqa: E731
    check_views(grids, 12, brute_force(document_rule([6, 6], axial), 12))


@pytest.mark.parametrize(
    "pattern", [sk.chunked(7), sk.causal_window(5), sk.attention_sinks(3, 4), sk.prefix_lm(10)], ids=str
)
@pytest.mark.parametrize("n", [10, 20, 97, 130, 261])
def test_block_summary_matches_the_layout(pattern, n):
    for b in (4, 16, 30):
        layout = pattern.blocks(n, b)
        summary = pattern.block_summary(n, b)
        assert (summary["empty"], summary["partial"], summary["full"]) == tuple(
            int((layout == k).sum()) for k in range(3)
        )

"""Paraphrase fusion against a brute-force reference, and the properties the pipeline relies on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import brute_force, brute_force_labels
from test_patterns import check_views

from sparsekit.masks.segments import paraphrase_fusion


def token_kinds(lengths, separator, prefix, generated) -> list[tuple[str, int]]:
    """(kind, span number) of every token, written out one token at a time."""
    tokens = [("prefix", 0)] * prefix
    span = 1
    for k, size in enumerate(lengths):
        if k and separator:
            tokens += [("separator", span)] * separator
            span += 1
        tokens += [("paraphrase", span)] * size
        span += 1
    return tokens + [("generated", span)] * generated


def rule(lengths, separator, prefix, generated):
    kinds = token_kinds(lengths, separator, prefix, generated)

    def allowed(i: int, j: int) -> bool:
        if j > i:
            return False
        if kinds[i][0] == "generated" or kinds[j][0] == "prefix":
            return True
        return kinds[i][1] == kinds[j][1]

    return allowed, len(kinds)


layouts = st.fixed_dictionaries(
    {
        "lengths": st.lists(st.integers(1, 7), min_size=1, max_size=5),
        "separator_tokens": st.integers(0, 3),
        "prefix_tokens": st.integers(0, 5),
        "num_generated_tokens": st.integers(0, 6),
    }
)


@given(layouts)
def test_matches_brute_force(layout):
    p = paraphrase_fusion(**layout)
    allowed, n = rule(
        layout["lengths"], layout["separator_tokens"], layout["prefix_tokens"], layout["num_generated_tokens"]
    )
    assert p.length == n
    expected = brute_force(allowed, n)
    check_views(p, n, expected)
    counts = p.row_counts(n)
    assert counts.min() >= 1  # every row attends at least to itself: softmax is never undefined
    assert expected.diagonal().all()


@given(layouts)
def test_labels_name_the_kind_of_attention(layout):
    # Cell by cell: 1 the diagonal, 3 fusion (a generated query), 2 isolated segment attention.
    allowed, n = rule(
        layout["lengths"], layout["separator_tokens"], layout["prefix_tokens"], layout["num_generated_tokens"]
    )
    kinds = token_kinds(
        layout["lengths"], layout["separator_tokens"], layout["prefix_tokens"], layout["num_generated_tokens"]
    )

    def label(i: int, j: int) -> int:
        if not allowed(i, j):
            return 0
        return 1 if i == j else 3 if kinds[i][0] == "generated" else 2

    np.testing.assert_array_equal(paraphrase_fusion(**layout).labels(n), brute_force_labels(label, n))


@pytest.mark.parametrize(
    ("k", "size", "separator", "prefix", "generated"),
    [(3, 15, 0, 0, 5), (5, 25, 1, 0, 10), (5, 50, 3, 12, 20), (4, 30, 3, 0, 10), (1, 4, 0, 0, 0)],
)
def test_isolation_and_fusion(k, size, separator, prefix, generated):
    p = paraphrase_fusion(
        k, size, separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated
    )
    n = p.length
    assert n == prefix + k * size + separator * (k - 1) + generated
    dense = p.dense(n)
    rows, cols = np.nonzero(dense)
    assert np.count_nonzero(cols > rows) == 0  # zero causal violations
    ids = p.segment_ids()
    gen = p.generation_start
    enc = dense[:gen, :gen]
    er, ec = np.nonzero(enc)
    cross = (ids[er] != ids[ec]) & (ec >= prefix)  # outside its own span and outside the shared prefix
    assert np.count_nonzero(cross) == 0  # zero cross-segment cells while encoding
    paraphrase = np.zeros(n, dtype=bool)
    for span in p.spans("paraphrase"):
        paraphrase[span.start : span.stop] = True
    pr = paraphrase[:gen]
    between = enc[np.ix_(pr, pr)] & (ids[:gen][pr][:, None] != ids[:gen][pr][None, :])
    assert not between.any()  # no paraphrase sees another one
    if generated:
        # The first generated token attends to every earlier position: all k paraphrases, fused.
        first = dense[gen]
        assert first[: gen + 1].all() and not first[gen + 1 :].any()
        assert int(first.sum()) == gen + 1  # the seed's "50/50" check
        for span in p.spans("paraphrase"):
            assert first[span.start : span.stop].all()


def test_layout_and_helpers():
    p = paraphrase_fusion(lengths=[3, 5], separator_tokens=2, prefix_tokens=4, num_generated_tokens=3)
    assert [(s.kind, s.index, s.start, s.stop) for s in p.layout] == [
        ("prefix", 0, 0, 4),
        ("paraphrase", 0, 4, 7),
        ("separator", 0, 7, 9),
        ("paraphrase", 1, 9, 14),
        ("generated", 0, 14, 17),
    ]
    assert p.length == 17 and p.generation_start == 14 and p.prefix_tokens == 4
    assert [s.length for s in p.spans("paraphrase")] == [3, 5]
    np.testing.assert_array_equal(p.segment_ids(), np.repeat(np.arange(5), [4, 3, 2, 5, 3]))
    assert list(p.kinds()[[0, 4, 7, 9, 14]]) == [
        "prefix",
        "paraphrase",
        "separator",
        "paraphrase",
        "generated",
    ]
    assert p.name.startswith("paraphrase_fusion(lengths=(3, 5)")
    with pytest.raises(ValueError, match="kind"):
        p.spans("question")


def test_torch_tensors_and_indices_past_the_layout():
    torch = pytest.importorskip("torch")
    p = paraphrase_fusion(3, 6, separator_tokens=1, prefix_tokens=2, num_generated_tokens=4)
    n = p.length
    idx = torch.arange(n)
    out = p(idx[:, None], idx[None, :])
    assert out.dtype == torch.bool
    np.testing.assert_array_equal(out.numpy(), p.dense(n))
    for i, j in [(0, 0), (9, 3), (3, 9), (n - 1, 0)]:
        assert bool(p(torch.tensor(i), torch.tensor(j))) == p.dense(n)[i, j]
    # Positions past the layout behave as further generated tokens (causal), in numpy and torch alike.
    far = np.arange(n + 5)
    wide = p(far[:, None], far[None, :])
    np.testing.assert_array_equal(wide[n:], far[None, :] <= far[n:, None])
    np.testing.assert_array_equal(
        p(torch.from_numpy(far)[:, None], torch.from_numpy(far)[None, :]).numpy(), wide
    )


def allowed_intervals(lengths, separator, prefix, generated) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's allowed keys as two intervals, from the layout written out span by span: the shared
    prefix ``[0, a)`` and the row's own causal run ``[start, q]`` (``a = 0`` where the run starts at 0)."""
    starts, pos = [], prefix
    for k, size in enumerate(lengths):
        if k and separator:
            starts.append((pos, pos + separator))
            pos += separator
        starts.append((pos, pos + size))
        pos += size
    n = pos + generated
    start = np.zeros(n, dtype=np.int64)  # prefix and generated rows: their run starts at key 0
    for lo, hi in starts:
        start[lo:hi] = lo
    return np.where(start > 0, prefix, 0), start, np.arange(n, dtype=np.int64)


@pytest.mark.parametrize(
    ("lengths", "separator", "prefix", "generated", "block"),
    [([70_000, 65_536, 90_001], 7, 321, 500, 128), ([1_001, 999, 3], 2, 127, 129, 100)],
)
def test_large_layout_counts_are_exact_without_the_dense_mask(lengths, separator, prefix, generated, block):
    # Independent of the pattern: row counts from the two intervals of each row, and whole rows of tiles
    # (every tile column) from the intervals' overlaps with each tile, at awkward lengths and tiles.
    a, start, q = allowed_intervals(lengths, separator, prefix, generated)
    p = paraphrase_fusion(
        lengths=lengths, separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated
    )
    n = p.length
    assert n == q.size
    counts = a + q + 1 - start
    np.testing.assert_array_equal(p.row_counts(n), counts)
    blocks = p.block_counts(n, block)
    nb = blocks.shape[0]
    assert int(blocks.sum()) == int(counts.sum())
    lo, hi = np.arange(nb) * block, np.minimum(np.arange(1, nb + 1) * block, n)
    rng = np.random.default_rng(0)
    for bi in sorted({0, nb - 1, *rng.integers(0, nb, size=24).tolist()}):
        rows = slice(bi * block, min(n, bi * block + block))
        overlap = np.clip(np.minimum(hi, a[rows, None]) - lo, 0, None)
        overlap += np.clip(np.minimum(hi, q[rows, None] + 1) - np.maximum(lo, start[rows, None]), 0, None)
        np.testing.assert_array_equal(blocks[bi], overlap.sum(axis=0))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({}, "num_paraphrases"),
        ({"num_paraphrases": 3}, "tokens_per_paraphrase"),
        ({"num_paraphrases": 0, "tokens_per_paraphrase": 4}, "num_paraphrases"),
        ({"num_paraphrases": 2, "tokens_per_paraphrase": 0}, "tokens_per_paraphrase"),
        ({"num_paraphrases": 2.5, "tokens_per_paraphrase": 3}, "num_paraphrases"),
        ({"lengths": []}, "lengths"),
        ({"lengths": [3, 0]}, r"lengths\[1\]"),
        ({"lengths": "abc"}, "lengths"),
        ({"lengths": [3, 4], "tokens_per_paraphrase": 4}, "not both"),
        ({"lengths": [3, 4], "num_paraphrases": 3}, "disagrees"),
        ({"num_paraphrases": 2, "tokens_per_paraphrase": 3, "separator_tokens": -1}, "separator_tokens"),
        ({"num_paraphrases": 2, "tokens_per_paraphrase": 3, "prefix_tokens": -2}, "prefix_tokens"),
        ({"num_paraphrases": 2, "tokens_per_paraphrase": 3, "num_generated_tokens": True}, "num_generated"),
    ],
)
def test_bad_parameters_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paraphrase_fusion(**kwargs)


def test_views_require_the_layout_length():
    p = paraphrase_fusion(2, 5, separator_tokens=1, num_generated_tokens=2)
    assert p.length == 13
    p.dense(13)
    for view in (p.dense, p.row_counts, p.blocks, p.labels):
        with pytest.raises(ValueError, match="n must equal the layout length 13"):
            view(12)

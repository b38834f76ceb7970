"""Paraphrase fusion against a brute-force reference, and the properties the pipeline relies on."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from reference import brute_force
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
    p = paraphrase_fusion(**layout)
    n = p.length
    labels = p.labels(n)
    assert (labels.diagonal() == 1).all()
    gen = p.generation_start
    off = ~np.eye(n, dtype=bool)
    allowed = labels > 0
    assert (labels[gen:][allowed[gen:] & off[gen:]] == 3).all()  # fusion
    assert (labels[:gen][allowed[:gen] & off[:gen]] == 2).all()  # isolated segment attention


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


def test_large_layout_counts_are_exact_without_the_dense_mask():
    p = paraphrase_fusion(
        lengths=[70_000, 65_536, 90_001], separator_tokens=7, prefix_tokens=321, num_generated_tokens=500
    )
    n = p.length
    counts = p.row_counts(n)
    assert counts.min() >= 1
    blocks = p.block_counts(n, 128)
    assert int(blocks.sum()) == int(counts.sum())
    # Spot-check tiles against the predicate.
    rng = np.random.default_rng(0)
    nb = blocks.shape[0]
    for bi, bj in rng.integers(0, nb, size=(40, 2)).tolist() + [(nb - 1, nb - 1), (nb - 1, 0)]:
        rows = np.arange(bi * 128, min(n, bi * 128 + 128))
        cols = np.arange(bj * 128, min(n, bj * 128 + 128))
        assert blocks[bi, bj] == np.count_nonzero(p(rows[:, None], cols[None, :]))


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

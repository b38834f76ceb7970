"""sparsekit.attention: dense and block-sparse masked attention against a brute-force per-row loop.

The reference computes, for every query row with plain Python loops, the scaled dot products with the
allowed keys only, their stable softmax and the weighted sum of values, in float64. The allowed cells
come from the brute-force rules of ``reference.py`` where a family has one, else from
``pattern.dense(n)`` (itself checked against the rules in ``test_patterns.py``).

Tolerances (absolute, inputs of unit scale, outputs a convex combination of the values): float64
results within 1e-12 of the reference, float32 results within 2e-6 (about 17 float32 ulps at 1.0; the
reference is computed in float64 from the same float32 inputs, and the largest float32 difference in
these cases is about 6e-7).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import RULES, brute_force

import sparsekit as sk
import sparsekit.attention as att
from sparsekit.attention import attention, block_sparse_attention, masked_scores
from sparsekit.masks.segments import paraphrase_fusion
from sparsekit.pattern import Pattern, Union

TOLERANCE = {np.float64: 1e-12, np.float32: 2e-6}
LENGTHS = (60, 77)
BLOCKS = (1, 7, 12, 16, 64)  # divide n or not; 64 > 60 is a single partial tile
HEADS = (2, 3)
D, E = 8, 5  # key and value feature sizes differ on purpose


def fusion(n: int) -> sk.Pattern:
    """A paraphrase-fusion layout of exactly ``n`` tokens with uneven paraphrase lengths."""
    prefix, separator, generated, k = 7, 2, 9, 4
    rest = n - prefix - generated - separator * (k - 1)
    lengths = [rest // k + (3 if i == 0 else -1 if i == 1 else 0) for i in range(k)]
    lengths[-1] += rest - sum(lengths)
    return paraphrase_fusion(
        lengths=lengths, separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated
    )


def union_rule(*rules):
    return lambda i, j: any(r(i, j) for r in rules)


# name -> (pattern at length n, brute-force rule or None to use pattern.dense(n))
FAMILIES = {
    "causal": lambda n: (sk.causal(), RULES["causal"]()),
    "strided": lambda n: (sk.strided(5, 7), RULES["strided"](5, 7)),
    "fixed": lambda n: (sk.fixed(10, 3), RULES["fixed"](10, 3)),
    "sliding_window": lambda n: (sk.sliding_window(21), RULES["sliding_window"](21)),
    "dilated_sliding_window": lambda n: (
        sk.dilated_sliding_window(12, 3),
        RULES["dilated_sliding_window"](12, 3),
    ),
    "block_local": lambda n: (sk.block_local(24), RULES["block_local"](24)),
    "axial": lambda n: (
        (sk.axial(6, 10), RULES["axial"](6, 10)) if n == 60 else (sk.axial(7, 11), RULES["axial"](7, 11))
    ),
    "global_tokens": lambda n: (sk.global_tokens(width=3), RULES["global_tokens"](3)),
    "global_indices": lambda n: (sk.global_tokens(indices=[0, 17, n - 1]), None),
    "random": lambda n: (sk.random(5, seed=3), None),
    "bigbird": lambda n: (sk.bigbird(3, 9, 2, seed=1), None),
    "longformer": lambda n: (sk.longformer(16, 3), None),
    "paraphrase_fusion": lambda n: (fusion(n), None),
    "union": lambda n: (
        sk.strided(3, 4) | sk.block_local(16),
        union_rule(RULES["strided"](3, 4), RULES["block_local"](16)),
    ),
    "composition": lambda n: (
        (sk.strided(3, 4) | sk.fixed(5)) & ~sk.block_local(32),
        lambda i, j: (RULES["strided"](3, 4)(i, j) or RULES["fixed"](5, 1)(i, j)) and i // 32 != j // 32,
    ),
    # Rows 0..8 allow no key at all (they must give zeros); the others allow only distant keys.
    "empty_rows": lambda n: (sk.causal() & ~sk.sliding_window(16), lambda i, j: j <= i and i - j > 8),
    "nothing": lambda n: (sk.causal() & ~sk.causal(), lambda i, j: False),
}


def allowed_cells(family: str, n: int) -> tuple[Pattern, np.ndarray]:
    pattern, rule = FAMILIES[family](n)
    mask = brute_force(rule, n) if rule is not None else pattern.dense(n)
    return pattern, mask


def inputs(n: int, dtype, lead=HEADS, seed: int = 0, m: int | None = None):
    rng = np.random.default_rng(seed)
    m = n if m is None else m
    q = rng.standard_normal(lead + (n, D)).astype(dtype)
    k = rng.standard_normal(lead + (m, D)).astype(dtype)
    v = rng.standard_normal(lead + (m, E)).astype(dtype)
    return q, k, v


def reference(q, k, v, allowed: np.ndarray, scale: float | None = None) -> np.ndarray:
    """Per-row loop in float64: softmax over the allowed keys only; zeros for rows with none."""
    q, k, v = (np.asarray(x, dtype=np.float64) for x in (q, k, v))
    scale = 1 / np.sqrt(q.shape[-1]) if scale is None else scale
    n, m = q.shape[-2], k.shape[-2]
    allowed = np.broadcast_to(allowed, (n, m))
    out = np.zeros(q.shape[:-1] + (v.shape[-1],))
    for lead in np.ndindex(q.shape[:-2]):
        for i in range(n):
            keys = [j for j in range(m) if allowed[i, j]]
            if not keys:
                continue
            s = np.array([sum(a * b for a, b in zip(q[lead][i], k[lead][j], strict=True)) for j in keys])
            w = np.exp(s * scale - max(s * scale))
            out[lead][i] = sum(wj * v[lead][j] for wj, j in zip(w, keys, strict=True)) / w.sum()
    return out


_REFERENCES: dict = {}


def cached_reference(family: str, n: int, dtype) -> tuple[Pattern, tuple, np.ndarray]:
    key = (family, n, dtype)
    if key not in _REFERENCES:
        pattern, mask = allowed_cells(family, n)
        q, k, v = inputs(n, dtype)
        _REFERENCES[key] = pattern, (q, k, v), reference(q, k, v, mask)
    return _REFERENCES[key]


def assert_matches(got: np.ndarray, expected: np.ndarray, dtype) -> None:
    assert got.dtype == dtype
    assert got.shape == expected.shape
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE[dtype])


# --------------------------------------------------------------------------------------------------
# Every family, several block sizes, both dtypes, leading head dimensions
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_block_sparse_matches_brute_force(family, n, block):
    for dtype in (np.float64, np.float32):
        pattern, (q, k, v), expected = cached_reference(family, n, dtype)
        assert_matches(block_sparse_attention(q, k, v, pattern, block_size=block), expected, dtype)


@pytest.mark.parametrize("n", LENGTHS)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dense_attention_matches_brute_force(family, n):
    for dtype in (np.float64, np.float32):
        pattern, (q, k, v), expected = cached_reference(family, n, dtype)
        assert_matches(attention(q, k, v, pattern), expected, dtype)
        assert_matches(attention(q, k, v, pattern.dense(n)), expected, dtype)  # boolean mask


@pytest.mark.parametrize("family", ["causal", "bigbird", "longformer", "empty_rows", "paraphrase_fusion"])
def test_segments_and_chunks_combine_with_online_softmax(family, monkeypatch):
    # A one-byte working buffer: one head, one query tile and one kv tile per step, so every row's
    # softmax is assembled across segments with the running maximum (rows that start with masked
    # tiles included), and the dense reference runs one row at a time.
    monkeypatch.setattr(att, "_WORK_BYTES", 1)
    monkeypatch.setattr(att, "_DENSE_WORK_BYTES", 1)
    for dtype in (np.float64, np.float32):
        pattern, (q, k, v), expected = cached_reference(family, 77, dtype)
        assert_matches(block_sparse_attention(q, k, v, pattern, block_size=16), expected, dtype)
        assert_matches(attention(q, k, v, pattern), expected, dtype)


@pytest.mark.parametrize("lead", [(), (4,), (2, 1, 2)])
def test_leading_dimensions(lead):
    n = 45
    pattern, mask = allowed_cells("bigbird", n)
    q, k, v = inputs(n, np.float64, lead=lead, seed=1)
    expected = reference(q, k, v, mask)
    assert_matches(block_sparse_attention(q, k, v, pattern, block_size=8), expected, np.float64)
    assert_matches(attention(q, k, v, pattern), expected, np.float64)


def test_non_contiguous_inputs_and_custom_scale():
    n = 50
    pattern, mask = allowed_cells("longformer", n)
    q, k, v = inputs(n, np.float64, lead=(3,), seed=2)
    q_t, k_t = np.swapaxes(q.swapaxes(0, 1).copy(), 0, 1), k[..., ::-1][..., ::-1]
    assert not q_t.flags.c_contiguous
    expected = reference(q, k, v, mask, scale=0.7)
    assert_matches(block_sparse_attention(q_t, k_t, v, pattern, 16, scale=0.7), expected, np.float64)
    assert_matches(attention(q_t, k_t, v, pattern, scale=0.7), expected, np.float64)


def test_large_scores_stay_finite():
    # Scores of order 1e4: exp would overflow without subtracting the row maximum.
    n = 40
    pattern, mask = allowed_cells("strided", n)
    q, k, v = inputs(n, np.float32, seed=3)
    q = q * np.float32(3000)
    expected = reference(q, k, v, mask)
    assert_matches(block_sparse_attention(q, k, v, pattern, block_size=16), expected, np.float32)
    assert_matches(attention(q, k, v, pattern), expected, np.float32)


# --------------------------------------------------------------------------------------------------
# Rows with no allowed key, full attention, boolean masks
# --------------------------------------------------------------------------------------------------
def test_rows_without_keys_give_exact_zeros():
    n = 40
    q, k, v = inputs(n, np.float32, seed=4)
    for pattern in (sk.causal() & ~sk.sliding_window(10), sk.causal() & ~sk.causal()):
        empty = pattern.row_counts(n) == 0
        assert empty.any()
        for out in (block_sparse_attention(q, k, v, pattern, 16), attention(q, k, v, pattern)):
            assert not np.isnan(out).any()
            assert (out[..., empty, :] == 0).all()
            assert (out[..., ~empty, :] != 0).any(axis=-1).all()
    mask = np.ones((n, n), dtype=bool)
    mask[3] = False
    out = attention(q, k, v, mask)
    assert (out[..., 3, :] == 0).all() and np.isfinite(out).all()
    np.testing.assert_allclose(out, reference(q, k, v, mask), rtol=0, atol=TOLERANCE[np.float32])


def test_full_attention_and_rectangular_boolean_masks():
    rng = np.random.default_rng(5)
    q, k, v = inputs(30, np.float64, seed=5, m=47)  # 30 queries, 47 keys
    full = np.ones((30, 47), dtype=bool)
    assert_matches(attention(q, k, v), reference(q, k, v, full), np.float64)
    mask = rng.random((30, 47)) < 0.3
    assert_matches(attention(q, k, v, mask), reference(q, k, v, mask), np.float64)
    column = rng.random(47) < 0.5  # broadcast to every query row
    assert_matches(attention(q, k, v, column), reference(q, k, v, column), np.float64)


def test_block_sparse_equals_dense_on_uneven_tiles_with_many_heads():
    n = 131
    pattern = sk.longformer(40, 5) | sk.random(3, seed=9)
    q, k, v = inputs(n, np.float32, lead=(5, 2), seed=6)
    for block in (8, 33, 128, 200):
        got = block_sparse_attention(q, k, v, pattern, block_size=block)
        np.testing.assert_allclose(got, attention(q, k, v, pattern), rtol=0, atol=TOLERANCE[np.float32])


@settings(max_examples=25)
@given(
    st.integers(1, 70),
    st.integers(0, 40),
    st.integers(1, 9),
    st.integers(1, 40),
    st.sampled_from(["strided", "dilated", "fixed"]),
)
def test_block_sparse_equals_dense_for_random_parameters(n, window, step, block, family):
    pattern = {
        "strided": sk.strided(window, step),
        "dilated": sk.dilated_sliding_window(window, step),
        "fixed": sk.fixed(step, min(step, window)),
    }[family]
    q, k, v = inputs(n, np.float64, lead=(2,), seed=n)
    got = block_sparse_attention(q, k, v, pattern, block_size=block)
    np.testing.assert_allclose(got, attention(q, k, v, pattern), rtol=0, atol=TOLERANCE[np.float64])


# --------------------------------------------------------------------------------------------------
# The predicate runs inside partial tiles only; a precomputed layout
# --------------------------------------------------------------------------------------------------
class Spy(Pattern):
    """Wraps a pattern and records every index grid its predicate is evaluated on.

    The block layout comes from the wrapped pattern's own engine, so only the attention kernel's
    predicate calls are recorded.
    """

    family = "spy"

    def __init__(self, inner: Pattern) -> None:
        super().__init__()
        self.inner, self.period, self.calls = inner, inner.period, []

    def bind(self, n: int) -> Pattern:
        self.inner = self.inner.bind(n)
        return self

    def predicate(self, q, kv):
        self.calls.append(np.broadcast_arrays(q, kv))
        return self.inner.predicate(q, kv)

    def _block_counts(self, n: int, b: int) -> np.ndarray:
        return self.inner._block_counts(n, b)


@pytest.mark.parametrize(
    "inner",
    [
        sk.sliding_window(41),
        sk.longformer(40, 3),
        sk.bigbird(3, 41, 2, seed=1),
        sk.block_local(24) | sk.fixed(10),
    ],
    ids=["sliding_window", "longformer", "bigbird", "block_local|fixed"],
)
@pytest.mark.parametrize("block", [7, 16])
def test_predicate_is_evaluated_only_inside_partial_tiles(inner, block):
    n = 77
    spy = Spy(inner)
    layout = spy.blocks(n, block)
    assert (layout == 1).any() and (layout == 2).any()
    q, k, v = inputs(n, np.float64, seed=7)
    got = block_sparse_attention(q, k, v, spy, block_size=block)
    np.testing.assert_allclose(got, attention(q, k, v, inner), rtol=0, atol=TOLERANCE[np.float64])
    assert spy.calls
    for rows, cols in spy.calls:
        assert rows.min() >= 0 and cols.min() >= 0 and rows.max() < n and cols.max() < n
        assert (layout[rows // block, cols // block] == 1).all()


@pytest.mark.parametrize(
    "others",
    [(sk.global_tokens(3),), (sk.random(3, seed=1), sk.global_tokens(indices=[5, 40]))],
    ids=["window|global", "window|random|global"],
)
def test_union_terms_evaluate_predicates_only_inside_partial_tiles(others):
    # Global tokens and random cells are taken from their flags and lists; the window's predicate must
    # still run only on partial tiles of the union's layout.
    n, block = 77, 8
    spy = Spy(sk.window(13))
    union = Union(spy, *others)
    layout = union.blocks(n, block)
    spy.calls.clear()  # the layout engine may evaluate the parts' predicates
    q, k, v = inputs(n, np.float64, seed=13)
    got = block_sparse_attention(q, k, v, union, block_size=block, layout=layout)
    expected = reference(q, k, v, Union(sk.window(13), *others).dense(n))
    assert_matches(got, expected, np.float64)
    assert spy.calls
    for rows, cols in spy.calls:
        assert (layout[rows // block, cols // block] == 1).all()


def test_no_partial_tiles_no_predicate_calls():
    spy = Spy(sk.block_local(16))
    q, k, v = inputs(64, np.float64, seed=8)
    got = block_sparse_attention(q, k, v, spy, block_size=16)  # every tile full or empty
    assert spy.calls == []
    np.testing.assert_allclose(got, attention(q, k, v, sk.block_local(16)), rtol=0, atol=1e-12)


def test_precomputed_layout_gives_the_same_result():
    n, block = 77, 16
    pattern = sk.bigbird(3, 9, 2, seed=1)
    q, k, v = inputs(n, np.float32, seed=9)
    layout = pattern.blocks(n, block)
    expected = block_sparse_attention(q, k, v, pattern, block_size=block)
    np.testing.assert_array_equal(block_sparse_attention(q, k, v, pattern, block, layout=layout), expected)


def test_the_given_layout_is_the_one_used():
    # A layout that is not the pattern's: tiles declared empty are skipped, a partial tile declared full
    # is taken whole. The reference applies exactly that to the brute-force mask, so a kernel that ignored
    # layout= (and recomputed the pattern's own) would fail.
    n, block = 77, 16
    pattern, mask = allowed_cells("bigbird", n)
    layout = pattern.blocks(n, block)
    partial, nonempty = np.argwhere(layout == 1), np.argwhere(layout > 0)
    assert len(partial) > 2 and len(nonempty) > 4
    changed = layout.copy()
    cut = [tuple(t) for t in nonempty[::3]]
    for bi, bj in cut:
        changed[bi, bj] = 0
    whole = next(tuple(t) for t in partial if tuple(t) not in cut)
    changed[whole] = 2
    allowed = mask.copy()
    for (bi, bj), keep in [*((t, False) for t in cut), (whole, True)]:
        allowed[bi * block : (bi + 1) * block, bj * block : (bj + 1) * block] = keep
    q, k, v = inputs(n, np.float64, seed=9)
    got = block_sparse_attention(q, k, v, pattern, block, layout=changed)
    assert_matches(got, reference(q, k, v, allowed), np.float64)


# --------------------------------------------------------------------------------------------------
# masked_scores
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fill", [-np.inf, -1e9, 0.0, 7.5])
def test_masked_scores_fill_and_scale(fill):
    n = 33
    pattern, mask = allowed_cells("empty_rows", n)
    for dtype in (np.float64, np.float32):
        q, k, _ = inputs(n, dtype, lead=(2,), seed=10)
        for scale in (None, 0.25):
            got = masked_scores(q, k, pattern, fill=fill, scale=scale)
            assert got.dtype == dtype and got.shape == (2, n, n)
            s = 1 / np.sqrt(D) if scale is None else scale
            for h in range(2):
                for i in range(n):
                    for j in range(n):
                        if mask[i, j]:
                            expected = float(np.dot(q[h, i].astype(float), k[h, j].astype(float))) * s
                            assert got[h, i, j] == pytest.approx(expected, abs=TOLERANCE[dtype] * 10)
                        else:
                            assert got[h, i, j] == dtype(fill)
            np.testing.assert_array_equal(masked_scores(q, k, mask, fill=fill, scale=scale), got)


def test_masked_scores_broadcast_masks():
    q, k, _ = inputs(6, np.float64, lead=(), seed=11, m=9)
    full = masked_scores(q, k, np.ones((6, 9), dtype=bool))
    np.testing.assert_allclose(full, q @ k.T / np.sqrt(D), rtol=1e-14, atol=1e-14)
    column = np.arange(9) % 2 == 0
    got = masked_scores(q, k, column, fill=-1.0)
    assert (got[:, ~column] == -1.0).all()
    np.testing.assert_array_equal(got[:, column], full[:, column])
    row = (np.arange(6) < 2)[:, None]
    got = masked_scores(q, k, row)
    assert np.isneginf(got[2:]).all()
    np.testing.assert_array_equal(got[:2], full[:2])


# --------------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------------
def test_bad_inputs_raise_value_errors():
    q, k, v = inputs(20, np.float32, seed=12)
    p = sk.causal()
    cases = [
        (lambda: block_sparse_attention(q, k, v, p, block_size=0), "block_size"),
        (lambda: block_sparse_attention(q, k, v, p, block_size=2.5), "block_size"),
        (lambda: block_sparse_attention(q, k, v, p, block_size=True), "block_size"),
        (lambda: block_sparse_attention(q, k, v, p.dense(20)), "pattern must be a sparsekit Pattern"),
        (lambda: block_sparse_attention(q, k, v, "causal"), "pattern must be a sparsekit Pattern"),
        (lambda: block_sparse_attention(q.astype(np.int64), k, v, p), "q must be a float32 or float64"),
        (lambda: block_sparse_attention(q, k.astype(np.float16), v, p), "k must be a float32 or float64"),
        (lambda: block_sparse_attention(q, k, v.astype(np.float64), p), "share one dtype"),
        (lambda: block_sparse_attention(q[..., :4], k, v, p), "same feature size"),
        (lambda: block_sparse_attention(q[0], k, v, p), "leading dimensions"),
        (lambda: block_sparse_attention(q, k, v[..., :10, :], p), "v must have"),
        (lambda: block_sparse_attention(q[..., :10, :], k, v, p), "as many queries as keys"),
        (lambda: block_sparse_attention(q[0, 0, 0], k, v, p), "at least 2 dimensions"),
        (lambda: block_sparse_attention(q[..., :0, :], k[..., :0, :], v[..., :0, :], p), "at least one"),
        (lambda: block_sparse_attention(q, k, v, p, scale=float("nan")), "scale"),
        (lambda: block_sparse_attention(q, k, v, p, scale="1"), "scale"),
        (lambda: block_sparse_attention(q, k, v, p, 8, layout=np.zeros((2, 2), np.uint8)), "layout"),
        (lambda: block_sparse_attention(q, k, v, p, 8, layout=np.full((3, 3), 3)), "layout"),
        (lambda: block_sparse_attention(q, k, v, paraphrase_fusion(2, 5)), "n must equal"),
        (lambda: block_sparse_attention(q, k, v, sk.axial(3, 5)), "n must equal"),
        (lambda: attention(q, k, v, np.ones((20, 20), dtype=np.int8)), "boolean"),
        (lambda: attention(q, k, v, np.ones((20, 3), dtype=bool)), "does not broadcast"),
        (lambda: attention(q, k, v, np.ones((2, 20, 20), dtype=bool)), "does not broadcast"),
        (lambda: attention(q[..., :10, :], k, v, p), "as many queries as keys"),
        (lambda: attention(q, k, v, "causal"), "boolean array"),
        (lambda: masked_scores(q, k, None), "mask"),
        (lambda: masked_scores(q, k, p, fill="low"), "fill"),
        (lambda: masked_scores(q, k, p, fill=True), "fill"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message):
            call()

"""sparsekit.mask_report: the seed's mask checks, against counts written out cell by cell here.

The reference builds the dense mask, the span of every token from the layout's lengths (not from the
pattern) and counts the cells directly. Patterns whose predicate breaks the fusion rule (a subclass)
show that the counters count: a correct layout gives 0 and a broken one the reference's number.
"""

from __future__ import annotations

import numpy as np
import pytest

import sparsekit as sk
from sparsekit.masks.segments import ParaphraseFusion


def spans_of(lengths, separator, prefix, generated) -> np.ndarray:
    """Span number of every token, written from the layout's definition (prefix, paraphrases with
    separator groups between them, generated tokens)."""
    ids, span = [0] * prefix, 1
    for k, size in enumerate(lengths):
        if k and separator:
            ids += [span] * separator
            span += 1
        ids += [span] * size
        span += 1
    return np.array(ids + [span] * generated)


def reference(pattern, lengths, separator, prefix, generated) -> dict:
    n = pattern.length
    dense = pattern.dense(n) if type(pattern) is ParaphraseFusion else pattern(*np.indices((n, n)))
    seg = spans_of(lengths, separator, prefix, generated)
    q, kv = np.indices((n, n))
    gen = n - generated
    cross = dense & (seg[q] != seg[kv]) & (kv >= prefix) & (q < gen)
    return {
        "causal_violations": int((dense & (kv > q)).sum()),
        "cross_segment_cells": int(cross.sum()),
        "first_generated_attends": int(dense[gen, :gen].sum()) if generated else None,
    }


class Causal(ParaphraseFusion):
    """The layout of a fusion pattern with plain causal attention: paraphrases see each other."""

    def predicate(self, q, kv):
        return kv <= q


class Everything(ParaphraseFusion):
    """The layout with every cell allowed, later keys included."""

    def predicate(self, q, kv):
        return (q >= 0) & (kv >= 0)


LAYOUTS = [
    ([10] * 5, 0, 0, 3),  # the seed's scenario: "First generated token attends to: 50/50"
    ([7, 3, 12], 2, 5, 4),
    ([1, 1], 1, 1, 1),
    ([4, 9], 0, 3, 0),  # nothing generated
]


@pytest.mark.parametrize(("lengths", "separator", "prefix", "generated"), LAYOUTS)
def test_counts_equal_the_cells(lengths, separator, prefix, generated):
    options = dict(separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated)
    pattern = sk.paraphrase_fusion(lengths=lengths, **options)
    report = sk.mask_report(pattern)
    expected = reference(pattern, lengths, separator, prefix, generated)
    assert {key: report[key] for key in expected} == expected
    assert report["causal_violations"] == report["cross_segment_cells"] == 0
    n = pattern.length
    assert (report["length"], report["generation_start"]) == (n, n - generated)
    assert report["density"] == pattern.dense(n).sum() / n**2
    assert report["first_generated_positions"] == (n - generated if generated else None)
    if generated:
        assert report["first_generated_attends"] == n - generated  # fusion: every earlier position
    # Broken rules are counted, not assumed away.
    args = (tuple(lengths), separator, prefix, generated, {})
    for broken in (Causal(*args), Everything(*args)):
        got = sk.mask_report(broken)
        want = reference(broken, lengths, separator, prefix, generated)
        assert {key: got[key] for key in want} == want
    assert sk.mask_report(Everything(*args))["causal_violations"] == n * (n - 1) // 2
    if len(lengths) > 1:
        assert sk.mask_report(Causal(*args))["cross_segment_cells"] > 0


def test_rows_are_counted_in_chunks_at_a_long_length():
    # 2100 tokens: the report works through 1997 rows, then the last 103; the counts still match.
    lengths, separator, prefix, generated = [700, 800, 537], 3, 10, 47
    args = (tuple(lengths), separator, prefix, generated, {})
    broken = Causal(*args)
    assert broken.length == 2100 and (1 << 22) // 2100 == 1997
    got = sk.mask_report(broken)
    want = reference(broken, lengths, separator, prefix, generated)
    assert {key: got[key] for key in want} == want


def test_refuses_other_patterns():
    with pytest.raises(ValueError, match="ParaphraseFusion"):
        sk.mask_report(sk.causal())

"""Layer stacks: the receptive field against a path search over cells, and the model schedules."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import sparsekit as sk


def reachable(masks: list[np.ndarray]) -> np.ndarray:
    """Keys of the input each last-layer query reaches, by following allowed cells layer by layer."""
    n = masks[0].shape[0]
    out = np.zeros((n, n), dtype=bool)
    for q in range(n):
        frontier = {q}
        for mask in reversed(masks):  # the last layer first, back to the input
            frontier = {kv for j in frontier for kv in range(n) if mask[j, kv]}
        out[q, sorted(frontier)] = True
    return out


PATTERNS = [
    sk.causal_window(3),
    sk.chunked(4),
    sk.attention_sinks(1, 2),
    sk.strided(3, 3),
    sk.sliding_window(2),
    sk.random(2, seed=1),
]


@given(st.lists(st.integers(0, len(PATTERNS) - 1), min_size=1, max_size=4), st.integers(2, 14))
def test_receptive_field_is_the_path_search(choice, n):
    layers = [PATTERNS[k] for k in choice]
    field = sk.receptive_field(layers, n)
    assert field.dtype == bool
    np.testing.assert_array_equal(field, reachable([p.dense(n) for p in layers]))


@given(st.integers(2, 9), st.integers(2, 40))
def test_sliding_windows_reach_everything_after_the_expected_depth(window, n):
    # Each layer moves information back by window - 1 tokens.
    layers = [sk.causal_window(window)] * n
    assert sk.layers_to_reach(layers, n) == -(-(n - 1) // (window - 1))


def test_two_axial_or_two_strided_layers_reach_everything():
    full = sk.block_local(48)  # every cell
    assert sk.layers_to_reach([sk.axial(6, 8)] * 3, 48, target=full) == 2
    assert sk.layers_to_reach([sk.strided(8, 8)] * 3, 64) == 2
    assert sk.layers_to_reach([sk.causal_window(4)] * 2, 64) is None


def test_layer_schedules():
    g2 = sk.layer_schedule("gemma2", 4, window=16)
    assert [p.family for p in g2] == ["causal_window", "causal", "causal_window", "causal"]
    assert g2[0].window == 16
    g3 = sk.layer_schedule("gemma3", 12)
    assert [p.family == "causal" for p in g3] == [False] * 5 + [True] + [False] * 5 + [True]
    assert g3[0].window == 1024
    l4 = sk.layer_schedule("llama4", 8, chunk=32)
    assert [p.family for p in l4] == ["chunked"] * 3 + ["causal"] + ["chunked"] * 3 + ["causal"]
    assert l4[0].chunk == 32 and sk.layer_schedule("llama4", 1)[0].chunk == 8192
    assert {p.name for p in sk.layer_schedule("mistral", 5)} == {"causal_window(window=4096)"}


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: sk.layer_schedule("gpt", 4), "model"),
        (lambda: sk.layer_schedule("gemma2", 0), "layers"),
        (lambda: sk.layer_schedule("gemma2", 4, window=0), "window"),
        (lambda: sk.layer_schedule("gemma2", 4, chunk=8), "chunk"),
        (lambda: sk.layer_schedule("llama4", 4, window=8), "window"),
        (lambda: sk.layer_schedule("llama4", 4, chunk=0), "chunk"),
        (lambda: sk.receptive_field([], 8), "patterns"),
        (lambda: sk.receptive_field(sk.causal(), 8), "patterns"),
        (lambda: sk.receptive_field([sk.causal(), "x"], 8), r"patterns\[1\]"),
        (lambda: sk.receptive_field([sk.causal()], 0), "n"),
    ],
)
def test_bad_input_names_the_parameter(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_receptive_fields_after_each_layer():
    layers = [sk.causal_window(3), sk.chunked(5), sk.strided(2, 4)]
    fields = list(sk.receptive_fields(layers, 20))
    assert len(fields) == 3
    for depth, field in enumerate(fields, start=1):
        np.testing.assert_array_equal(field, reachable([p.dense(20) for p in layers[:depth]]))

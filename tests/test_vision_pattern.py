"""sparsekit.vision_pattern: the seed's vision names over a row-major map, cell by cell (numpy only).

Each name is checked against a mask written here from its definition over pixel coordinates (row
and column of each token), not against the sparsekit factory it delegates to.
"""

from __future__ import annotations

import numpy as np
import pytest

import sparsekit as sk

HEIGHT, WIDTH = 6, 10
N = HEIGHT * WIDTH


def pixels():
    """Query and key token indices, and their image rows and columns, as (N, N) grids."""
    q, kv = np.indices((N, N))
    return q, kv, q // WIDTH, q % WIDTH, kv // WIDTH, kv % WIDTH


def test_names_give_the_masks_of_their_definitions():
    q, kv, qr, qc, kr, kc = pixels()
    expected = {
        # Runs of 20 consecutive tokens: two whole image rows each.
        ("block", (("block", 20),)): q // 20 == kv // 20,
        # Sparse Transformer strided, window = stride = width: the previous row's worth of tokens, and
        # every earlier pixel in the same image column.
        ("strided", ()): (kv <= q) & ((q - kv < WIDTH) | (qc == kc)),
        ("axial", ()): (qr == kr) | (qc == kc),
        # Longformer: a band of 2 * width (reach width / 2 = 10 either side) and 4 global tokens.
        ("longformer", ()): (abs(q - kv) <= WIDTH) | (q < 4) | (kv < 4),
        ("longformer", (("window", 6), ("global_width", 2))): (abs(q - kv) <= 3) | (q < 2) | (kv < 2),
        ("dense", ()): np.ones((N, N), dtype=bool),
    }
    for (name, options), mask in expected.items():
        got = sk.vision_pattern(name, HEIGHT, WIDTH, **dict(options))
        np.testing.assert_array_equal(got.dense(N), mask, err_msg=f"{name} {options}")


def test_random_draws_the_ratio_of_keys():
    rand = sk.vision_pattern("random", HEIGHT, WIDTH, attention_ratio=0.25, seed=7)
    np.testing.assert_array_equal(rand.row_counts(N), np.full(N, 15))  # round(0.25 * 60) keys per row
    again = sk.vision_pattern("random", HEIGHT, WIDTH, attention_ratio=0.25, seed=7)
    np.testing.assert_array_equal(rand.dense(N), again.dense(N))
    other = sk.vision_pattern("random", HEIGHT, WIDTH, attention_ratio=0.25, seed=8)
    assert (rand.dense(N) != other.dense(N)).any()
    tiny = sk.vision_pattern("random", HEIGHT, WIDTH, attention_ratio=0.001)
    np.testing.assert_array_equal(tiny.row_counts(N), np.ones(N))  # at least one key


def test_a_pattern_is_bound_to_the_map():
    got = sk.vision_pattern(sk.causal(), HEIGHT, WIDTH)
    assert got.nnz(N) == N * (N + 1) // 2
    assert set(sk.VISION_PATTERNS) == {"random", "block", "strided", "axial", "longformer", "dense"}


@pytest.mark.parametrize(
    ("name", "height", "width", "options", "match"),
    [
        ("swin", 4, 4, {}, "one of"),
        ("block", 4, 4, {"window": 3}, r"options \[block\]"),
        ("axial", 4, 4, {"block": 3}, r"options \[none\]"),
        ("random", 4, 4, {"attention_ratio": 0}, r"\(0, 1\]"),
        ("random", 4, 4, {"attention_ratio": 1.5}, "attention_ratio"),
        ("random", 4, 4, {"seed": -1}, "seed"),
        ("block", 4, 4, {"block": 0}, "block"),
        ("strided", 4, 4, {"stride": 0}, "stride"),
        ("strided", 4, 4, {"window": -1}, "window"),
        ("longformer", 2, 2, {"global_width": 5}, "global_width"),
        ("axial", 0, 4, {}, "height"),
        ("axial", 4, 0, {}, "width"),
        (sk.axial(3, 3), 4, 4, {}, r"height \* width"),
        (sk.causal(), 4, 4, {"block": 2}, "only apply"),
    ],
)
def test_bad_input_is_named(name, height, width, options, match):
    with pytest.raises(ValueError, match=match):
        sk.vision_pattern(name, height, width, **options)

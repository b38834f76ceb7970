"""The live explorer (sparsekit.explorer): its sliders, its picture and the numbers it prints.

The numbers are checked against brute-force counts from tests/reference.py, never against the
pattern's own views.
"""

from __future__ import annotations

import inspect
import io

import matplotlib
import numpy as np
import PIL.Image
import pytest
from reference import RULES, brute_force

import sparsekit as sk
from sparsekit import explorer

matplotlib.use("Agg")

# The families the issue names; each must be in the picker.
REQUIRED = [
    "causal", "strided", "fixed", "sliding_window", "dilated_sliding_window", "block_local", "axial",
    "longformer", "bigbird", "attention_sinks", "prefix_lm", "chunked", "neighborhood_2d", "bigbird_blocks",
]  # fmt: skip


def picture(e: explorer.Explorer) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(e.image.value)))


def brute_numbers(family: str, params: dict, n: int, tile: int) -> tuple[float, float]:
    """Exact sparsity and the share of empty tiles from the family's brute-force rule."""
    dense = brute_force(RULES[family](**params), n)
    tiles = dense.reshape(n // tile, tile, n // tile, tile).any(axis=(1, 3))
    return 1 - dense.mean(), 1 - tiles.mean()


def test_every_family_has_one_slider_per_factory_parameter_labelled_by_name():
    e = explorer.Explorer(n=256)
    assert set(REQUIRED) <= set(e.picker.options)
    for family in e.picker.options:
        e.picker.value = family
        expected = [p for p in inspect.signature(getattr(sk, family)).parameters if p != "size"]
        assert [s.description for s in e.parameters.children] == expected, family
        assert all(not s.continuous_update for s in e.parameters.children), family
        assert "color:#b00020" not in e.readout.value, (family, e.readout.value)  # the defaults are valid


@pytest.mark.parametrize(
    ("family", "moves"),
    [
        ("strided", {"window": 5, "stride": 12}),
        ("fixed", {"block": 16, "summary": 3}),
        ("block_local", {"block": 8}),
    ],
)
def test_a_move_redraws_and_prints_the_brute_force_numbers(family, moves):
    n, tile = 128, 16
    e = explorer.Explorer(family=family, n=n - 64, tile=tile)
    e.n.value = n
    before = picture(e)
    for name, value in moves.items():
        e.sliders[family, name].value = value
    assert not np.array_equal(picture(e), before), "the picture did not change"
    sparsity, tile_sparsity = brute_numbers(family, moves, n, tile)
    assert f"exact sparsity {sparsity:.4%}" in e.readout.value
    assert f"tile sparsity {tile_sparsity:.4%}" in e.readout.value
    assert "Exact mask of 128 x 128 cells." in e.note.value


def test_grid_families_use_height_times_width_and_disable_n():
    e = explorer.Explorer(family="axial", n=1024, tile=8)
    e.sliders["axial", "height"].value = 6
    e.sliders["axial", "width"].value = 8
    assert e.n.disabled
    sparsity, _ = brute_numbers("axial", {"height": 6, "width": 8}, 48, 8)
    assert e.readout.value.startswith("n = 48: ")
    assert f"exact sparsity {sparsity:.4%}" in e.readout.value
    e.picker.value = "strided"
    assert not e.n.disabled


def test_long_masks_switch_to_the_block_reduced_view_and_say_so():
    e = explorer.Explorer(family="sliding_window", n=512, exact_limit=256)
    assert "Block-reduced view" in e.note.value and e.legend.value == ""
    e.n.value = 256
    assert e.note.value.startswith("Exact mask of 256 x 256 cells")
    assert "No attention" in e.legend.value


def test_a_bad_combination_names_the_parameter_and_keeps_the_picture():
    e = explorer.Explorer(family="prefix_lm", n=128)
    e.sliders["prefix_lm", "prefix"].value = 128
    before = e.image.value
    e.n.value = 64  # the prefix is now longer than the sequence
    assert "prefix" in e.readout.value and "color:#b00020" in e.readout.value
    assert e.image.value == before


def test_limits_that_follow_another_parameter_keep_the_pattern_valid():
    e = explorer.Explorer(family="neighborhood_2d", tile=8)
    e.sliders["neighborhood_2d", "kernel_height"].value = 9
    e.sliders["neighborhood_2d", "height"].value = 6
    kernel = e.sliders["neighborhood_2d", "kernel_height"]
    assert (kernel.max, kernel.value) == (5, 5)  # the largest odd kernel that fits 6 rows
    assert "color:#b00020" not in e.readout.value and e.readout.value.startswith("n = 192: ")
    e.picker.value = "fixed"
    e.sliders["fixed", "summary"].value = 20
    e.sliders["fixed", "block"].value = 8
    assert e.sliders["fixed", "summary"].value == 8 and "color:#b00020" not in e.readout.value


def test_nice_ceiling():
    assert [explorer.nice_ceiling(v) for v in (0.5, 1, 1.5, 3, 7, 10.5, 160, 1000)] == [
        1, 1, 2, 5, 10, 20, 200, 1000,
    ]  # fmt: skip


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="family"):
        explorer.Explorer(family="nope")
    with pytest.raises(ValueError, match="n must"):
        explorer.Explorer(n=32)
    with pytest.raises(ValueError, match="tile"):
        explorer.Explorer(tile=12)


def test_explore_is_exported_lazily():
    assert "explore" in sk.__all__
    assert sk.explore is explorer.explore
    assert type(sk.explore(n=128)).__name__ == "VBox"

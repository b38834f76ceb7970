"""Live cells (sparsekit.live): the kept figure, the pictures it shows and the cell's widgets.

Pictures are checked against brute-force labels from tests/reference.py and against a full matplotlib
draw of the same figure (the blitted render must look exactly like it); never against live's own output.
"""

from __future__ import annotations

import doctest
import io

import ipywidgets as widgets
import numpy as np
import PIL.Image
import pytest
from matplotlib.colors import to_rgba
from reference import RULES, brute_force, brute_force_labels, family_labels

import sparsekit as sk
from sparsekit import live
from sparsekit import plot as skp


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(png)).convert("RGB"))


def full_draw(view: live.LiveFigure) -> np.ndarray:
    """The same figure drawn the ordinary way (every artist, no cached background)."""
    for artist in view._animated:
        artist.set_animated(False)
    view.figure.canvas.draw()
    picture = np.asarray(view.figure.canvas.buffer_rgba())[..., :3].copy()
    for artist in view._animated:
        artist.set_animated(True)
    return picture


def test_the_module_example_runs():
    result = doctest.testmod(live, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


def test_mask_picture_is_the_brute_force_labelled_crop():
    pattern = sk.strided(5, 7)
    picture, exact, note = live.mask_picture(pattern, 96, sample_size=40)
    expected = brute_force_labels(family_labels("strided", window=5, stride=7), 96)[:40, :40]
    assert exact and np.array_equal(picture, expected)
    assert note == "Exact mask, top-left 40 x 40 cells of 96 x 96."


def test_mask_picture_pools_to_the_highest_label_and_says_so():
    picture, exact, note = live.mask_picture(sk.fixed(8, 2), 64, pixels=16)
    labels = brute_force_labels(family_labels("fixed", block=8, summary=2), 64)
    assert exact and picture.shape == (16, 16)
    assert np.array_equal(picture, labels.reshape(16, 4, 16, 4).max(axis=(1, 3)))
    assert "4 x 4 cells a pixel" in note


def test_mask_picture_switches_to_tile_shares_above_the_exact_limit():
    picture, exact, note = live.mask_picture(sk.block_local(16), 128, pixels=8, exact_limit=64)
    dense = brute_force(RULES["block_local"](16), 128)
    assert not exact and note.startswith("Block-reduced view (n = 128, above 64)")
    assert np.allclose(picture, dense.reshape(8, 16, 8, 16).mean(axis=(1, 3)))


def test_pool_labels_keeps_the_highest_code_of_each_group():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, size=(10, 10)).astype(np.uint8)
    pooled, group = live.pool_labels(labels, 4)
    assert group == 3 and pooled.shape == (4, 4)
    for a in range(4):
        for b in range(4):
            assert pooled[a, b] == labels[3 * a : 3 * a + 3, 3 * b : 3 * b + 3].max()
    same, one = live.pool_labels(labels, 10)
    assert one == 1 and same is labels


@pytest.mark.parametrize("moves", [[(32, 96)], [(32, 96), (32, 64)], [(32, 96), (64, 128), (16, 32)]])
def test_a_render_looks_exactly_like_a_full_draw(moves):
    """Blitting over the cached background must not leave stale pixels (e.g. a longer old title),
    whether or not the frame (the side shown) changed between moves."""
    view = live.MaskView(figsize=(4, 4), dpi=60)
    for sample_size, n in moves:
        view.show(sk.strided(sample_size // 4, 5), n, sample_size=sample_size)
        shown = pixels(view.render())
    # Equal except where tick marks meet the image's edge (the image is drawn over the cached ticks).
    rows, cols = np.nonzero((shown != full_draw(view)).any(axis=-1))
    box = view.ax.get_window_extent()
    height = view.figure.canvas.get_width_height()[1]
    edge = (
        (np.abs(cols - box.x0) < 2) | (np.abs(cols - box.x1) < 2)
        | (np.abs(height - rows - box.y0) < 2) | (np.abs(height - rows - box.y1) < 2)
    )  # fmt: skip
    assert edge.all(), f"{(~edge).sum()} pixels differ from a full draw inside the figure"


def test_interact_redraws_on_each_change_and_prints_the_line():
    view = live.MaskView(figsize=(4, 4), dpi=60)
    calls = []

    def draw(window, stride):
        calls.append((window, stride))
        pattern = sk.strided(window, stride)
        view.show(pattern, 64, sample_size=32)
        return f"sparsity {pattern.sparsity(64):.4%}"

    window = widgets.IntSlider(value=4, min=0, max=32)
    stride = widgets.IntSlider(value=8, min=1, max=32, description="stride", continuous_update=True)
    box = live.interact(draw, view, window=window, stride=stride)
    assert calls == [(4, 8)]  # drawn once at the start
    assert (window.description, stride.description) == ("window", "stride")  # visible labels
    assert not window.continuous_update and not stride.continuous_update
    text = box.children[3]
    assert live.TEXT_CLASS in text._dom_classes and box.children[2] is view.image
    before = view.image.value
    stride.value = 3
    assert calls[-1] == (4, 3) and view.image.value != before
    sparsity = 1 - brute_force(RULES["strided"](4, 3), 64).mean()
    assert text.value == f"<pre>sparsity {sparsity:.4%}</pre>"
    assert box.children[4].value == "Exact mask, top-left 32 x 32 cells of 64 x 64."


def test_a_refused_combination_is_printed_in_red_and_keeps_the_picture():
    view = live.MaskView(figsize=(3, 3), dpi=50)

    def draw(prefix):
        view.show(sk.prefix_lm(prefix), 32)

    prefix = widgets.IntSlider(value=8, min=0, max=64, description="prefix")
    box = live.interact(draw, view, prefix=prefix)
    before = view.image.value
    prefix.value = 40  # longer than the sequence
    assert "prefix" in box.children[2].value and "color:#b00020" in box.children[2].value
    assert view.image.value == before


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ValueError, match="dpi"):
        live.LiveFigure(dpi=5)
    with pytest.raises(ValueError, match="controls"):
        live.interact(lambda: None, live.LiveFigure())
    with pytest.raises(ValueError, match="sample_size"):
        live.mask_picture(sk.causal(), 16, sample_size=17)


def test_shown_hides_the_sliders_the_chosen_pattern_does_not_read():
    view = live.MaskView(figsize=(3, 3), dpi=50)
    builders = {
        "strided": lambda v: sk.strided(v["window"], v["stride"]),
        "chunked": lambda v: sk.chunked(v["chunk"]),
    }
    reads = {"strided": ["window", "stride"], "chunked": ["chunk"]}

    def draw(family, **values):
        view.show(builders[family](values), 32)

    picker = widgets.Dropdown(options=list(builders), value="strided")
    sliders = {name: widgets.IntSlider(value=4, min=1, max=16) for name in ("window", "stride", "chunk")}
    live.interact(draw, view, shown=lambda values: reads[values["family"]], family=picker, **sliders)
    hidden = lambda: sorted(name for name, s in sliders.items() if s.layout.display == "none")  # noqa: E731
    assert hidden() == ["chunk"] and picker.layout.display is None
    picker.value = "chunked"
    assert hidden() == ["stride", "window"]


def test_picture_rgba_colours_each_label_code_and_each_tile_share():
    codes = np.array([[0, 1], [2, 3]])
    expected = [[to_rgba(skp.LABEL_COLORS[c]) for c in row] for row in codes.tolist()]
    assert np.array_equal(live.picture_rgba(codes, exact=True), np.round(np.array(expected) * 255))
    shares = np.array([[0.0, 1.0]])
    purples = live.picture_rgba(shares, exact=False)
    assert purples.dtype == np.uint8 and purples[0, 0, :3].min() > 240 and purples[0, 1, :3].mean() < 100


def test_any_other_error_is_shown_in_red_and_raised():
    view = live.MaskView(figsize=(3, 3), dpi=50)

    def draw(window):
        if window > 4:
            raise KeyError("no such pattern")
        view.show(sk.sliding_window(window), 16)

    window = widgets.IntSlider(value=2, min=0, max=8)
    box = live.interact(draw, view, window=window)
    with pytest.raises(KeyError):
        window.value = 6
    assert "KeyError: &#x27;no such pattern&#x27;" in box.children[2].value

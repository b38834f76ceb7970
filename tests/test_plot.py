"""Plot helpers: take ``ax=None`` or an axes, return the figure, and draw what the views compute."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from reference import brute_force_labels, family_labels  # noqa: E402

import sparsekit as sk  # noqa: E402
from sparsekit import plot as skp  # noqa: E402


def test_plot_mask_draws_the_labels_and_states_the_exact_sparsity():
    p = sk.strided(4, 4)
    fig = skp.plot_mask(p, 64, sample_size=16)
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.images[0].get_array(), p.labels(64)[:16, :16])
    assert f"{p.sparsity(64):.4%}" in ax.texts[0].get_text()
    assert [t.get_text() for t in ax.get_legend().get_texts()][:2] == ["No attention", "Diagonal"]
    plt.close(fig)


def test_helpers_draw_on_a_given_axes_and_return_its_figure():
    # What each draws, against brute-force labels and tile densities (tests/reference.py).
    causal = brute_force_labels(family_labels("causal"), 16)
    fixed = brute_force_labels(family_labels("fixed", block=4, summary=1), 64)
    fig, ax = plt.subplots()
    assert skp.plot_mask(sk.causal(), 8, ax=ax) is fig
    np.testing.assert_array_equal(ax.images[0].get_array(), causal[:8, :8])
    fig2, ax2 = plt.subplots()
    assert skp.plot_smart(sk.fixed(4), 64, max_display=8, ax=ax2) is fig2
    density = (fixed > 0).reshape(8, 8, 8, 8).mean(axis=(1, 3))  # 8 x 8 tiles of 8 x 8 cells
    shown = ax2.images[0].get_array()
    np.testing.assert_array_equal(np.ma.getmaskarray(shown), density == 0)
    np.testing.assert_allclose(shown.filled(0), density, rtol=0, atol=1e-15)
    fig3, axes = plt.subplots(1, 2)
    assert skp.plot_comparison([sk.causal(), sk.fixed(4)], 16, axes=axes) is fig3
    np.testing.assert_array_equal(axes[0].images[0].get_array(), causal)
    fixed16 = brute_force_labels(family_labels("fixed", block=4, summary=1), 16)
    np.testing.assert_array_equal(axes[1].images[0].get_array(), fixed16)
    plt.close("all")


def test_reduce_blocks_keeps_every_nonempty_tile():
    p = sk.random(1, seed=3)
    density, tile = skp.reduce_blocks(p, 1000, max_display=100)
    assert tile == 10 and density.shape == (100, 100)
    np.testing.assert_array_equal(density > 0, p.blocks(1000, 10) > 0)
    assert density.sum() * 100 == pytest.approx(p.nnz(1000))


def test_full_png_has_one_pixel_per_cell(tmp_path):
    path = skp.save_full_png(sk.fixed(8), 40, tmp_path / "full.png")
    image = plt.imread(path)
    assert image.shape[:2] == (40, 40)
    assert [p.name for p in tmp_path.iterdir()] == ["full.png"]


def test_bad_plot_arguments():
    with pytest.raises(ValueError, match=r"sample_size must be an integer in \[1, 8\]"):
        skp.plot_mask(sk.causal(), 8, sample_size=9)
    with pytest.raises(ValueError, match="patterns must hold at least one pattern"):
        skp.plot_comparison([], 8)
    with pytest.raises(ValueError, match="titles must have one entry per pattern"):
        skp.plot_comparison([sk.causal()], 8, titles=["a", "b"])


def test_static_slider_frames_have_alt_text():
    html = skp.animate([sk.causal(), sk.fixed(4)], 16, alt="two masks").data
    assert '<img alt="two masks" id="_anim_img' in html
    assert 'class="anim-slider" aria-label="Frame"' in html


def test_layout_text_draws_the_block_codes():
    assert skp.layout_text(sk.causal().blocks(8, 4)) == "+ .\n# +"
    with pytest.raises(ValueError, match="layout must be a 2-D array of block codes"):
        skp.layout_text(np.array([[3]]))


def test_block_layout_outlines_every_non_empty_tile_and_states_both_densities():
    p, n, b = sk.sliding_window(8), 50, 16
    fig = skp.plot_block_layout(p, n, b)
    ax = fig.axes[0]
    layout = p.blocks(n, b)
    colours = [matplotlib.colors.to_hex(r.get_edgecolor()) for r in ax.patches]
    assert len(ax.patches) == np.count_nonzero(layout)
    # Full tiles dark purple, partial light purple (the documented tile palette).
    assert colours.count("#3d0f5c") == np.count_nonzero(layout == 2)
    assert colours.count("#8856b0") == np.count_nonzero(layout == 1)
    sizes = np.minimum(b, n - np.arange(0, n, b))
    worked = (sizes[:, None] * sizes[None, :])[layout > 0].sum() / n**2
    assert f"block density {worked:.1%}" in ax.get_title()
    assert f"token density {p.density(n):.1%}" in ax.get_title()
    plt.close(fig)


def _frames(html: str) -> list[np.ndarray]:
    """The frames a static slider embeds, decoded from their base64 PNGs."""
    import base64
    import io
    import re

    # The template breaks each base64 string into lines ending in a backslash.
    encoded = re.findall(r'data:image/png;base64,([A-Za-z0-9+/=\\\s]+)"', html)
    return [plt.imread(io.BytesIO(base64.b64decode(re.sub(r"[\\\s]", "", e))), format="png") for e in encoded]


def test_static_slider_frames_are_legible_and_nothing_is_cut_off():
    html = skp.animate([sk.causal(), sk.strided(4, 4)], 32, alt="two masks").data
    frames = _frames(html)
    assert len(frames) == 2
    for frame in frames:
        height, width = frame.shape[:2]
        # 4.6 x 4.8 inches at 110 dpi, not at the notebook's 72 (the writer rounds to a few pixels).
        assert abs(width - 4.6 * 110) <= 4 and abs(height - 4.8 * 110) <= 4, (width, height)
        # The y-axis label and the title stay inside the picture: its outer pixels are all white.
        rgb = frame[..., :3]
        for edge in (rgb[:, :2], rgb[:, -2:], rgb[:2], rgb[-2:]):
            assert edge.min() == 1.0, "something is drawn over the edge of the frame"


@pytest.mark.filterwarnings("ignore:Animation was deleted without rendering")
def test_static_slider_dpi_is_checked():
    import gc

    from matplotlib.animation import FuncAnimation

    fig, ax = plt.subplots()
    anim = FuncAnimation(fig, lambda k: [], frames=1)
    with pytest.raises(ValueError, match="dpi"):
        skp.jshtml(anim, alt="x", dpi=5)
    plt.close(fig)
    del anim  # never rendered: matplotlib warns when it is collected, so here and not in a later test
    gc.collect()


def test_comparison_stacks_at_most_three_panels_per_row():
    patterns = [sk.causal(), sk.strided(4, 4), sk.fixed(4), sk.sliding_window(4), sk.window(2)]
    fig = skp.plot_comparison(patterns, 16)
    drawn = [ax for ax in fig.axes if ax.images]
    assert len(drawn) == 5
    assert len({round(ax.get_position().y0, 3) for ax in drawn}) == 2  # two rows: 3 + 2
    assert fig.get_figwidth() <= 9.0
    plt.close(fig)


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_comparison_titles_and_legend_fit_inside_the_figure(count):
    patterns = [sk.causal(), sk.strided(16, 16), sk.fixed(16), sk.sliding_window(16), sk.window(2)][:count]
    fig = skp.plot_comparison(patterns, 1024, 128)
    fig.canvas.draw()
    drawn = fig.get_tightbbox(fig.canvas.get_renderer())  # inches
    width, height = fig.get_size_inches()
    assert drawn.x0 >= 0 and drawn.y0 >= 0 and drawn.x1 <= width + 1e-6 and drawn.y1 <= height + 1e-6
    plt.close(fig)


def test_overview_colour_bar_has_readable_percent_ticks():
    fig = skp.plot_smart(sk.sliding_window(8), 1024, max_display=64)
    fig.canvas.draw()
    bar = fig.axes[1]
    low, high = bar.get_ylim()
    labels = [t.get_text() for t in bar.get_yticklabels() if low <= t.get_position()[1] <= high]
    assert len(labels) >= 3, labels
    assert all(label.endswith("%") for label in labels), labels
    plt.close(fig)

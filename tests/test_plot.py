"""Plot helpers: take ``ax=None`` or an axes, return the figure, and draw what the views compute."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

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
    fig, ax = plt.subplots()
    assert skp.plot_mask(sk.causal(), 8, ax=ax) is fig
    fig2, ax2 = plt.subplots()
    assert skp.plot_smart(sk.fixed(4), 64, max_display=8, ax=ax2) is fig2
    fig3, axes = plt.subplots(1, 2)
    assert skp.plot_comparison([sk.causal(), sk.fixed(4)], 16, axes=axes) is fig3
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
    assert colours.count(matplotlib.colors.to_hex("seagreen")) == np.count_nonzero(layout == 2)
    sizes = np.minimum(b, n - np.arange(0, n, b))
    worked = (sizes[:, None] * sizes[None, :])[layout > 0].sum() / n**2
    assert f"block density {worked:.1%}" in ax.get_title()
    assert f"token density {p.density(n):.1%}" in ax.get_title()
    plt.close(fig)

"""Pictures of patterns: labelled masks, crops, comparisons, block-reduced overviews and full PNGs.

Every helper takes ``ax=None`` (a new figure is made when it is ``None``) and returns the figure.
Figures get an explicit white background so they read the same on light and dark pages.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from ._io import atomic_write
from ._validate import check_int, check_size
from .pattern import LABEL_NAMES, Pattern

#: Colours of the label codes 0 to 3 (no attention, diagonal, local, strided/column/global/random).
#: Chosen for print and grayscale: each allowed code has at least 3:1 contrast (WCAG non-text) against
#: the light background and the three get lighter in that order (black, blue, orange). The seed project
#: drew them lightgray, darkblue, royalblue and skyblue; skyblue on lightgray is only about 1.2:1.
LABEL_COLORS = ("#f2f2f2", "#000000", "#1c4f9c", "#cc5f00")
LABEL_CMAP = ListedColormap(LABEL_COLORS, name="sparsekit_labels")


def _axes(ax, figsize=(5, 5)):
    if ax is None:
        fig, ax = plt.subplots(figsize=figsize, facecolor="white")
    else:
        fig = ax.figure
    fig.patch.set_facecolor("white")
    return fig, ax


def _wrap(text: str, width: int = 30) -> str:
    return "\n".join(textwrap.wrap(text, width, break_long_words=False)) or text


def _legend(ax, codes: Sequence[int]) -> None:
    handles = [Patch(facecolor=LABEL_COLORS[c], edgecolor="gray", label=LABEL_NAMES[c]) for c in codes]
    ax.legend(handles=handles, loc="upper right", fontsize="small", framealpha=0.9)


def plot_mask(
    pattern: Pattern,
    n: int,
    sample_size: int | None = None,
    ax=None,
    title: str | None = None,
    legend: bool = True,
    annotate: bool = True,
):
    """Draw the labelled mask of ``pattern`` at length ``n`` (or its top-left ``sample_size`` crop).

    The annotation gives the exact sparsity of the whole ``n x n`` mask, even when only a crop is
    drawn, so the crop never misrepresents the number.

    Parameters
    ----------
    pattern : Pattern
        The pattern to draw.
    n : int
        Sequence length.
    sample_size : int, optional
        Draw only the top-left ``sample_size x sample_size`` cells; in ``[1, n]``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure when omitted.
    title : str, optional
        Title; the pattern's name by default.
    legend, annotate : bool
        Show the colour legend and the sparsity annotation.

    Returns
    -------
    matplotlib.figure.Figure
    """
    n = check_size(n)
    shown = n if sample_size is None else check_int("sample_size", sample_size, low=1, high=n)
    bound = pattern.bind(n)
    idx = np.arange(shown)
    labels = bound.label(idx[:, None], idx[None, :])
    fig, ax = _axes(ax)
    ax.imshow(labels, cmap=LABEL_CMAP, vmin=0, vmax=3, interpolation="nearest")
    crop = "" if shown == n else f" (top-left {shown} x {shown} of {n} x {n})"
    ax.set_title(title if title is not None else _wrap(pattern.name + crop, 48), fontsize="medium")
    ax.set_xlabel("key / value index j")
    ax.set_ylabel("query index i")
    if annotate:
        ax.text(
            0.02,
            0.02,
            f"sparsity {pattern.sparsity(n):.4%} at n = {n}",
            transform=ax.transAxes,
            fontsize="small",
            bbox={"facecolor": "white", "alpha": 0.85, "edgecolor": "none"},
        )
    if legend:
        _legend(ax, sorted(set(np.unique(labels).tolist()) | {0}))
    return fig


def plot_comparison(
    patterns: Sequence[Pattern],
    n: int,
    sample_size: int | None = None,
    titles: Sequence[str] | None = None,
    ncols: int | None = None,
    axes=None,
):
    """Small multiples: several patterns side by side at the same length and crop.

    Parameters
    ----------
    patterns : sequence of Pattern
        Patterns to compare.
    n : int
        Sequence length.
    sample_size : int, optional
        Crop drawn for each pattern.
    titles : sequence of str, optional
        One title per pattern; the names by default.
    ncols : int, optional
        Panels per row; at most three by default, so that the figure stays about 9 inches wide and
        its 10 pt titles read at about 10 px in the book's 690 px column.
    axes : array of Axes, optional
        Axes to draw on, at least ``len(patterns)``.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if not patterns:
        raise ValueError("patterns must hold at least one pattern")
    if titles is not None and len(titles) != len(patterns):
        raise ValueError(f"titles must have one entry per pattern ({len(patterns)}), got {len(titles)}")
    count = len(patterns)
    ncols = min(count, 3) if ncols is None else check_int("ncols", ncols, low=1)
    nrows = -(-count // ncols)
    own_figure = axes is None
    if own_figure:
        # The four-entry legend takes one row in about 8 inches, two rows in 5, four in less.
        width = 3.0 * ncols
        columns = 4 if width >= 8 else 2 if width >= 5 else 1
        size = (width, 3.5 * nrows + 0.25 * (4 // columns) + 0.35)
        fig, axes = plt.subplots(nrows, ncols, figsize=size, facecolor="white", layout="constrained")
    axes = np.atleast_1d(axes).ravel()
    fig = axes[0].figure
    for k, (ax, pattern) in enumerate(zip(axes, patterns, strict=False)):
        plot_mask(pattern, n, sample_size, ax=ax, legend=False, annotate=False)
        name = titles[k] if titles is not None else pattern.name
        ax.set_title(f"{_wrap(name, 28)}\nsparsity {pattern.sparsity(n):.2%}", fontsize="medium")
        ax.set_xlabel("")
        ax.set_ylabel("")
    for ax in axes[count:]:
        ax.axis("off")
    handles = [Patch(facecolor=LABEL_COLORS[c], edgecolor="gray", label=LABEL_NAMES[c]) for c in range(4)]
    if own_figure:
        fig.legend(handles=handles, loc="outside lower center", ncol=columns, frameon=False)
    else:
        fig.legend(handles=handles, loc="lower center", ncol=4, fontsize="small", frameon=False)
        fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def layout_text(layout: np.ndarray) -> str:
    """A block layout as text, one tile row per line: ``.`` empty, ``+`` partial, ``#`` full."""
    layout = np.asarray(layout)
    if layout.ndim != 2 or layout.size and (layout.min() < 0 or layout.max() > 2):
        raise ValueError("layout must be a 2-D array of block codes 0, 1 and 2 (see Pattern.blocks)")
    return "\n".join(" ".join(".+#"[code] for code in row) for row in layout.tolist())


#: Colours of the block codes 0 to 2 (empty, partial, full) in :func:`plot_block_layout`: purples, so
#: that no tile class reuses a label colour; partial and full have 5:1 and 15:1 contrast against white.
BLOCK_COLORS = ("white", "#8856b0", "#3d0f5c")


def plot_block_layout(pattern: Pattern, n: int, block_size: int, ax=None, title: str | None = None):
    """The mask of ``pattern`` at length ``n`` with its ``block_size`` tiles drawn over it.

    Partial tiles are outlined in light purple and full tiles in dark purple; empty tiles (skipped by a
    block-sparse kernel) are left plain. The title compares the token density (allowed cells) with the
    block density (cells inside non-empty tiles, i.e. the work a block-sparse kernel does).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.patches import Rectangle

    n = check_size(n)
    b = check_int("block_size", block_size, low=1)
    layout = pattern.blocks(n, b)
    fig, ax = _axes(ax)
    plot_mask(pattern, n, ax=ax, legend=False, annotate=False)
    for (i, j), code in np.ndenumerate(layout):
        if code:
            h, w = min(b, n - i * b), min(b, n - j * b)
            ax.add_patch(
                Rectangle(
                    (j * b - 0.5, i * b - 0.5),
                    w,
                    h,
                    facecolor=BLOCK_COLORS[code],
                    alpha=0.25,
                    edgecolor=BLOCK_COLORS[code],
                    linewidth=1.2,
                )
            )
    default = (
        f"{_wrap(pattern.name, 40)}, tiles of {b}\n"
        f"token density {pattern.density(n):.1%}, block density {pattern.tile_density(n, b):.1%}"
    )
    ax.set_title(title if title is not None else default, fontsize="small")
    return fig


def reduce_blocks(pattern: Pattern, n: int, max_display: int = 256) -> tuple[np.ndarray, int]:
    """Density of each tile when the mask is reduced to at most ``max_display`` tiles per side.

    Returns the ``(tiles, tiles)`` array of allowed fractions and the tile size used. Every tile
    with at least one allowed cell has a positive value, so thin structure stays visible.
    """
    n = check_size(n)
    max_display = check_int("max_display", max_display, low=1)
    tile = -(-n // max_display)
    counts = pattern.block_counts(n, tile)
    sizes = np.minimum(tile, n - np.arange(0, n, tile))
    return counts / (sizes[:, None] * sizes[None, :]), tile


def plot_smart(pattern: Pattern, n: int, max_display: int = 256, ax=None, title: str | None = None):
    """Overview of a long mask: exact per-tile density on a grid of at most ``max_display`` tiles.

    Unlike a crop, every part of the mask is shown; unlike plain down-sampling, a tile containing a
    single allowed cell is never dropped (its density is positive and drawn on a log colour scale).

    Returns
    -------
    matplotlib.figure.Figure
    """
    from matplotlib.colors import LogNorm

    density, tile = reduce_blocks(pattern, n, max_display)
    fig, ax = _axes(ax, figsize=(5.6, 5))
    positive = density[density > 0]
    floor = positive.min() if positive.size else 1.0
    shown = np.ma.masked_equal(density, 0)
    cmap = plt.get_cmap("Blues").with_extremes(bad="lightgray")
    image = ax.imshow(
        shown,
        cmap=cmap,
        norm=LogNorm(vmin=min(floor, 0.999), vmax=1.0),
        interpolation="nearest",
        extent=(0, n, n, 0),
    )
    bar = fig.colorbar(image, ax=ax, label="allowed share of the tile", fraction=0.046, pad=0.04)
    _percent_ticks(bar, image.norm.vmin)
    default = f"{_wrap(pattern.name, 48)}\nn = {n}, {tile} x {tile} tiles"
    ax.set_title(title or default, fontsize="small")
    ax.set_xlabel("key / value index j")
    ax.set_ylabel("query index i")
    fig.tight_layout()
    return fig


def _percent_ticks(bar, vmin: float) -> None:
    """Label a log colour bar from ``vmin`` to 1 in percent, at 1-2-5 steps (decades over 3 decades).

    Matplotlib's default log ticks are powers of ten only (often two of them, as 10^-1 and 10^0).
    """
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    decades = np.log10(1 / vmin) if vmin > 0 else 1.0
    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if decades <= 3 else (1.0,)))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{100 * value:.3g}%"))


def save_full_png(pattern: Pattern, n: int, path: str | os.PathLike, max_bytes: int | None = None) -> str:
    """Write the labelled mask as a PNG with one pixel per cell (``n x n`` pixels), atomically.

    Returns the path written.
    """
    labels = pattern.labels(n, max_bytes=max_bytes)
    rgba = (LABEL_CMAP(np.arange(4)) * 255).astype(np.uint8)[labels]
    atomic_write(path, lambda tmp: plt.imsave(tmp, rgba, format="png"))
    return os.fspath(path)


def save_figure(fig, path: str | os.PathLike, dpi: int = 110, close: bool = True) -> str:
    """Save ``fig`` as PNG atomically with a white background; returns the path.

    The figure is closed afterwards (``close=True``), so a notebook cell that saves it shows nothing:
    the book shows the saved file once, through its numbered ``{figure}`` directive.
    """
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=dpi, facecolor="white"))
    if close:
        plt.close(fig)
    return os.fspath(path)


def jshtml(anim, alt: str, default_mode: str = "once", dpi: int = 110):
    """A matplotlib animation as a static slider (``to_jshtml``) whose frame image has alt text.

    The frames are drawn at ``dpi`` (the book's figures use 110), not at the figure's screen dpi
    (72 in a notebook), so a 10 pt label is about 15 pixels tall on the page. Returns the
    ``IPython.display.HTML`` object; the page needs no kernel to move through frames.

    Examples
    --------
    >>> import matplotlib.pyplot as plt
    >>> from matplotlib.animation import FuncAnimation
    >>> fig, ax = plt.subplots(figsize=(3, 3), layout="constrained")
    >>> def draw(k):
    ...     ax.set_title(f"frame {k}")
    >>> anim = FuncAnimation(fig, draw, frames=2)
    >>> html = jshtml(anim, alt="Two frames, each titled with its number")
    >>> plt.close(fig)
    """
    from html import escape

    from IPython.display import HTML

    dpi = check_int("dpi", dpi, low=20, high=600)
    with plt.rc_context({"savefig.dpi": dpi}):
        page = anim.to_jshtml(default_mode=default_mode)
    page = page.replace("<img id=", f'<img alt="{escape(alt)}" id=', 1)
    # The frame slider needs a name for screen readers (axe-core: "Form elements must have labels").
    return HTML(page.replace('class="anim-slider"', 'class="anim-slider" aria-label="Frame"', 1))


def animate(
    frames: Sequence[Pattern],
    n: int,
    sample_size: int | None = None,
    titles=None,
    interval=700,
    alt: str | None = None,
):
    """A static slider for the published page: one labelled mask per frame, as HTML (``to_jshtml``).

    ``alt`` describes the frames for readers who cannot see them (default: the frames' names).
    Frames are drawn at 110 dpi with a layout that keeps the axis labels inside the picture.
    Returns the ``IPython.display.HTML`` object; the page needs no kernel to move through frames.

    Examples
    --------
    >>> import sparsekit as sk
    >>> frames = [sk.strided(w, w) for w in (4, 8)]
    >>> alt = "Strided masks at n = 64 for windows 4 and 8"
    >>> slider = animate(frames, 64, alt=alt)
    """
    from matplotlib.animation import FuncAnimation

    if not frames:
        raise ValueError("frames must hold at least one pattern")
    # Constrained layout re-fits every frame, so the y-axis label is never cut off at the left.
    fig, ax = plt.subplots(figsize=(4.6, 4.8), facecolor="white", layout="constrained")

    def draw(k):
        ax.clear()
        plot_mask(frames[k], n, sample_size, ax=ax, legend=False, annotate=False)
        name = titles[k] if titles is not None else frames[k].name
        ax.set_title(f"{_wrap(name, 40)}\nsparsity {frames[k].sparsity(n):.2%}", fontsize="medium")
        return []

    anim = FuncAnimation(fig, draw, frames=len(frames), interval=interval)
    if alt is None:
        alt = f"Labelled masks at n = {n}, one frame each: " + ", ".join(p.name for p in frames)
    html = jshtml(anim, alt)
    plt.close(fig)
    return html

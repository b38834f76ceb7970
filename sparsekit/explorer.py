"""A live pattern explorer: a pattern picker, one labelled slider per parameter, the mask and its numbers.

``sparsekit.explore()`` returns an ipywidgets box that works in any notebook with a running kernel;
``make explore`` serves the same box as a page without code. Voilà was chosen for that page because it
runs ``explore/explorer.ipynb`` in a kernel of its own per visitor and shows only the widgets (no code,
no notebook interface to learn), and because the page and the notebooks then share this one
implementation; a JupyterLab layout would still show the reader a notebook and its toolbar.

Every family's sliders come from its factory's signature (one slider per parameter, described by the
parameter's name) with the ranges of :data:`FAMILIES`. A move redraws by updating the data of one
matplotlib figure that is kept (``AxesImage.set_data``, ``Line2D.set_data``) and rendering it with Agg
to PNG bytes for an ``ipywidgets.Image``: no figure is created, no pyplot state, no output area
cleared. Sliders update on release (``continuous_update=False``), so a drag costs one redraw. Above
``exact_limit`` tokens the picture is the block-reduced view of :func:`sparsekit.plot.reduce_blocks`
(the allowed share of each tile), and the page says so.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable

import numpy as np

from ._validate import check_int
from .live import PIXELS, LiveFigure, mask_picture, picture_rgba
from .pattern import LABEL_NAMES, Pattern
from .plot import LABEL_COLORS, _wrap

#: Slider range of each factory parameter, as ``(start, low, high, step)``. The keys of each family are
#: its factory's parameters (checked at import); ``seed`` varies the random parts reproducibly.
FAMILIES: dict[str, dict[str, tuple[int, int, int, int]]] = {
    "causal": {},
    "strided": {"window": (32, 0, 256, 1), "stride": (32, 1, 256, 1)},
    "fixed": {"block": (32, 1, 256, 1), "summary": (4, 0, 32, 1)},
    "sliding_window": {"window": (32, 0, 256, 2)},
    "dilated_sliding_window": {"window": (16, 0, 128, 2), "dilation": (2, 1, 8, 1)},
    "block_local": {"block": (64, 1, 256, 1)},
    "axial": {"height": (32, 1, 64, 1), "width": (32, 1, 64, 1)},
    "longformer": {"window": (32, 0, 256, 2), "global_width": (4, 0, 64, 1)},
    "bigbird": {
        "nz_per_row": (3, 0, 32, 1),
        "diagonal_width": (3, 0, 64, 1),
        "global_width": (2, 0, 64, 1),
        "seed": (0, 0, 99, 1),
    },
    "attention_sinks": {"sinks": (4, 0, 16, 1), "window": (32, 1, 256, 1)},
    "prefix_lm": {"prefix": (128, 0, 1024, 16)},
    "chunked": {"chunk": (64, 1, 512, 1)},
    "neighborhood_2d": {
        "height": (32, 1, 64, 1),
        "width": (32, 1, 64, 1),
        "kernel_height": (7, 1, 63, 2),
        "kernel_width": (7, 1, 63, 2),
    },
    "bigbird_blocks": {
        "block_size": (64, 1, 256, 1),
        "random_blocks": (3, 0, 8, 1),
        "window_blocks": (3, 1, 9, 1),
        "global_blocks": (2, 0, 4, 1),
        "seed": (0, 0, 99, 1),
    },
}

#: Slider maxima that follow another parameter: the factories' own range checks, shown as limits.
#: ``(family, parameter): (the parameter it follows, its maximum for that value)``.
LINKED_MAXIMA = {
    ("fixed", "summary"): ("block", lambda block: min(block, 32)),
    ("neighborhood_2d", "kernel_height"): ("height", lambda height: height - 1 + height % 2),  # odd
    ("neighborhood_2d", "kernel_width"): ("width", lambda width: width - 1 + width % 2),
}

#: Families laid out on a ``height x width`` grid: their length is ``height * width``, not the n slider.
GRID_FAMILIES = frozenset({"axial", "neighborhood_2d"})
#: Tile sizes offered for the tile sparsity.
TILE_SIZES = (8, 16, 32, 64, 128, 256)
#: Parameters a factory has that the explorer sets itself (bigbird's ``size`` binds the random part
#: early, which the views do anyway).
_NOT_SLIDERS = frozenset({"size"})


def factory(family: str) -> Callable[..., Pattern]:
    """The pattern factory of ``family`` (a key of :data:`FAMILIES`)."""
    import sparsekit

    if family not in FAMILIES:
        raise ValueError(f"family must be one of {sorted(FAMILIES)}, got {family!r}")
    return getattr(sparsekit, family)


def slider_parameters(family: str) -> list[str]:
    """The factory parameters of ``family`` that get a slider, in the signature's order."""
    names = [p for p in inspect.signature(factory(family)).parameters if p not in _NOT_SLIDERS]
    if sorted(names) != sorted(FAMILIES[family]):
        raise RuntimeError(f"FAMILIES[{family!r}] does not match the factory's parameters {names}")
    return names


def build(family: str, values: dict[str, int], n: int) -> tuple[Pattern, int]:
    """The pattern ``family(**values)`` and the length it is shown at (``height * width`` on a grid)."""
    pattern = factory(family)(**{name: values[name] for name in slider_parameters(family)})
    length = values["height"] * values["width"] if family in GRID_FAMILIES else n
    return pattern, length


def summary_text(pattern: Pattern, n: int, tile: int) -> str:
    """The numbers the explorer prints for ``pattern`` at length ``n`` and tile size ``tile``."""
    tile = min(tile, n)
    return (
        f"n = {n}: exact sparsity {pattern.sparsity(n):.4%} ({pattern.nnz(n):,} of {n * n:,} cells allowed); "
        f"tile sparsity {pattern.block_sparsity(n, tile):.4%} of the {tile} x {tile} tiles are empty"
    )


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 5, 10, 20, 50, ... that is at least ``value`` (an axis top that rarely moves)."""
    top = 1.0
    while top < value:
        for step in (2, 2.5, 2):  # 1 -> 2 -> 5 -> 10
            top *= step
            if top >= value:
                break
    return top


def legend_html(codes) -> str:
    """The label legend (colours of :data:`sparsekit.plot.LABEL_COLORS`) for the codes shown, as HTML."""
    swatch = (
        "<span style='display:inline-block;width:1em;height:1em;border:1px solid gray;background:{}'></span>"
    )
    return " ".join(
        f"{swatch.format(LABEL_COLORS[code])}</span> {html.escape(LABEL_NAMES[code])}&nbsp;"
        for code in sorted(set(codes) | {0})
    )


class Explorer:
    """The explorer's widgets and its one figure; its ``widget`` is what a notebook displays.

    Parameters
    ----------
    family : str
        The pattern shown first, a key of :data:`FAMILIES`.
    n : int
        Sequence length shown first; in ``[64, 16384]``.
    tile : int
        Tile size for the tile sparsity, one of :data:`TILE_SIZES`.
    exact_limit : int
        Longest length drawn cell by cell; longer ones show the block-reduced view. ``>= 64``.
    """

    def __init__(self, family: str = "strided", n: int = 1024, tile: int = 64, exact_limit: int = 2048):
        import ipywidgets as widgets

        factory(family)
        n = check_int("n", n, low=64, high=16384)
        if tile not in TILE_SIZES:
            raise ValueError(f"tile must be one of {TILE_SIZES}, got {tile!r}")
        self.exact_limit = check_int("exact_limit", exact_limit, low=64)
        self.pixels = PIXELS  # about the mask's width on the page
        style = {"description_width": "initial"}
        self.picker = widgets.Dropdown(options=list(FAMILIES), value=family, description="pattern")
        self.n = widgets.IntSlider(
            value=n, min=64, max=16384, step=64, description="n", continuous_update=False, style=style
        )
        self.tile = widgets.SelectionSlider(
            options=TILE_SIZES, value=tile, description="tile", continuous_update=False, style=style
        )
        self.sliders = {
            (fam, name): widgets.IntSlider(
                value=start, min=low, max=high, step=step, description=name,
                continuous_update=False, style=style,
            )
            for fam in FAMILIES
            for name, (start, low, high, step) in FAMILIES[fam].items()
        }  # fmt: skip
        self.parameters = widgets.VBox()
        self.readout = widgets.HTML()
        self.note = widgets.HTML()
        self.legend = widgets.HTML()
        self._figure()
        controls = widgets.HBox([self.picker, self.n, self.tile])
        self.widget = widgets.VBox(
            [controls, self.parameters, self.image, self.legend, self.readout, self.note]
        )
        for (fam, name), (source, maximum) in LINKED_MAXIMA.items():
            linked, followed = self.sliders[fam, name], self.sliders[fam, source]
            linked.max = maximum(followed.value)
            # Registered before the redraw below, so a clamped value is in place when it runs.
            follow = lambda change, s=linked, m=maximum: setattr(s, "max", m(change.new))  # noqa: E731
            followed.observe(follow, names="value")
        self.picker.observe(self._family_changed, names="value")
        for control in (self.n, self.tile, *self.sliders.values()):
            control.observe(self._changed, names="value")
        self._family_changed()

    def _figure(self) -> None:
        # One figure for the explorer's lifetime (sparsekit.live): a move changes its data, never its
        # structure; the axes are drawn again only when the frame (n, view, profile top) changes.
        self.view = LiveFigure(figsize=(8, 3.8), dpi=90)
        self.view.image.layout.width = "720px"
        self.image = self.view.image
        self.fig = self.view.figure
        self.ax_mask, self.ax_rows = self.fig.subplots(1, 2, width_ratios=(1, 1.1))
        self.im = self.ax_mask.imshow(np.zeros((2, 2, 4), dtype=np.uint8), interpolation="nearest")
        self.title = self.ax_mask.set_title(" ", fontsize="small")
        self.ax_mask.set_xlabel("key / value index j")
        self.ax_mask.set_ylabel("query index i")
        (self.line,) = self.ax_rows.plot([], [], lw=1.0, color="#1c4f9c")
        self.ax_rows.set_xlabel("query index i")
        self.ax_rows.set_ylabel("allowed keys in row i")
        self.ax_rows.set_title("row-count profile", fontsize="medium")
        self.fig.subplots_adjust(left=0.08, right=0.98, top=0.88, bottom=0.14, wspace=0.3)
        self.view.animate(self.im, self.line, self.title)

    def values(self) -> dict[str, int]:
        """The current slider values of the chosen family, by parameter name."""
        family = self.picker.value
        return {name: self.sliders[family, name].value for name in FAMILIES[family]}

    def _family_changed(self, change=None) -> None:
        family = self.picker.value
        self.parameters.children = [self.sliders[family, name] for name in slider_parameters(family)]
        self.n.disabled = family in GRID_FAMILIES
        self._changed()

    def _changed(self, change=None) -> None:
        try:
            pattern, n = build(self.picker.value, self.values(), self.n.value)
            self._draw(pattern, n)
        except (ValueError, MemoryError) as error:  # a bad combination: say which, keep the last picture
            self.readout.value = f"<b style='color:#b00020'>{html.escape(str(error))}</b>"

    def _draw(self, pattern: Pattern, n: int) -> None:
        picture, exact, self.note.value = mask_picture(pattern, n, None, self.pixels, self.exact_limit)
        self.im.set_data(picture_rgba(picture, exact))
        self.legend.value = legend_html(np.unique(picture).tolist()) if exact else ""
        self.title.set_text(_wrap(pattern.name, 48))
        counts = pattern.row_counts(n)
        self.line.set_data(np.arange(n), counts)
        # Axes, ticks and labels depend only on n, the view and the profile's rounded top: drawn once per
        # change of those (the text is most of a full draw); a move redraws the image, line and title.
        frame = (n, exact, nice_ceiling(int(counts.max()) * 1.05))
        if frame != self.view.frame:
            self.im.set_extent((-0.5, n - 0.5, n - 0.5, -0.5))
            self.ax_rows.set_xlim(0, n - 1)
            self.ax_rows.set_ylim(0, frame[2])
            self.view.frame = frame
        # Numbers first, picture last: whoever sees the new picture also sees its numbers.
        self.readout.value = html.escape(summary_text(pattern, n, self.tile.value))
        self.view.render()


def explore(family: str = "strided", n: int = 1024, tile: int = 64, exact_limit: int = 2048):
    """The live pattern explorer as one ipywidgets box (needs a running kernel).

    A pattern picker, one slider per parameter of the chosen family (labelled with the parameter's
    name), ``n`` and the tile size; it shows the labelled mask with its legend, the row-count profile,
    the exact sparsity and the tile sparsity, and redraws on each slider release. See :class:`Explorer`
    for the parameters.

    Returns
    -------
    ipywidgets.VBox
    """
    return Explorer(family, n, tile, exact_limit).widget

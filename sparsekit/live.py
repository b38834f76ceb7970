"""Fast live cells: one kept figure redrawn in place and shown as an ``ipywidgets.Image``.

A chapter's live cell (and :mod:`sparsekit.explorer`) builds its figure once, marks the artists a
slider changes as animated, and on each change only updates their data and redraws them over a
cached background (the axes, ticks and labels, drawn again only when :attr:`LiveFigure.frame`
changes). The Agg pixels go to the page as a PNG (PIL at the lowest compression: a few ms) in an
``ipywidgets.Image``, which JupyterLab, Jupyter Notebook and Voila show without any extension beyond
ipywidgets. There is no pyplot state, no new figure per move and no output area cleared and refilled,
which is what made ``interact`` with ``plt.show()`` slow. Sliders send their value on release
(``continuous_update=False``): a drag costs one redraw, a key press one.

Example
-------
A live cell for the strided pattern, with its exact sparsity printed under the picture:

>>> import ipywidgets as widgets
>>> import sparsekit as sk
>>> from sparsekit import live
>>> view = live.MaskView()
>>> def draw(window, stride):
...     pattern = sk.strided(window, stride)
...     view.show(pattern, 1024, sample_size=128)
...     return f"sparsity {pattern.sparsity(1024):.2%}"
>>> slider = widgets.IntSlider
>>> box = live.interact(
...     draw, view,
...     window=slider(value=32, min=0, max=128, description="window"),
...     stride=slider(value=32, min=1, max=128, description="stride"),
... )
>>> box.children[-2].value  # the printed line; the cell ends with `box`
'<pre>sparsity 95.41%</pre>'

Any other figure works the same way: draw its static parts once on ``LiveFigure.figure``, pass the
artists that change to :meth:`LiveFigure.animate`, update them in ``draw`` and set
:attr:`LiveFigure.frame` to whatever the static parts depend on (axis limits, tick labels).
"""

from __future__ import annotations

import html
import io
from collections.abc import Callable, Collection, Hashable

import numpy as np
import PIL.Image
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.patches import Patch

from ._validate import check_int
from .pattern import LABEL_NAMES, Pattern
from .plot import LABEL_COLORS, _wrap, reduce_blocks

#: Side of a live mask picture in pixels: about its width on the page, so pooling to it loses nothing
#: the screen would show.
PIXELS = 320
#: Longest length a live mask is drawn cell by cell (pooled to :data:`PIXELS`); longer ones show the
#: block-reduced view (the allowed share of each tile), which costs tiles, not cells.
EXACT_LIMIT = 2048
#: CSS class of the printed line under a live picture (the browser tests find it by this class).
TEXT_CLASS = "sparsekit-live-text"


def png_bytes(rgba: np.ndarray) -> bytes:
    """An RGB(A) pixel array as PNG bytes: PIL at the lowest compression, about ten times faster than
    matplotlib's writer for a few percent more bytes (local page, nothing to save on the wire)."""
    buffer = io.BytesIO()
    PIL.Image.fromarray(np.ascontiguousarray(rgba[..., :3])).save(buffer, format="png", compress_level=1)
    return buffer.getvalue()


class LiveFigure:
    """One matplotlib figure kept for a live cell's lifetime, rendered with Agg into an ``Image`` widget.

    Parameters
    ----------
    figsize : tuple of float
        Figure size in inches.
    dpi : int
        Pixels per inch of the rendered PNG; in ``[30, 300]``.
    width : int, optional
        Width of the picture on the page in CSS pixels (the PNG is scaled to it); its own width if omitted.
    """

    def __init__(self, figsize: tuple[float, float] = (5.0, 5.0), dpi: int = 90, width: int | None = None):
        import ipywidgets as widgets

        dpi = check_int("dpi", dpi, low=30, high=300)
        self.figure = Figure(figsize=figsize, dpi=dpi, facecolor="white")
        FigureCanvasAgg(self.figure)
        layout = {} if width is None else {"width": f"{check_int('width', width, low=16)}px"}
        self.image = widgets.Image(format="png", layout=layout)
        #: What the static parts of the figure depend on; a change makes the next render draw them again.
        self.frame: Hashable = None
        self._animated: list = []
        self._drawn_frame: Hashable = object()
        self._background = None

    def animate(self, *artists) -> None:
        """Mark ``artists`` as the ones a move changes; they are drawn in this order over the background.

        An image is followed by its axes' spines, which a full draw puts above it.
        """
        for artist in artists:
            above = list(artist.axes.spines.values()) if isinstance(artist, AxesImage) else []
            for drawn in (artist, *above):
                drawn.set_animated(True)
                self._animated.append(drawn)

    def render(self) -> bytes:
        """Redraw the animated artists (and the rest when :attr:`frame` changed); show and return the PNG."""
        canvas = self.figure.canvas
        if self.frame != self._drawn_frame or self._background is None:
            canvas.draw()  # everything but the animated artists
            self._background = canvas.copy_from_bbox(self.figure.bbox)
            self._drawn_frame = self.frame
        canvas.restore_region(self._background)
        for artist in self._animated:
            self.figure.draw_artist(artist)
        picture = png_bytes(np.asarray(canvas.buffer_rgba()))
        self.image.value = picture
        return picture


def pool_labels(labels: np.ndarray, pixels: int) -> tuple[np.ndarray, int]:
    """Shrink a label image to at most ``pixels`` per side, each pixel the highest code of its group.

    A screen shows at most ``pixels`` per side anyway; taking the highest code (rather than letting the
    browser or matplotlib sample one cell) keeps every allowed cell visible, so a thin diagonal or a
    single global column never disappears. Returns the pooled image and the group size (1: unchanged).
    """
    n = labels.shape[0]
    group = -(-n // check_int("pixels", pixels, low=1))
    if group == 1:
        return labels, 1
    padded = np.zeros((-(-n // group) * group,) * 2, dtype=labels.dtype)
    padded[:n, :n] = labels
    side = padded.shape[0] // group
    return padded.reshape(side, group, side, group).max(axis=(1, 3)), group


def mask_picture(
    pattern: Pattern,
    n: int,
    sample_size: int | None = None,
    pixels: int = PIXELS,
    exact_limit: int = EXACT_LIMIT,
) -> tuple[np.ndarray, bool, str]:
    """What a live cell shows of ``pattern`` at length ``n``: the picture, whether it is exact, and a note.

    Up to ``exact_limit`` cells per side (the top-left ``sample_size`` crop, or all ``n``) the picture
    holds label codes, pooled to ``pixels`` per side by :func:`pool_labels`; beyond, it is the
    block-reduced view of :func:`sparsekit.plot.reduce_blocks` (each pixel a tile's allowed share, in
    ``[0, 1]``). The note says which, in one sentence.
    """
    shown = n if sample_size is None else check_int("sample_size", sample_size, low=1, high=n)
    if shown <= exact_limit:
        if shown == n:
            labels = pattern.labels(n)  # the whole mask: the pattern's own (faster) labelled view
        else:
            idx = np.arange(shown)
            labels = pattern.bind(n).label(idx[:, None], idx[None, :])
        picture, group = pool_labels(labels, pixels)
        cells = f" of {n} x {n} cells" if shown == n else f", top-left {shown} x {shown} cells of {n} x {n}"
        pooled = "" if group == 1 else f", {group} x {group} cells a pixel (their highest label)"
        return picture, True, f"Exact mask{cells}{pooled}."
    picture, tile = reduce_blocks(pattern, n, max_display=pixels)
    return (
        picture,
        False,
        (
            f"Block-reduced view (n = {n}, above {exact_limit}): each pixel is a {tile} x {tile} tile, "
            "shaded by its allowed share (white: empty, dark: full)."
        ),
    )


class MaskView(LiveFigure):
    """A live labelled mask: :func:`sparsekit.plot.plot_mask`'s picture, title, legend and sparsity.

    ``show(pattern, n, sample_size)`` updates it; :func:`interact` renders it after each ``draw``.
    The picture is drawn as RGBA colours (:func:`picture_rgba`); the legend (all four label codes)
    sits under the axes, outside the picture, so it is drawn only with the axes.

    Parameters
    ----------
    figsize, dpi, width
        As for :class:`LiveFigure`.
    pixels, exact_limit : int
        As for :func:`mask_picture`.
    """

    def __init__(
        self,
        figsize: tuple[float, float] = (5.0, 5.6),
        dpi: int = 90,
        width: int | None = None,
        pixels: int = PIXELS,
        exact_limit: int = EXACT_LIMIT,
    ):
        super().__init__(figsize, dpi, width)
        self.pixels = check_int("pixels", pixels, low=1)
        self.exact_limit = check_int("exact_limit", exact_limit, low=1)
        self.ax = self.figure.add_subplot()
        self.im = self.ax.imshow(np.zeros((2, 2, 4), dtype=np.uint8), interpolation="nearest")
        self.title = self.ax.set_title(" ", fontsize="medium")
        self.ax.set_xlabel("key / value index j")
        self.ax.set_ylabel("query index i")
        self.sparsity = self.figure.text(0.5, 0.115, "", ha="center", fontsize="medium")
        handles = [
            Patch(facecolor=colour, edgecolor="gray", label=name)
            for colour, name in zip(LABEL_COLORS, LABEL_NAMES, strict=True)
        ]
        self.legend = self.figure.legend(
            handles=handles, loc="lower center", ncol=2, fontsize="small", frameon=False
        )
        self.figure.subplots_adjust(left=0.16, right=0.95, top=0.86, bottom=0.24)
        self.animate(self.im, self.title, self.sparsity)
        #: The sentence of :func:`mask_picture` for the picture shown.
        self.note = ""

    def show(self, pattern: Pattern, n: int, sample_size: int | None = None, title: str | None = None):
        """Put ``pattern`` at length ``n`` (its top-left ``sample_size`` crop) in the picture."""
        picture, exact, self.note = mask_picture(pattern, n, sample_size, self.pixels, self.exact_limit)
        shown = n if sample_size is None else sample_size
        self.im.set_data(picture_rgba(picture, exact))
        self.im.set_extent((-0.5, shown - 0.5, shown - 0.5, -0.5))
        crop = "" if shown == n else f" (top-left {shown} x {shown} of {n} x {n})"
        self.title.set_text(title if title is not None else _wrap(pattern.name + crop, 48))
        self.sparsity.set_text(f"sparsity {pattern.sparsity(n):.4%} at n = {n}")
        self.legend.set_visible(exact)  # the label colours; a block-reduced view shades shares instead
        self.frame = (shown, exact)  # the axis limits and ticks follow the side shown


#: The colour of each label code as RGBA bytes (the colours of :data:`sparsekit.plot.LABEL_COLORS`).
_LABEL_RGBA = (np.array([to_rgba(c) for c in LABEL_COLORS]) * 255).round().astype(np.uint8)


def picture_rgba(picture: np.ndarray, exact: bool) -> np.ndarray:
    """The colours of a :func:`mask_picture` as RGBA bytes: label colours, or purples for tile shares.

    Drawn as RGBA, an image costs matplotlib a copy; as codes it is resampled and colour-mapped on every
    draw, about ten times slower.
    """
    return _LABEL_RGBA[picture] if exact else colormaps["Purples"](picture, bytes=True)


def interact(
    draw: Callable[..., str | None],
    view: LiveFigure,
    /,
    *,
    shown: Callable[[dict], Collection[str]] | None = None,
    **controls,
):
    """A live cell: ``controls`` (widgets by parameter name), ``view``'s picture, a printed line and a note.

    On each change of a control, ``draw(**values)`` updates ``view``'s artists (and may return a line
    of text to print under the picture); ``view`` is then rendered. Called once at the start, so the
    cell's output shows the first picture. A ``ValueError`` from ``draw`` (a combination the pattern
    refuses) is printed in red and the last picture stays; any other exception is printed in red too
    and raised. Sliders get ``continuous_update=False`` (one
    redraw per release or key press) and, where missing, their parameter's name as visible label.

    ``shown(values)``, if given, names the sliders that matter for the current values (with a pattern
    picker: those of the chosen pattern); the other sliders are hidden (dropdowns always stay), so
    every slider in view changes the picture.

    Returns
    -------
    ipywidgets.VBox
        The controls, the picture, the printed line (CSS class ``sparsekit-live-text``) and the view's note.
    """
    import ipywidgets as widgets

    if not controls:
        raise ValueError("controls must name at least one widget, e.g. window=widgets.IntSlider(...)")
    text = widgets.HTML()
    text.add_class(TEXT_CLASS)
    note = widgets.HTML()
    for name, control in controls.items():
        if not control.description:
            control.description = name
        if hasattr(control, "continuous_update"):
            control.continuous_update = False
        control.style.description_width = "initial"

    def changed(change=None) -> None:
        values = {name: control.value for name, control in controls.items()}
        if shown is not None:
            visible = set(shown(values))
            for name, control in controls.items():
                if not isinstance(control, widgets.Dropdown):  # a picker always stays
                    control.layout.display = None if name in visible else "none"
        try:
            line = draw(**values)
        except ValueError as error:  # a combination the pattern refuses: say which, keep the last picture
            text.value = f"<b style='color:#b00020'>{html.escape(str(error))}</b>"
            return
        except Exception as error:  # a bug: shown in the cell too (ipywidgets logs it only to the console)
            text.value = f"<b style='color:#b00020'>{html.escape(f'{type(error).__name__}: {error}')}</b>"
            raise
        # The printed line first, the picture last: whoever sees the new picture also sees its numbers.
        text.value = "" if line is None else f"<pre>{html.escape(line)}</pre>"
        note.value = html.escape(getattr(view, "note", ""))
        view.render()

    for control in controls.values():
        control.observe(changed, names="value")
    changed()
    return widgets.VBox([*controls.values(), view.image, text, note])

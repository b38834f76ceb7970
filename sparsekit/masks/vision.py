"""The seed project's vision attention names, as exact sparsekit patterns over the pixels of a map.

A ``height x width`` feature map is read row-major into ``n = height * width`` tokens (pixel ``(r, c)``
is token ``r * width + c``, as in the image-patterns chapter). :func:`vision_pattern` turns the names
the seed project used for images (``"random"``, ``"block"``, ``"strided"``, ``"axial"``,
``"longformer"``, plus ``"dense"``) into sparsekit patterns bound to ``n``; the sparse-attention layer
of :mod:`sparsekit.torch.layers` runs them.
"""

from __future__ import annotations

from .._validate import check_fraction, check_int
from ..pattern import Pattern
from .image import axial
from .local import block_local, window
from .longrange import longformer, random
from .sparse_transformer import strided

__all__ = ["VISION_PATTERNS", "check_vision_options", "vision_pattern"]

#: Pattern names :func:`vision_pattern` accepts, each with its options and their defaults (``None``:
#: derived from the map, see :func:`vision_pattern`).
VISION_PATTERNS: dict[str, dict[str, object]] = {
    "random": {"attention_ratio": 0.1, "seed": 0},
    "block": {"block": 128},
    "strided": {"window": None, "stride": None},
    "axial": {},
    "longformer": {"window": None, "global_width": 4},
    "dense": {},
}


def vision_pattern(name: str | Pattern, height: int, width: int, **options: object) -> Pattern:
    """The sparsekit pattern called ``name`` over the ``height * width`` tokens of a row-major map.

    The returned pattern is bound to ``n = height * width`` (its views and predicate are ready to use).

    ``"random"``
        :func:`sparsekit.random`: each query attends to ``max(1, round(attention_ratio * n))`` distinct
        uniformly drawn keys; options ``attention_ratio`` in ``(0, 1]`` (default 0.1) and ``seed``
        (default 0). The draw depends on ``(seed, n)`` only.
    ``"block"``
        :func:`sparsekit.block_local` over the token sequence, option ``block`` (tokens, default 128).
        Blocks are runs of consecutive tokens, so a block of ``k * width`` tokens is a stripe of ``k``
        whole image rows (not a square patch). This keeps the pattern one exact sparsekit family, and
        with ``block`` a multiple of the FlexAttention tile (128 by default) every tile is either full
        or empty: the best case for a block-sparse kernel.
    ``"strided"``
        :func:`sparsekit.strided` (Sparse Transformer, causal), options ``window`` and ``stride``, both
        ``width`` by default: the previous ``width`` tokens (the current image row so far and the end of
        the row above) and every token straight above in the same image column.
    ``"axial"``
        :func:`sparsekit.axial` on the ``height x width`` grid: the whole image row and column.
    ``"longformer"``
        :func:`sparsekit.longformer`, options ``window`` (default ``2 * width``, so the band reaches the
        pixels directly above and below) and ``global_width`` (default 4, the first tokens are global).
    ``"dense"``
        Every token attends to every token, as the pattern ``~sparsekit.window(0)`` (the complement of
        the empty band); the sparse-attention layer runs it with dense ``scaled_dot_product_attention``.

    A sparsekit :class:`~sparsekit.Pattern` is accepted as it is (no options), bound to ``n``.

    Raises
    ------
    ValueError
        For an unknown name or option, a bad option value, or a pattern that does not fit ``n``.

    Examples
    --------
    >>> import sparsekit as sk
    >>> sk.vision_pattern("axial", 4, 6).name
    'axial(height=4, width=6)'
    """
    height = check_int("height", height, low=1)
    width = check_int("width", width, low=1)
    n = height * width
    if isinstance(name, Pattern):
        if options:
            raise ValueError(f"options {sorted(options)} only apply to pattern names, not to a Pattern")
        return name.bind(n)
    opts = check_vision_options(name, options)
    if name == "random":
        pattern = random(max(1, round(opts["attention_ratio"] * n)), seed=opts["seed"])
    elif name == "block":
        pattern = block_local(opts["block"])
    elif name == "strided":
        w, s = opts["window"], opts["stride"]
        pattern = strided(width if w is None else w, width if s is None else s)
    elif name == "axial":
        pattern = axial(height, width)
    elif name == "longformer":
        w = 2 * width if opts["window"] is None else opts["window"]
        pattern = longformer(w, check_int("global_width", opts["global_width"], low=0, high=n))
    else:  # dense
        pattern = ~window(0)
    return pattern.bind(n)


def check_vision_options(name: object, options: dict[str, object]) -> dict[str, object]:
    """Check a name of :data:`VISION_PATTERNS` and its options (all that does not depend on the map
    size); returns the options with their defaults filled in."""
    if not isinstance(name, str) or name not in VISION_PATTERNS:
        raise ValueError(
            f"pattern must be a sparsekit Pattern or one of {list(VISION_PATTERNS)}, got {name!r}"
        )
    allowed = VISION_PATTERNS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        names = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"pattern {name!r} takes the options [{names}], got unknown {unknown}")
    opts = {**allowed, **options}
    if name == "random":
        if check_fraction("attention_ratio", opts["attention_ratio"]) == 0.0:
            raise ValueError("attention_ratio must be a number in (0, 1], got 0.0")
        opts["attention_ratio"] = float(opts["attention_ratio"])
        opts["seed"] = check_int("seed", opts["seed"], low=0)
    elif name == "block":
        opts["block"] = check_int("block", opts["block"], low=1)
    elif name in ("strided", "longformer"):
        if opts["window"] is not None:
            opts["window"] = check_int("window", opts["window"], low=0)
        if name == "strided" and opts["stride"] is not None:
            opts["stride"] = check_int("stride", opts["stride"], low=1)
        if name == "longformer":
            opts["global_width"] = check_int("global_width", opts["global_width"], low=0)
    return opts

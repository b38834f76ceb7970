"""A pipeline flowchart drawn with matplotlib from one configuration dict.

The default stages are the seven steps of paraphrase fusion on a Hugging Face model (see the
FlexAttention chapter), each box naming the :mod:`sparsekit.hf` or :mod:`sparsekit.torch` call that
performs it: loading, tokenizing, the fused layout with per-segment positions, the ``BlockMask``,
the one-pass prefill, greedy generation and decoding. Sizes and colours come from
:data:`FLOWCHART_CONFIG`; pass a dict with the keys to change.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import matplotlib.pyplot as plt
from matplotlib.colors import to_rgba
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch


class Stage(NamedTuple):
    """One box of the flowchart: a title, a line of detail and a category that picks its colour."""

    title: str  #: The box's first line, in bold.
    detail: str  #: The line of detail under the title (the sparsekit call that does the stage).
    category: str  #: One of :data:`CATEGORIES`; picks the box colour ``color_<category>``.


#: Stage categories, each coloured by the config key ``color_<category>``.
CATEGORIES = ("input", "processing", "attention", "generation", "output")

#: Default look of the flowchart. Sizes are in data units (inches at the default figure size).
FLOWCHART_CONFIG: dict[str, object] = {
    "figure_size": (6.3, 9.6),
    "box_width": 5.2,
    "box_height": 0.95,
    "vertical_spacing": 1.4,
    "font_size": 13,
    "edge_color": "#37474f",
    "color_input": "#E3F2FD",
    "color_processing": "#FFF3E0",
    "color_attention": "#F3E5F5",
    "color_generation": "#E8F5E9",
    "color_output": "#FCE4EC",
}

#: The seven stages of paraphrase fusion on a Hugging Face model, each with the call that performs it.
FUSION_STAGES: tuple[Stage, ...] = (
    Stage("1. Load the model", 'sparsekit.hf.load(path, backend="flex")', "input"),
    Stage("2. Tokenize", "hf.encode(tok, prefix, paraphrases, suffix)", "input"),
    Stage("3. Lay out the prompt", "hf.fused_prompt: ids, positions, pattern", "processing"),
    Stage("4. Build the mask", "sparsekit.torch.block_mask(pattern, n)", "attention"),
    Stage("5. Prefill in one forward pass", "hf.prefill: flex_attention, KV cache", "attention"),
    Stage("6. Generate greedily", "hf.generate: SDPA, no mask, KV cache", "generation"),
    Stage("7. Decode the answer", "tok.decode(token_ids) -> text", "output"),
)


def flowchart_config(config: Mapping[str, object] | None = None) -> dict[str, object]:
    """:data:`FLOWCHART_CONFIG` updated with ``config``; unknown keys and bad sizes raise ``ValueError``."""
    merged = dict(FLOWCHART_CONFIG)
    for key, value in (config or {}).items():
        if key not in FLOWCHART_CONFIG:
            raise ValueError(
                f"unknown flowchart config key {key!r}; allowed keys: {sorted(FLOWCHART_CONFIG)}"
            )
        merged[key] = value
    for key in ("box_width", "box_height", "vertical_spacing", "font_size"):
        value = merged[key]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ValueError(f"{key} must be a number > 0, got {value!r}")
    size = merged["figure_size"]
    if not (isinstance(size, Sequence) and len(size) == 2 and all(isinstance(v, int | float) for v in size)):
        raise ValueError(f"figure_size must be a (width, height) pair of numbers, got {size!r}")
    if not all(v > 0 for v in size):
        raise ValueError(f"figure_size must be a (width, height) pair of numbers > 0, got {size!r}")
    for key in ("edge_color", *(f"color_{c}" for c in CATEGORIES)):
        try:
            to_rgba(merged[key])
        except ValueError:
            raise ValueError(f"{key} must be a matplotlib colour, got {merged[key]!r}") from None
    if merged["box_height"] >= merged["vertical_spacing"]:
        raise ValueError(
            f"vertical_spacing ({merged['vertical_spacing']}) must exceed "
            f"box_height ({merged['box_height']}) "
            "so that the arrows between boxes are visible"
        )
    return merged


def plot_flowchart(
    config: Mapping[str, object] | None = None,
    stages: Sequence[Stage] = FUSION_STAGES,
    loop_stage: int | None = 5,
    ax=None,
    title: str | None = "Paraphrase fusion with FlexAttention",
):
    """Draw ``stages`` top to bottom as coloured boxes joined by arrows.

    Parameters
    ----------
    config : dict, optional
        Keys of :data:`FLOWCHART_CONFIG` to change (sizes, colours, font size).
    stages : sequence of Stage
        The boxes, in order; each category must be one of :data:`CATEGORIES`.
    loop_stage : int or None
        Index of a stage that repeats (drawn with a return arrow, "once per generated token"); ``None``
        for none.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure of ``config["figure_size"]`` when omitted.
    title : str or None
        Figure title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    cfg = flowchart_config(config)
    if not stages:
        raise ValueError("stages must hold at least one Stage")
    for stage in stages:
        if stage.category not in CATEGORIES:
            raise ValueError(f"stage category must be one of {CATEGORIES}, got {stage.category!r}")
    if loop_stage is not None and not 0 <= loop_stage < len(stages):
        raise ValueError(f"loop_stage must be None or in [0, {len(stages) - 1}], got {loop_stage!r}")
    if ax is None:
        fig, ax = plt.subplots(figsize=cfg["figure_size"], facecolor="white")
        fig.subplots_adjust(left=0.02, right=0.98, top=0.94, bottom=0.05)
    fig = ax.figure
    fig.patch.set_facecolor("white")
    width, height, step = cfg["box_width"], cfg["box_height"], cfg["vertical_spacing"]
    font = cfg["font_size"]
    edge = cfg["edge_color"]
    centres = [-k * step for k in range(len(stages))]
    for stage, y in zip(stages, centres, strict=True):
        box = FancyBboxPatch(
            (-width / 2, y - height / 2),
            width,
            height,
            boxstyle="round,pad=0.02,rounding_size=0.12",
            facecolor=cfg[f"color_{stage.category}"],
            edgecolor=edge,
            linewidth=1.4,
        )
        ax.add_patch(box)
        ax.text(0, y + height * 0.16, stage.title, ha="center", va="center", fontsize=font, weight="bold")
        ax.text(
            0,
            y - height * 0.22,
            stage.detail,
            ha="center",
            va="center",
            fontsize=font * 0.78,
            family="monospace",
        )
    for upper, lower in zip(centres, centres[1:], strict=False):
        ax.add_patch(
            FancyArrowPatch(
                (0, upper - height / 2),
                (0, lower + height / 2),
                arrowstyle="-|>",
                mutation_scale=16,
                color=edge,
                linewidth=1.4,
            )
        )
    if loop_stage is not None:
        y = centres[loop_stage]
        x = width / 2
        ax.add_patch(
            FancyArrowPatch(
                (x, y - height * 0.25),
                (x, y + height * 0.25),
                connectionstyle="arc3,rad=1.6",
                arrowstyle="-|>",
                mutation_scale=14,
                color=edge,
                linewidth=1.2,
            )
        )
        ax.text(x + 0.55, y, "once per\ngenerated\ntoken", ha="left", va="center", fontsize=font * 0.78)
    used = [c for c in CATEGORIES if any(s.category == c for s in stages)]
    handles = [Patch(facecolor=cfg[f"color_{c}"], edgecolor=edge, label=c) for c in used]
    ax.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, -0.06), ncol=len(used), frameon=False)
    ax.set_xlim(-width / 2 - 0.3, width / 2 + 1.9)
    ax.set_ylim(centres[-1] - height, height)
    ax.set_aspect("equal")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=font * 1.25, weight="bold")
    return fig

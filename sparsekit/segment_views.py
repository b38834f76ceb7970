"""Paraphrase-fusion layouts from a config dict: presets, smart sampling, phase pictures and numbers.

A config dict names the layout the way the seed project did (``num_paraphrases``,
``tokens_per_paraphrase``, ``separator_tokens``, ``num_generated_tokens``, optionally ``prefix_tokens``)
and how to show it (``display_mode`` ``"full"`` or ``"sampled"``, ``max_display_positions``). The
pattern itself is :func:`sparsekit.paraphrase_fusion`; everything here is a view of it.

*Smart sampling* keeps the first and last token of every span (so every segment boundary and the start
of generation stay visible) and spreads the remaining display budget over the spans in proportion to
their length. The cells drawn are exact cells of the mask at the sampled positions, not averages.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Patch

from ._validate import check_int
from .masks.segments import ParaphraseFusion, paraphrase_fusion
from .plot import _axes

#: The seed's three scenarios (3 x 15 shown in full, 5 x 25 sampled, 5 x 50 realistic and sampled).
PRESETS: dict[str, dict[str, object]] = {
    "small": {
        "num_paraphrases": 3,
        "tokens_per_paraphrase": 15,
        "separator_tokens": 1,
        "num_generated_tokens": 5,
        "display_mode": "full",
        "max_display_positions": 60,
    },
    "medium": {
        "num_paraphrases": 5,
        "tokens_per_paraphrase": 25,
        "separator_tokens": 2,
        "num_generated_tokens": 8,
        "display_mode": "sampled",
        "max_display_positions": 50,
    },
    "large": {
        "num_paraphrases": 5,
        "tokens_per_paraphrase": 50,
        "separator_tokens": 2,
        "num_generated_tokens": 20,
        "display_mode": "sampled",
        "max_display_positions": 60,
    },
}

_LAYOUT_KEYS = ("num_paraphrases", "tokens_per_paraphrase", "separator_tokens", "num_generated_tokens")
_OPTIONAL_KEYS = ("prefix_tokens", "display_mode", "max_display_positions")
DISPLAY_MODES = ("full", "sampled")
PHASES = ("encoding", "generation", "full")

#: Colour map of the seed's pictures (white where attention is not allowed, green where it is).
ALLOWED_CMAP = ListedColormap(["white", "#2e7d32"], name="sparsekit_allowed")


def pattern_from_config(config: Mapping[str, object]) -> ParaphraseFusion:
    """The :func:`~sparsekit.paraphrase_fusion` pattern a config dict describes (checks every key)."""
    unknown = set(config) - set(_LAYOUT_KEYS) - set(_OPTIONAL_KEYS)
    if unknown:
        raise ValueError(
            f"unknown config keys {sorted(unknown)}; allowed keys: {list(_LAYOUT_KEYS + _OPTIONAL_KEYS)}"
        )
    missing = [key for key in _LAYOUT_KEYS if key not in config]
    if missing:
        raise ValueError(f"config is missing {missing}; a layout needs {list(_LAYOUT_KEYS)}")
    display_options(config)
    return paraphrase_fusion(
        num_paraphrases=config["num_paraphrases"],
        tokens_per_paraphrase=config["tokens_per_paraphrase"],
        separator_tokens=config["separator_tokens"],
        prefix_tokens=config.get("prefix_tokens", 0),
        num_generated_tokens=config["num_generated_tokens"],
    )


def display_options(config: Mapping[str, object]) -> tuple[str, int | None]:
    """``(display_mode, max_display_positions)`` of a config, checked (``"full"`` by default)."""
    mode = config.get("display_mode", "full")
    if mode not in DISPLAY_MODES:
        raise ValueError(f"display_mode must be one of {DISPLAY_MODES}, got {mode!r}")
    limit = config.get("max_display_positions")
    if limit is not None:
        limit = check_int("max_display_positions", limit, low=2)
    if mode == "sampled" and limit is None:
        raise ValueError("display_mode 'sampled' needs max_display_positions (an integer >= 2)")
    return mode, limit


def _phase_ranges(pattern: ParaphraseFusion, phase: str) -> tuple[range, range]:
    """Rows and columns of one phase: the prompt square, the generated rows, or everything."""
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
    start, n = pattern.generation_start, pattern.length
    if phase == "encoding":
        if start == 0:
            raise ValueError("the layout has no prompt tokens, so it has no encoding phase")
        return range(start), range(start)
    if phase == "generation":
        if start == n:
            raise ValueError("the layout has num_generated_tokens = 0, so it has no generation phase")
        return range(start, n), range(n)
    return range(n), range(n)


def sample_positions(
    pattern: ParaphraseFusion, max_display_positions: int, span: range | None = None
) -> np.ndarray:
    """Smart sampling: at most ``max_display_positions`` positions that keep every boundary visible.

    All positions are returned when they fit. Otherwise the first and last token of every span inside
    ``span`` (default: the whole layout) are kept, and the rest of the budget is spread over the spans
    in proportion to their interior length (largest remainders first), evenly inside each span.

    Raises ``ValueError`` when the budget is smaller than the number of boundary tokens.
    """
    if not isinstance(pattern, ParaphraseFusion):
        raise ValueError(f"pattern must be a paraphrase_fusion pattern, got {type(pattern).__name__}")
    budget = check_int("max_display_positions", max_display_positions, low=2)
    span = range(pattern.length) if span is None else span
    if len(span) <= budget:
        return np.arange(span.start, span.stop, dtype=np.int64)
    pieces = [
        (max(s.start, span.start), min(s.stop, span.stop))
        for s in pattern.layout
        if s.start < span.stop and s.stop > span.start
    ]
    ends = sorted({p for lo, hi in pieces for p in (lo, hi - 1)})
    if len(ends) > budget:
        raise ValueError(
            f"max_display_positions must be at least {len(ends)} to keep the first and last token of each "
            f"of the {len(pieces)} spans visible, got {budget}"
        )
    interiors = np.array([max(hi - lo - 2, 0) for lo, hi in pieces], dtype=np.float64)
    spare = budget - len(ends)
    share = spare * interiors / interiors.sum() if interiors.sum() else np.zeros_like(interiors)
    extra = np.floor(share).astype(np.int64)
    for k in np.argsort(-(share - extra), kind="stable")[: spare - int(extra.sum())]:
        extra[k] += 1
    chosen = set(ends)
    for (lo, hi), count in zip(pieces, np.minimum(extra, interiors.astype(np.int64)), strict=True):
        if count:
            # Evenly spaced interior tokens, never repeating an end.
            chosen.update(np.round(np.linspace(lo, hi - 1, int(count) + 2)[1:-1]).astype(int).tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def _span_names(pattern: ParaphraseFusion) -> list[str]:
    names = {"prefix": "Q", "paraphrase": "P", "separator": "s", "generated": "Gen"}
    return [names[s.kind] + (str(s.index + 1) if s.kind == "paraphrase" else "") for s in pattern.layout]


def plot_fusion_mask(
    pattern: ParaphraseFusion,
    phase: str = "full",
    display_mode: str = "full",
    max_display_positions: int | None = None,
    ax=None,
    title: str | None = None,
    legend: bool = True,
):
    """Draw the allowed (green) and masked (white) cells of one phase of a paraphrase-fusion layout.

    Red dashed lines mark segment boundaries, a blue dashed line the start of generation; each span is
    named on the axes (``Q`` question, ``P1``... paraphrases, ``s`` separators, ``Gen`` generated). With
    ``display_mode="sampled"`` rows and columns are chosen by :func:`sample_positions`; a note gives how
    many positions are shown.

    Parameters
    ----------
    pattern : sparsekit.ParaphraseFusion
        The layout (see :func:`sparsekit.paraphrase_fusion` and :func:`pattern_from_config`).
    phase : {"encoding", "generation", "full"}
        The prompt square, the generated rows against every key, or the whole mask.
    display_mode : {"full", "sampled"}
        Every position, or a smart sample of at most ``max_display_positions`` per axis.
    max_display_positions : int, optional
        The display budget per axis; required for ``"sampled"``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure when omitted.
    title : str, optional
        Title; the phase and the shown/total positions by default.
    legend : bool
        Explain the colours and lines below the axes.

    Returns
    -------
    matplotlib.figure.Figure
    """
    mode, limit = display_options(
        {"display_mode": display_mode, "max_display_positions": max_display_positions}
    )
    rows, cols = _phase_ranges(pattern, phase)
    if mode == "sampled":
        row_pos = sample_positions(pattern, limit, rows)
        col_pos = sample_positions(pattern, limit, cols)
    else:
        row_pos = np.arange(rows.start, rows.stop)
        col_pos = np.arange(cols.start, cols.stop)
    allowed = pattern.predicate(row_pos[:, None], col_pos[None, :])
    fig, ax = _axes(ax, figsize=(6, 6 * max(len(row_pos) / len(col_pos), 0.3)))
    ax.imshow(allowed, cmap=ALLOWED_CMAP, vmin=0, vmax=1, interpolation="nearest", aspect="auto")
    ids = pattern.segment_ids()
    names = _span_names(pattern)
    for axis, pos in (("x", col_pos), ("y", row_pos)):
        seg = ids[pos]
        cuts = np.flatnonzero(np.diff(seg)) + 1
        line = ax.axvline if axis == "x" else ax.axhline
        for c in cuts:
            is_gen = pos[c] == pattern.generation_start
            line(
                c - 0.5,
                color="tab:blue" if is_gen else "tab:red",
                linestyle="--",
                linewidth=1.6 if is_gen else 1,
            )
        starts = np.concatenate([[0], cuts])
        stops = np.concatenate([cuts, [len(pos)]])
        centres = (starts + stops - 1) / 2
        labels = [names[seg[s]] for s in starts]
        # Separator groups are often one token wide: name them only when there is room.
        keep = [k for k, s in enumerate(starts) if labels[k] != "s" or stops[k] - s >= 3]
        (ax.set_xticks if axis == "x" else ax.set_yticks)(centres[keep], [labels[k] for k in keep])
    ax.tick_params(labelsize="small", length=0)
    ax.xaxis.tick_top()
    shown = f"{len(row_pos)} x {len(col_pos)} of {len(rows)} x {len(cols)} positions"
    default = f"{phase} phase ({'smart sample, ' if mode == 'sampled' else ''}{shown})"
    ax.set_title(title if title is not None else default, fontsize="medium", pad=18)
    ax.set_xlabel("key position (attended to)")
    ax.set_ylabel("query position (attending)")
    if not legend:
        return fig
    handles = [
        Patch(facecolor="#2e7d32", label="can attend"),
        Patch(facecolor="white", edgecolor="gray", label="cannot attend"),
        Patch(facecolor="none", edgecolor="tab:red", linestyle="--", label="segment boundary"),
        Patch(facecolor="none", edgecolor="tab:blue", linestyle="--", label="generation start"),
    ]
    ax.legend(
        handles=handles,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.1),
        ncol=2,
        fontsize="small",
        frameon=False,
    )
    return fig


def plot_positions(
    pattern: ParaphraseFusion,
    position_ids,
    cue_tokens: int = 0,
    ax=None,
    title: str | None = "position id of each token",
):
    """Draw the position id each token of a paraphrase-fusion layout is given, against its index.

    Spans are drawn in turn (the prefix in black, paraphrases alternating blue and orange, the
    generated region in gray) with the same red and blue dashed boundaries and span names as
    :func:`plot_fusion_mask`, so the two pictures line up when they share the token axis. Dotted
    horizontal lines mark where every paraphrase starts (the prefix's length) and where the generated
    tokens continue (after the longest paraphrase). ``cue_tokens`` generated-region tokens at its start
    (an answer cue given with the prompt) are drawn hollow.

    Parameters
    ----------
    pattern : sparsekit.ParaphraseFusion
        The layout.
    position_ids : array-like of int
        One position id per token of ``pattern`` (``pattern.length`` of them).
    cue_tokens : int
        Tokens at the start of the generated region that belong to the prompt, ``>= 0``.
    ax : matplotlib.axes.Axes, optional
        Axes to draw on; a new figure when omitted.
    title : str or None
        Axes title.

    Returns
    -------
    matplotlib.figure.Figure
    """
    positions = np.asarray(position_ids).reshape(-1)
    if positions.shape != (pattern.length,):
        raise ValueError(f"position_ids must hold one id per token ({pattern.length}), got {positions.size}")
    cue = check_int("cue_tokens", cue_tokens, low=0, high=pattern.num_generated_tokens)
    fig, ax = _axes(ax, figsize=(6, 2.6))
    colors = {"prefix": "#000000", "separator": "#7f7f7f", "generated": "#7f7f7f"}
    centres, names = [], []
    for span, name in zip(pattern.layout, _span_names(pattern), strict=True):
        if span.stop == span.start:
            continue
        color = colors.get(span.kind) or ("#1c4f9c", "#cc5f00")[span.index % 2]
        index = np.arange(span.start, span.stop)
        hollow = np.zeros(len(index), dtype=bool)
        if span.kind == "generated":
            hollow = index < pattern.generation_start + cue
        ax.plot(index, positions[index], color=color, lw=1.2)
        ax.scatter(index[~hollow], positions[index[~hollow]], s=14, color=color, zorder=3)
        ax.scatter(
            index[hollow], positions[index[hollow]], s=14, facecolor="white", edgecolor=color, zorder=3
        )
        if span.kind != "separator" or span.length >= 3:
            centres.append((span.start + span.stop - 1) / 2)
            names.append(name)
        if span.start > 0:
            is_gen = span.start == pattern.generation_start
            ax.axvline(
                span.start - 0.5,
                color="tab:blue" if is_gen else "tab:red",
                ls="--",
                lw=1.6 if is_gen else 1,
            )
    ax.set_xticks(centres, names)
    ax.tick_params(axis="x", length=0)
    paraphrases = pattern.spans("paraphrase")
    if paraphrases:
        start = pattern.prefix_tokens
        longest = start + max(s.length for s in paraphrases)
        for level in sorted({start, longest}):
            ax.axhline(level, color="gray", ls=":", lw=1)
        ax.set_yticks(sorted({0, start, longest, int(positions.max())}))
    ax.set_xlim(-0.5, pattern.length - 0.5)
    ax.set_xlabel("token index")
    ax.set_ylabel("position id")
    if title:
        ax.set_title(title, fontsize="medium")
    return fig


def phase_summary(pattern: ParaphraseFusion, block_size: int = 128) -> dict[str, dict[str, float | int]]:
    """Encoding versus generation in numbers: allowed cells, sparsity and block sparsity per phase.

    ``encoding`` is the prompt square (queries and keys before the first generated token; later keys
    are causally masked anyway); ``generation`` is the generated rows against every key. Each entry has
    ``rows``, ``cells`` (the area of the phase), ``allowed``, ``causal_allowed`` (what a plain causal
    mask would allow in the same area) and ``sparsity``. A third entry ``full`` covers the whole mask.
    ``encoding`` and ``full`` also give ``block_sparsity`` at ``block_size``: the fraction of empty
    tiles of the prompt-only layout and of the whole layout (the generated rows share tiles with the
    prompt, so they have no block layout of their own).
    """
    b = check_int("block_size", block_size, low=1)
    n, start = pattern.length, pattern.generation_start
    counts = pattern.row_counts(n)
    out: dict[str, dict[str, float | int]] = {}
    for phase, (lo, hi), width in (
        ("encoding", (0, start), start),
        ("generation", (start, n), n),
        ("full", (0, n), n),
    ):
        rows = hi - lo
        cells = rows * width
        allowed = int(counts[lo:hi].sum())
        entry: dict[str, float | int] = {
            "rows": rows,
            "cells": cells,
            "allowed": allowed,
            "causal_allowed": int(np.arange(lo + 1, hi + 1).sum()),
            "sparsity": 1 - allowed / cells if cells else float("nan"),
        }
        if phase == "encoding" and start:
            prompt = paraphrase_fusion(
                lengths=pattern.lengths,
                separator_tokens=pattern.separator_tokens,
                prefix_tokens=pattern.prefix_tokens,
            )
            entry["block_sparsity"] = prompt.block_sparsity(start, b)
        elif phase == "full":
            entry["block_sparsity"] = pattern.block_sparsity(n, b)
        out[phase] = entry
    return out

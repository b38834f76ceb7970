"""Command line: ``python -m sparsekit {masks,resources,solve,sweep} ...``.

``masks`` is the seed's ``sparse_transformer_mask.py`` as a subcommand: it prints the sparsity of the
five Sparse-Transformer-era masks (exact, in closed form, at any ``--size``), their non-zeros, and
writes pictures. Every bad flag or value, and every view that would not fit the memory budget
(:func:`sparsekit.set_memory_budget`), exits with status 2 and one line on stderr.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from . import fuse_cli, resources, solve, sweep
from ._validate import int_arg
from .masks.causal import causal
from .masks.local import dilated_sliding_window, sliding_window
from .masks.sparse_transformer import fixed, strided
from .pattern import require_memory


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        raise SystemExit(2)


def seed_patterns(window_size: int, stride: int, dilation: int) -> dict[str, object]:
    """The five masks of the seed, by display name, with the seed's parameter mapping.

    The fixed pattern's block is ``window_size``, as in the seed's ``create_fixed_mask``.
    """
    return {
        "Normal": causal(),
        "Strided": strided(window=window_size, stride=stride),
        "Fixed": fixed(block=window_size),
        "Sliding Window": sliding_window(window=window_size),
        "Dilated Sliding Window": dilated_sliding_window(window=window_size, dilation=dilation),
    }


def _file_key(name: str) -> str:
    return name.lower().replace(" ", "_")


def _print_nonzeros(pattern, n: int, order: str, out) -> None:
    cells = pattern.nonzeros(n, order=order)
    lead, other = (0, 1) if order == "row_first" else (1, 0)
    word = "Row" if order == "row_first" else "Column"
    starts = np.flatnonzero(np.diff(cells[:, lead], prepend=-1))
    for start, stop in zip(starts, np.append(starts[1:], len(cells)), strict=True):
        values = ", ".join(map(str, cells[start:stop, other].tolist()))
        out.write(f"{word} {cells[start, lead]}: {values}\n")


def run_masks(args: argparse.Namespace) -> int:
    """The ``masks`` subcommand; returns the exit code."""
    patterns = seed_patterns(args.window_size, args.stride, args.dilation)
    n = args.size
    if not args.no_graphic:  # refuse before any work: pictures cost far more than the labels
        if args.full_png:  # the labels, their RGBA pixels and the PNG encoder's copy: 10 bytes a cell
            instead = "--sample_size without --full_png (the picture needs 10 bytes per cell)"
            require_memory("labels", n, 10 * n * n, instead)
        else:  # labels with their temporaries, and matplotlib's normalized float copy
            sample = args.sample_size
            require_memory("--sample_size picture", sample, 64 * sample * sample, "a smaller --sample_size")
    out = sys.stdout
    out.write("Sparsity of each mask:\n")
    for name, pattern in patterns.items():
        out.write(f"{name} Mask Sparsity: {pattern.sparsity(n):.4%}\n")
    if not args.skip_pattern_print:
        for name, pattern in patterns.items():
            out.write(f"\n{name} mask non-zeros ({args.order}):\n")
            _print_nonzeros(pattern, n, args.order, out)
    if not args.no_graphic:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from . import plot

        folder = Path(args.out)
        sample = args.sample_size
        for name, pattern in patterns.items():
            key = _file_key(name)
            if args.full_png:
                path = plot.save_full_png(pattern, n, folder / f"{key}_mask_{n}x{n}.png")
            else:
                fig = plot.plot_mask(pattern, n, sample_size=sample, title=f"{name} Mask")
                path = plot.save_figure(fig, folder / f"{key}_mask_{sample}x{sample}.png")
                plt.close(fig)
            out.write(f"wrote {path}\n")
        fig = plot.plot_comparison(list(patterns.values()), n, sample, titles=list(patterns))
        path = plot.save_figure(fig, folder / f"mask_comparison_{sample}x{sample}.png")
        plt.close(fig)
        out.write(f"wrote {path}\n")
    return 0


def _add_masks(subparsers) -> None:
    parser = subparsers.add_parser(
        "masks",
        help="print and draw the seed's five masks",
        description="Sparse Transformer attention masks: sparsity, non-zeros and pictures.",
    )
    parser.add_argument("--size", type=int_arg(1), default=1024, help="mask size n (default: 1024)")
    parser.add_argument(
        "--window_size", type=int_arg(0), default=32, help="local window; fixed block (default: 32)"
    )
    parser.add_argument("--stride", type=int_arg(1), default=32, help="stride of strided (default: 32)")
    parser.add_argument("--dilation", type=int_arg(1), default=2, help="dilation (default: 2)")
    parser.add_argument("--sample_size", type=int_arg(1), default=128, help="crop drawn (default: 128)")
    parser.add_argument("--full_png", action="store_true", help="one pixel per cell, whole mask")
    parser.add_argument("--no_graphic", action="store_true", help="print only, write no pictures")
    parser.add_argument("--order", choices=("row_first", "column_first"), default="row_first")
    parser.add_argument("--skip_pattern_print", action="store_true", help="do not print non-zeros")
    parser.add_argument("--out", default="generated", help="folder for pictures (default: generated)")
    parser.set_defaults(func=run_masks)


def build_parser() -> argparse.ArgumentParser:
    """The ``sparsekit`` argument parser with every subcommand."""
    parser = OneLineParser(prog="sparsekit", description="Exact, fast sparse-attention masks.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    _add_masks(subparsers)
    resources.add_parser(subparsers)
    solve.add_parser(subparsers)
    sweep.add_parser(subparsers)
    fuse_cli.add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (2 for bad input, with one line on stderr)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "masks" and args.window_size == 0:
        parser.error("argument --window_size: must be an integer >= 1 for the fixed mask's block")
    if args.command == "masks" and not args.no_graphic and args.sample_size > args.size:
        parser.error(f"argument --sample_size: must be an integer in [1, --size={args.size}]")
    try:
        return args.func(args)
    except BrokenPipeError:  # output piped into `head`: stop quietly, as Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ValueError, MemoryError) as error:
        # Views refuse above the memory budget (MemoryBudgetError); numpy's own MemoryError is
        # reported the same way: one line, never a traceback or the out-of-memory killer.
        message = " ".join(str(error).split()) or type(error).__name__
        sys.stderr.write(f"sparsekit {args.command}: error: {message}\n")
        return 2

"""Tiny chapters for the sweep and command-line tests (and ``benchmarks/bench_sweep.py``)."""

from __future__ import annotations

from pathlib import Path

import nbformat


def write_chapter(path: Path, parameters: str | None, *code: str, record: str) -> Path:
    """Write a chapter to ``path``: a cell tagged ``parameters`` holding the literals ``parameters``
    (none when it is None), a code cell per ``code``, and a last cell tagged ``record``."""
    cells = []
    if parameters is not None:
        cells.append(nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}))
    cells += [nbformat.v4.new_code_cell(source) for source in code]
    cells.append(nbformat.v4.new_code_cell(record, metadata={"tags": ["record"]}))
    notebook = nbformat.v4.new_notebook(cells=cells)
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, str(path))
    return path

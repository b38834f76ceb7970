"""The committed notebooks are saved executed, top to bottom, so `pytest --nbval` compares them.

nbval only compares the outputs of cells that have an execution count: a notebook committed
unexecuted would pass nbval without checking anything. These checks need no kernel.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_is_saved_executed_in_order(path):
    notebook = nbformat.read(str(path), as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code" and cell.source.strip()]
    counts = [cell.execution_count for cell in code]
    assert None not in counts, f"{path.name}: code cells not executed (run `make notebooks`)"
    assert counts == list(range(1, len(code) + 1)), (
        f"{path.name}: execution counts {counts} are not 1..{len(code)} "
        "(run `make notebooks` to execute it from a fresh kernel)"
    )


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_first_code_cell_is_tagged_parameters(path):
    notebook = nbformat.read(str(path), as_version=4)
    first = next(cell for cell in notebook.cells if cell.cell_type == "code")
    assert "parameters" in first.metadata.get("tags", []), (
        f"{path.name}: the first code cell must be tagged 'parameters' (for papermill)"
    )

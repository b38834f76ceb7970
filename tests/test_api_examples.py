"""The examples on the API page (api.md) run and print what the page says they print."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

API_PAGE = Path(__file__).resolve().parents[1] / "api.md"


def test_api_page_examples(tmp_path, monkeypatch):
    pytest.importorskip("torch")  # the FlexAttention example needs it
    monkeypatch.chdir(tmp_path)  # the picture example saves a file
    # The ```pycon blocks of the page, one session (later blocks use names from earlier ones).
    blocks = re.findall(r"^```pycon\n(.*?)^```$", API_PAGE.read_text(), re.MULTILINE | re.DOTALL)
    test = doctest.DocTestParser().get_doctest("\n".join(blocks), {}, "api.md", str(API_PAGE), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    result = runner.run(test)
    assert result.attempted >= 20, f"only {result.attempted} examples found on the API page"
    assert result.failed == 0, f"{result.failed} of {result.attempted} API page examples failed (see above)"
    assert (tmp_path / "fixed_mask.png").is_file()

"""Marks shared by the tests that compile FlexAttention's C++ kernel."""

from __future__ import annotations

import os
import shutil

import pytest


def compiles(reason: str):
    """Opt-in (``SPARSEKIT_COMPILE_TESTS=1``, as ``make unit`` sets) and only where a C compiler exists.

    ``reason`` says what the test compiles and what it costs; the skip message adds how to run it.
    """
    marks = (
        pytest.mark.skipif(
            os.environ.get("SPARSEKIT_COMPILE_TESTS") != "1",
            reason=f"{reason}; run with SPARSEKIT_COMPILE_TESTS=1",
        ),
        pytest.mark.skipif(
            shutil.which("gcc") is None and shutil.which("cc") is None, reason="needs a C compiler"
        ),
        pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning"),
    )

    def mark(test):
        for m in reversed(marks):
            test = m(test)
        return test

    return mark

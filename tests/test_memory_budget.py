"""Views refuse before allocating: above the memory budget they raise a MemoryError that names the view,
the length, the bytes needed and a cheaper view; the command lines turn it into one line and exit 2."""

from __future__ import annotations

import resource
import subprocess
import sys
import tracemalloc

import pytest

import sparsekit as sk
from sparsekit.pattern import MemoryBudgetError
from sparsekit.resources import analyze


@pytest.fixture
def tiny_budget():
    previous = sk.set_memory_budget(1 << 16)  # 64 KiB
    yield 1 << 16
    sk.set_memory_budget(previous)


VIEWS = {
    "dense": (lambda p, n: p.dense(n), "row_counts(n)"),
    "labels": (lambda p, n: p.labels(n), "blocks(n)"),
    "row_counts": (lambda p, n: p.row_counts(n), "nnz(n)"),
    "block_counts": (lambda p, n: p.block_counts(n, 16), "block_summary(n)"),
    "blocks": (lambda p, n: p.blocks(n, 16), "block_summary(n, block_size)"),
    "nonzeros": (lambda p, n: p.nonzeros(n), "nnz(n)"),
    "resources analysis": (lambda p, n: analyze(p, n), "nnz(n)"),
}


@pytest.mark.parametrize("view", list(VIEWS))
@pytest.mark.parametrize("pattern", [sk.strided(32, 32), sk.longformer(64, 4)], ids=lambda p: p.family)
def test_view_refuses_over_budget_before_allocating(view, pattern, tiny_budget):
    build, cheaper = VIEWS[view]
    n = 50_000
    tracemalloc.start()
    try:
        with pytest.raises(MemoryError) as info:
            build(pattern, n)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert isinstance(info.value, MemoryBudgetError) and isinstance(info.value, ValueError)
    assert message.startswith(f"{view} at n={n} needs ") and " bytes)" in message
    assert cheaper in message and "set_memory_budget" in message
    assert peak < 4 * tiny_budget, f"{view} allocated {peak} bytes before refusing"


def test_views_within_the_budget_still_answer(tiny_budget):
    p = sk.strided(4, 4)
    assert p.dense(200).sum() == p.nnz(200)  # 40,000 bytes, under 64 KiB
    assert p.blocks(4096, 16).shape == (256, 256)  # the periodic layout: one byte per tile
    assert p.nnz(10**12) > 0 and p.block_summary(10**12)["tiles"] == (-(-(10**12) // 128)) ** 2


def test_torch_block_tables_refuse_over_budget(tiny_budget):
    pytest.importorskip("torch")
    import sparsekit.torch as skt

    with pytest.raises(MemoryError, match=r"block_mask tables at n=65536 needs .*block_summary"):
        skt.block_mask(sk.causal(), 65536, 128)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    """``python -m sparsekit ARGS`` with its address space capped at 3 GiB: a view that slipped past
    the budget would fail with MemoryError here instead of waking the out-of-memory killer."""

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    return subprocess.run(
        [sys.executable, "-m", "sparsekit", *args],
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=cap,
    )


def test_masks_at_a_billion_prints_exact_sparsities_in_closed_form():
    n = 10**9
    done = run_cli("masks", "--size", str(n), "--no_graphic", "--skip_pattern_print")
    assert done.returncode == 0, done.stderr
    # Independent counts: causal n(n+1)/2 cells; the window of 32 keeps |i - j| <= 16.
    expected = {
        "Normal": (n * n - n * (n + 1) // 2) / (n * n),
        "Sliding Window": (n * n - (n * 33 - 2 * (16 * 17 // 2))) / (n * n),
    }
    for name, value in expected.items():
        assert f"{name} Mask Sparsity: {value:.4%}\n" in done.stdout
    assert done.stdout.count("Mask Sparsity:") == 5


def test_masks_views_that_cannot_fit_exit_2_with_one_line(tmp_path):
    for extra in ([], ["--full_png", "--skip_pattern_print"], ["--sample_size", "100000"]):
        done = run_cli("masks", "--size", str(10**9), *(extra or ["--no_graphic"]), "--out", str(tmp_path))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and " needs " in lines[0] and "memory budget" in lines[0]
        assert f"at n={100000 if '--sample_size' in extra else 10**9} needs" in lines[0]


def test_masks_at_ten_to_the_fifteen_answers_and_resources_refuses():
    done = run_cli("masks", "--size", str(10**15), "--no_graphic", "--skip_pattern_print")
    assert done.returncode == 0 and done.stdout.count("Mask Sparsity:") == 5, done.stderr
    done = run_cli("resources", "--mask_size", str(10**9), "--no_files")
    assert done.returncode == 2
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and "n=1000000000 needs" in lines[0]

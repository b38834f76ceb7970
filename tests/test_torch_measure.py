"""sparsekit.torch.measure: the reported times are the clock's and the memory is what was allocated.

Times are checked against a fake clock that advances a fixed step per reading, so every timed call
lasts exactly that step whatever this machine is doing; memory against allocations of known size.
Skipped without torch.
"""

from __future__ import annotations

import types

import numpy as np
import pytest

import sparsekit as sk

torch = pytest.importorskip("torch")  # the one optional dependency; sparsekit.torch must import

from sparsekit.torch import measure  # noqa: E402

STEP = 1 / 128  # seconds per clock reading: exact in binary


@pytest.fixture
def clock(monkeypatch):
    """A clock that advances STEP per reading; returns the readings taken so far."""
    readings = []

    def perf_counter():
        readings.append(len(readings))
        return (len(readings) - 1) * STEP

    monkeypatch.setattr(measure, "time", types.SimpleNamespace(perf_counter=perf_counter))
    return readings


def test_best_and_median_of_use_every_call(clock):
    calls = []
    seconds, result = measure.best_of(lambda: calls.append(1) or len(calls), 4)
    assert (seconds, result, len(calls), len(clock)) == (STEP, 4, 4, 8)
    # Uneven calls: a call that reads the clock in between lasts two steps.
    lengths = iter([1, 3, 2])

    def uneven():
        for _ in range(next(lengths) - 1):
            measure.time.perf_counter()

    assert measure.median_of(uneven, 3)[0] == 2 * STEP
    with pytest.raises(ValueError, match="repeat"):
        measure.best_of(lambda: None, 0)


def test_traced_peak_bytes_sees_a_numpy_buffer():
    size = 3 << 20
    peak = measure.traced_peak_bytes(lambda: np.ones(size, dtype=np.uint8))
    assert size <= peak < size + (1 << 16)
    # Two buffers alive at once, then one: the peak is both.
    assert measure.traced_peak_bytes(lambda: (np.ones(size, np.uint8), np.ones(size, np.uint8))) >= 2 * size
    assert measure.traced_peak_bytes(lambda: None) < 1 << 16


def test_tensor_peak_bytes_sees_a_tensor():
    size = 1 << 20
    peak = measure.tensor_peak_bytes(lambda: torch.ones(size, dtype=torch.uint8))
    assert size <= peak < 2 * size
    existing = torch.ones(size // 4, dtype=torch.float32)
    assert measure.tensor_peak_bytes(lambda: existing.max()) < 1024  # what existed before is not counted


def test_time_backends_measures_small_lengths(clock):
    rows = measure.time_backends([64, 128], num_heads=2, head_dim=8, block_size=32, repeat=2, compile=False)
    assert [r["n"] for r in rows] == [64, 128]
    for r in rows:
        for key in ("sdpa_causal_ms", "sdpa_mask_ms", "flex_eager_ms"):
            assert r[key] == 1e3 * STEP
        assert r["eager_max_abs_diff"] <= 1e-5
        assert r["flex_compiled_ms"] is None and r["compile_error"] is None
        # Density and tiles counted here: the timing layout's cells, and its non-empty 32 x 32 tiles.
        n, pattern = r["n"], measure.timing_pattern(r["n"])
        dense = pattern.dense(n)
        assert pattern.length == n and len(pattern.lengths) == 8
        assert r["density"] == np.count_nonzero(dense) / n**2
        tiles = dense.reshape(n // 32, 32, n // 32, 32).any(axis=(1, 3))
        assert r["tiles_computed"] == np.count_nonzero(tiles) / tiles.size
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        measure.time_backends([32])
    with pytest.raises(ValueError, match="compile"):
        measure.time_backends([64], compile=1)


def test_measure_layer_reports_measured_values(clock):
    result = measure.measure_layer("block", 4, 8, channels=8, heads=2, repeats=3, block=8, block_size=16)
    # block_local(8) on 32 tokens: four dense 8 x 8 diagonal blocks; at 16-token tiles, 2 of 4 empty.
    assert result["tokens"] == 32 and result["sparsity"] == 1 - 4 * 8 * 8 / 32**2
    assert result["empty_tiles"] == 2 / 4
    assert result["sparsity"] == sk.block_local(8).sparsity(32)
    for side in ("sparse", "dense"):
        for what in ("forward_s", "train_s"):
            assert result[f"{side}_{what}"] == STEP
        for what in ("forward_bytes", "train_bytes"):  # at least the output, 1 x 8 x 4 x 8 float32
            assert isinstance(result[f"{side}_{what}"], int) and result[f"{side}_{what}"] >= 32 * 8 * 4
    table = measure.format_measurements([result]).splitlines()
    assert len(table) == 2 and table[1].split()[:2] == ["block", "32"]
    with pytest.raises(ValueError, match="repeats"):
        measure.measure_layer("axial", 4, 4, repeats=0)

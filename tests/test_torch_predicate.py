"""The same predicates evaluate torch tensors exactly as numpy arrays (skipped without torch)."""

from __future__ import annotations

import numpy as np
import pytest

import sparsekit as sk

torch = pytest.importorskip("torch")

PATTERNS = [
    sk.causal(),
    sk.strided(5, 4),
    sk.fixed(6, 2),
    sk.sliding_window(7),
    sk.dilated_sliding_window(6, 3),
    sk.window(0),
    sk.window(5),
    sk.block_local(5),
    sk.axial(6, 7),
    sk.global_tokens(3),
    sk.global_tokens(indices=[2, 9, 30]),
    sk.random(4, seed=1, size=42),
    sk.bigbird(3, 5, 2, seed=2, size=42),
    sk.longformer(6, 2),
    sk.strided(3, 4) | sk.fixed(5),
    ~(sk.strided(8, 4) & sk.sliding_window(9)),
]


@pytest.mark.parametrize("pattern", PATTERNS, ids=lambda p: p.name)
def test_torch_tensors_give_the_dense_mask(pattern):
    n = 42
    idx = torch.arange(n)
    out = pattern(idx[:, None], idx[None, :])
    assert isinstance(out, torch.Tensor) and out.dtype == torch.bool
    np.testing.assert_array_equal(out.numpy(), pattern.dense(n))


@pytest.mark.parametrize("pattern", PATTERNS[:6], ids=lambda p: p.name)
def test_scalar_tensors_work_as_in_a_mask_mod(pattern):
    # FlexAttention calls mask_mod with 0-d index tensors (under vmap); check the 0-d case.
    dense = pattern.dense(12)
    for i, j in [(0, 0), (5, 3), (3, 5), (11, 0)]:
        assert bool(pattern(torch.tensor(i), torch.tensor(j))) == dense[i, j]

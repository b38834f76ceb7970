"""Patterns since 2023 in PyTorch: BlockMask tables, FlexAttention eager and compiled, against dense.

For each new family at lengths that are and are not multiples of the block size, the ``BlockMask``
built from sparsekit's tile counts must equal ``create_block_mask`` (which evaluates every cell),
``create_mask`` must equal the numpy mask, and ``flex_attention`` with the block mask must equal dense
softmax attention under the boolean mask. Compiled runs only with SPARSEKIT_COMPILE_TESTS=1.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from marks import compiles

import sparsekit as sk

torch = pytest.importorskip("torch")  # the one optional dependency; sparsekit.torch must import

import torch.nn.attention.flex_attention as flex  # noqa: E402
from test_torch_blockmask import (  # noqa: E402  (after the skip: the module needs torch)
    BLOCK,
    TOLERANCE,
    compiled_flex,  # noqa: F401  (a fixture)
    dense_attention,
    reference,
    valid_prefix,
)

import sparsekit.torch as skt  # noqa: E402

LENGTHS = (64, 100, 129)
GRIDS = {64: (8, 8, 3, 5), 100: (10, 10, 5, 3), 129: (3, 43, 3, 5), 300: (12, 25, 5, 7)}


def tree(n: int) -> sk.Pattern:
    """A prefix and a 3-level tree of 2 roots with 2 children each, then chains to fill ``n``."""
    parents = [-1, -1, 0, 0, 1, 1, 2, 3, 4, 6]
    prefix = n - len(parents) - 6
    return sk.tree(parents + [9, 10, 11, 12, 13, 5], prefix)


def documents(n: int) -> sk.Pattern:
    sizes = [1, 17, 1, 40]
    return sk.document(sizes + [n - sum(sizes)])


FAMILIES = {
    "attention_sinks": lambda n: sk.attention_sinks(4, 13),
    "causal_window": lambda n: sk.causal_window(20),
    "prefix_lm": lambda n: sk.prefix_lm(37),
    "chunked": lambda n: sk.chunked(24),
    "document": documents,
    "document_window": lambda n: sk.document([30, n - 30], sk.sliding_window(8)),
    "neighborhood_2d": lambda n: sk.neighborhood_2d(*GRIDS[n]),
    "tree": tree,
    "bigbird_blocks": lambda n: sk.bigbird_blocks(16, 2, 3, 1, seed=4),
}
CASES = [(family, n) for family in sorted(FAMILIES) for n in LENGTHS]


@pytest.mark.parametrize(("family", "n"), CASES)
def test_block_mask_equals_create_block_mask(family, n):
    pattern = FAMILIES[family](n)
    ours, theirs = skt.block_mask(pattern, n, block_size=BLOCK), reference(pattern, n)
    for num, idx in (("kv_num_blocks", "kv_indices"), ("full_kv_num_blocks", "full_kv_indices")):
        torch.testing.assert_close(getattr(ours, num), getattr(theirs, num), rtol=0, atol=0)
        assert valid_prefix(getattr(ours, num), getattr(ours, idx)) == valid_prefix(
            getattr(theirs, num), getattr(theirs, idx)
        )
    torch.testing.assert_close(ours.to_dense(), theirs.to_dense(), rtol=0, atol=0)


@pytest.mark.parametrize(("family", "n"), CASES)
def test_torch_predicate_equals_numpy(family, n):
    pattern = FAMILIES[family](n)
    mask = flex.create_mask(skt.mask_mod(pattern, n), 1, 1, n, n, device="cpu")
    np.testing.assert_array_equal(mask[0, 0].numpy(), pattern.dense(n))


def run_flex(attend, pattern: sk.Pattern, n: int, block: int) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen, dtype=torch.float32) for _ in range(3))
    out = attend(q, k, v, block_mask=skt.block_mask(pattern, n, block_size=block))
    expected = dense_attention(q, k, v, pattern.dense(n))
    assert not torch.isnan(out).any()
    torch.testing.assert_close(out, expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_flex_attention_equals_dense_masked_attention(family):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # eager flex_attention warns that it is not compiled
        run_flex(flex.flex_attention, FAMILIES[family](100), 100, BLOCK)


# Compiling is a C++ build per family: three table-driven families at one length not a multiple of
# 128 cover the gathers (document, tree, random blocks); the arithmetic ones compile like axial.
@compiles("compiles one C++ kernel per family (several seconds each)")
@pytest.mark.parametrize("family", ["bigbird_blocks", "document", "neighborhood_2d", "tree"])
def test_compiled_flex_attention_equals_dense_masked_attention(family, compiled_flex):  # noqa: F811
    run_flex(compiled_flex, FAMILIES[family](300), 300, 128)

"""Run sparsekit patterns in PyTorch (optional: needs ``torch``).

``import sparsekit`` never imports torch; ``import sparsekit.torch`` does.

* :mod:`sparsekit.torch.blockmask`: a pattern as a FlexAttention ``mask_mod`` and ``BlockMask``, the
  latter built from sparsekit's own block layout without evaluating ``n x n`` cells.
* :mod:`sparsekit.torch.backends`: every way sparsekit computes attention: causal and masked SDPA,
  FlexAttention eager or compiled (a bounded cache of compiled callables, so a process may compile any
  number of patterns), and tile attention, whose exact backward runs where FlexAttention has none (CPU).
* :mod:`sparsekit.torch.layers`: :class:`~sparsekit.torch.layers.SparseAttention2d`, sparse attention
  over the pixels of a feature map (relative position bias, head gates and pruning, exact attention
  statistics), and a small classifier built on it.
* :mod:`sparsekit.torch.training`: synthetic images and seeded training steps for that classifier.
* :mod:`sparsekit.torch.measure`: time and peak memory (used by the chapters and ``benchmarks/``).

Paraphrase fusion on real language models is :mod:`sparsekit.hf`; the numpy side of the seed's vision
patterns and mask checks is :func:`sparsekit.vision_pattern` and :func:`sparsekit.mask_report`.
"""

from .backends import causal_sdpa, compiled_flex_attention, flex_attention_fn, masked_sdpa_fn
from .blockmask import block_mask, block_tables, mask_mod
from .layers import SparseAttention2d, SparseAttentionClassifier
from .measure import format_measurements, measure_layer, time_backends
from .training import synthetic_images, train_steps

__all__ = [
    "SparseAttention2d",
    "SparseAttentionClassifier",
    "block_mask",
    "block_tables",
    "causal_sdpa",
    "compiled_flex_attention",
    "flex_attention_fn",
    "format_measurements",
    "mask_mod",
    "masked_sdpa_fn",
    "measure_layer",
    "synthetic_images",
    "time_backends",
    "train_steps",
]

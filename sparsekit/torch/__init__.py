"""Run sparsekit patterns in PyTorch (optional: needs ``torch``).

``import sparsekit`` never imports torch; ``import sparsekit.torch`` does.

* :mod:`sparsekit.torch.blockmask`: a pattern as a FlexAttention ``mask_mod`` and ``BlockMask``, the
  latter built from sparsekit's own block layout without evaluating ``n x n`` cells.
* :mod:`sparsekit.torch.fusion`: paraphrase fusion run for real: a character tokenizer, a tiny seeded
  decoder patched with ``flex_attention``, cached generation, and the equivalence, isolation, fusion
  and timing checks.
* :mod:`sparsekit.torch.layers`: :class:`~sparsekit.torch.layers.SparseAttention2d`, sparse attention
  over the pixels of a feature map (FlexAttention forward, exact block-sparse backward on the CPU,
  relative position bias, head gates and pruning, exact attention statistics), a small classifier,
  synthetic images and timings.
"""

from .blockmask import block_mask, block_tables, mask_mod
from .fusion import (
    CharTokenizer,
    TinyTransformer,
    build_prompt,
    equivalence,
    fusion_effect,
    generate,
    isolation,
    mask_report,
    patch_flex_attention,
    time_backends,
    unpatch,
)
from .layers import (
    SparseAttention2d,
    SparseAttentionClassifier,
    format_measurements,
    measure_layer,
    synthetic_images,
    train_steps,
    vision_pattern,
)

__all__ = [
    "CharTokenizer",
    "SparseAttention2d",
    "SparseAttentionClassifier",
    "TinyTransformer",
    "block_mask",
    "block_tables",
    "build_prompt",
    "equivalence",
    "format_measurements",
    "fusion_effect",
    "generate",
    "isolation",
    "mask_mod",
    "mask_report",
    "measure_layer",
    "patch_flex_attention",
    "synthetic_images",
    "time_backends",
    "train_steps",
    "unpatch",
    "vision_pattern",
]

"""sparsekit: sparse-attention masks defined once, as exact vectorized predicates.

Every pattern is a :class:`Pattern` built by a factory (:func:`causal`, :func:`strided`, ...). Its
predicate ``p(q, kv)`` is the definition; ``p.dense(n)``, ``p.labels(n)``, ``p.row_counts(n)``,
``p.nnz(n)``, ``p.sparsity(n)``, ``p.blocks(n, block_size)`` and ``p.nonzeros(n, order)`` are derived
from it and agree with it exactly.
"""

from ._validate import check_fraction, check_int
from .attention import block_sparse_attention, masked_scores
from .masks.blocksparse import bigbird_blocks
from .masks.causal import causal
from .masks.chunked import chunked
from .masks.documents import document
from .masks.image import axial
from .masks.local import block_local, dilated_sliding_window, sliding_window, window
from .masks.longrange import bigbird, global_tokens, longformer, random
from .masks.neighborhood import neighborhood_2d
from .masks.prefix import prefix_lm
from .masks.segments import ParaphraseFusion, Segment, mask_report, paraphrase_fusion
from .masks.selection import SelectedBlocks, block_means, block_select, moba, nsa_scores, quest_scores
from .masks.sparse_transformer import fixed, strided
from .masks.streaming import attention_sinks, causal_window
from .masks.tree import tree
from .masks.vision import VISION_PATTERNS, vision_pattern
from .pattern import (
    DIAGONAL,
    GLOBAL,
    LABEL_NAMES,
    LOCAL,
    NO_ATTENTION,
    Pattern,
    set_memory_budget,
)
from .stack import layer_schedule, layers_to_reach, receptive_field, receptive_fields

__version__ = "0.1.0"

__all__ = [
    "DIAGONAL",
    "GLOBAL",
    "LABEL_NAMES",
    "LOCAL",
    "NO_ATTENTION",
    "ParaphraseFusion",
    "Pattern",
    "Segment",
    "SelectedBlocks",
    "VISION_PATTERNS",
    "attention_sinks",
    "axial",
    "bigbird",
    "bigbird_blocks",
    "block_means",
    "block_select",
    "block_sparse_attention",
    "check_fraction",
    "check_int",
    "block_local",
    "causal",
    "causal_window",
    "chunked",
    "dilated_sliding_window",
    "document",
    "explore",
    "fixed",
    "global_tokens",
    "layer_schedule",
    "layers_to_reach",
    "longformer",
    "mask_report",
    "masked_scores",
    "moba",
    "neighborhood_2d",
    "nsa_scores",
    "paraphrase_fusion",
    "prefix_lm",
    "quest_scores",
    "random",
    "receptive_field",
    "receptive_fields",
    "set_memory_budget",
    "sliding_window",
    "strided",
    "tree",
    "vision_pattern",
    "window",
]


def __getattr__(name: str):
    # The live explorer needs matplotlib and ipywidgets: imported on first use, so `import sparsekit`
    # stays as light as the masks it defines.
    if name == "explore":
        from .explorer import explore

        return explore
    raise AttributeError(f"module 'sparsekit' has no attribute {name!r}")

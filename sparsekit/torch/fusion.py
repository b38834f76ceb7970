"""Paraphrase fusion, run for real: tokenize, lay out, patch a model with FlexAttention, generate.

The pipeline of the paraphrase-fusion chapter, end to end on the CPU, with a tiny model whose weights
are fixed random numbers (nothing is downloaded):

1. **Input**: a question and ``k`` paraphrases, as text; :class:`CharTokenizer` turns them into ids.
2. **Concatenation with position tracking**: :func:`build_prompt` lays them out as
   ``[question][paraphrase 0][sep][paraphrase 1]...[paraphrase k-1][answer sep][generated]`` and
   returns the ids, the :class:`~sparsekit.ParaphraseFusion` pattern of the full length and the
   :class:`Spans` (which positions hold what).
3. **Mask**: :func:`sparsekit.torch.blockmask.block_mask` turns the pattern into a FlexAttention
   ``BlockMask``.
4. **Patch the model**: :func:`patch_flex_attention` replaces the attention function of every layer of
   :class:`TinyTransformer` (dense causal SDPA by default) by ``flex_attention`` with that mask, the way
   one patches the attention of a Hugging Face model; :func:`unpatch` restores it.
5. **Encoding**: one forward pass over the prompt; each paraphrase sees only itself and the question.
6. **Generation**: :func:`generate` decodes greedily one token at a time with a key/value cache; each
   new token attends to every earlier position its row of the pattern allows (fusion: all of them).
7. **Decode**: :meth:`CharTokenizer.decode`.

The checks return numbers: :func:`equivalence` (FlexAttention against dense attention under the boolean
mask), :func:`isolation` (replacing one paraphrase leaves every other position of the prompt exactly
unchanged), :func:`fusion_effect` (replacing any paraphrase changes the logits that choose the first
generated token), :func:`mask_report` (the seed's causal, cross-segment and fusion counts; numpy only)
and :func:`time_backends` (measured times of one attention call).

Why an answer separator. The logits that choose the first generated token come from the *last prompt
position*. Without an extra token that position is the last token of the last paraphrase, an isolated
row that sees only that paraphrase and the question, so the first generated token would ignore every
other paraphrase (:func:`fusion_effect` measures exactly 0 for them). :func:`build_prompt` therefore
ends the prompt with one separator token placed in the pattern's generated region (``answer_separator``):
its row attends to everything, and the first generated token is chosen from fused context.

Eager ``flex_attention`` on the CPU (``torch.compile`` not used) runs an unfused reference: it builds
the full ``n x n`` score matrix and evaluates the ``mask_mod`` on *every* cell; it reads only the
``mask_mod`` of the ``BlockMask`` and ignores its tile tables (emptying them changes nothing), so it is
much slower than dense SDPA (see :func:`time_backends`). ``torch.compile(flex_attention)`` generates a
kernel that walks the tile tables: it skips empty tiles and applies the ``mask_mod`` only on partial
ones (emptying them changes its output).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from .._validate import check_int
from ..masks.segments import ParaphraseFusion, paraphrase_fusion
from ..pattern import Pattern
from .blockmask import block_mask, mask_mod

__all__ = [
    "EQUIVALENCE_TOLERANCE",
    "CACHE_TOLERANCE",
    "CharTokenizer",
    "Generation",
    "KVCache",
    "Prompt",
    "Spans",
    "TinyTransformer",
    "build_prompt",
    "causal_sdpa",
    "equivalence",
    "flex_attention_fn",
    "fusion_effect",
    "generate",
    "isolation",
    "mask_report",
    "masked_sdpa_fn",
    "patch_attention",
    "patch_flex_attention",
    "patched",
    "replace_span",
    "time_backends",
    "timing_pattern",
    "unpatch",
]

#: Largest ``|flex - dense|`` accepted by the tests (float32, CPU): eager ``flex_attention`` and SDPA
#: with a boolean mask sum the same terms in a different order. Measured: 1.9e-6 over the logits and
#: hidden states of a 2-layer, 64-wide model at n = 124; 3.6e-7 to 8.3e-7 for one attention call.
EQUIVALENCE_TOLERANCE = 1e-5
#: Largest ``|cached - recomputed|`` logit difference accepted between cached decoding (SDPA on one
#: query row) and recomputing the full sequence with the patched model (eager ``flex_attention``).
CACHE_TOLERANCE = 1e-5

#: ``(q, k, v) -> out`` on tensors ``(batch, heads, length, head_dim)``: the attention a layer runs.
AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

_EAGER_WARNING = "flex_attention called without torch.compile"


# ------------------------------------------------------------------------------------------------
# 1. Tokenizer
# ------------------------------------------------------------------------------------------------
class CharTokenizer:
    """Character-level tokenizer over a fixed alphabet: printable ASCII (space to ``~``) and newline.

    Id 0 is the separator token, id 1 the unknown token, and ids ``2, 3, ...`` the characters of
    :attr:`alphabet` in order, so the vocabulary is fixed and needs no training or download.
    ``decode(encode(text)) == text`` for every text written in the alphabet; characters outside it
    encode to the unknown id and decode to ``"\\ufffd"``; the separator decodes to ``"\\u241f"``.
    """

    #: The characters, in id order from ``first_char_id``.
    alphabet: str = "".join(chr(c) for c in range(32, 127)) + "\n"
    separator_id: int = 0
    unknown_id: int = 1
    first_char_id: int = 2
    #: Text the special tokens decode to (outside the alphabet, so decoding stays unambiguous).
    separator_text: str = "\u241f"
    unknown_text: str = "\ufffd"

    def __init__(self) -> None:
        self._ids = {ch: self.first_char_id + k for k, ch in enumerate(self.alphabet)}
        self._chars = [self.separator_text, self.unknown_text, *self.alphabet]

    @property
    def vocab_size(self) -> int:
        """How many ids there are (the two special tokens and the alphabet)."""
        return len(self._chars)

    def encode(self, text: str) -> list[int]:
        """Ids of the characters of ``text``; characters outside the alphabet become the unknown id."""
        if not isinstance(text, str):
            raise ValueError(f"text must be a str, got {type(text).__name__}")
        return [self._ids.get(ch, self.unknown_id) for ch in text]

    def decode(self, ids: Sequence[int] | np.ndarray | torch.Tensor) -> str:
        """Text of a sequence of ids, each in ``[0, vocab_size - 1]``."""
        values = _as_int_list(ids, "ids")
        for k, v in enumerate(values):
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"ids[{k}] must be in [0, {self.vocab_size - 1}], got {v}")
        return "".join(self._chars[v] for v in values)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


def _as_int_list(ids: object, name: str) -> list[int]:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    if isinstance(ids, str | bytes):
        raise ValueError(f"{name} must be a 1-D sequence of integer ids, got {type(ids).__name__}")
    arr = np.asarray(ids)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ValueError(f"{name} must be a 1-D sequence of integer ids, got shape {arr.shape} {arr.dtype}")
    return [int(v) for v in arr]


# ------------------------------------------------------------------------------------------------
# 2. Concatenation with position tracking
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Spans:
    """Which positions of the sequence hold what (``range`` objects of token positions).

    Attributes
    ----------
    question : range
        The shared prefix (empty when the question is empty).
    paraphrases : tuple of range
        One span per paraphrase, in order.
    separators : tuple of range
        The separator groups between consecutive paraphrases (empty ranges when ``separator_tokens``
        is 0).
    answer : range
        The answer separator that ends the prompt inside the generated region (empty when off).
    generated : range
        The positions the generated tokens will take.
    """

    question: range
    paraphrases: tuple[range, ...]
    separators: tuple[range, ...]
    answer: range
    generated: range

    @property
    def prompt_length(self) -> int:
        """Tokens of the prompt (everything before the first generated token)."""
        return self.generated.start

    @property
    def length(self) -> int:
        """Tokens of the full sequence, prompt and generated."""
        return self.generated.stop


class Prompt(NamedTuple):
    """What :func:`build_prompt` returns: ``ids, pattern, spans = build_prompt(...)``."""

    ids: torch.Tensor  #: The token ids of the prompt, ``int64 (prompt length,)``.
    pattern: ParaphraseFusion  #: Its paraphrase-fusion mask, generated tokens included.
    spans: Spans  #: Where the question, each paraphrase and the generated tokens lie.


def build_prompt(
    question: str,
    paraphrases: Sequence[str],
    tokenizer: CharTokenizer,
    separator_tokens: int = 1,
    num_generated_tokens: int = 8,
    answer_separator: bool = True,
) -> Prompt:
    """Concatenate question and paraphrases, and track the positions of each part.

    Layout: ``[question][paraphrase 0][sep x s][paraphrase 1]...[paraphrase k-1][answer sep][generated]``.
    The pattern is ``paraphrase_fusion(lengths=..., separator_tokens=s, prefix_tokens=len(question),
    num_generated_tokens=num_generated_tokens + answer)``: the answer separator is the first token of
    the generated region, so the row whose logits choose the first generated token is a fusion row
    (see the module docstring). Each character is one token.

    Parameters
    ----------
    question : str
        The shared prefix; may be empty.
    paraphrases : sequence of str
        At least one paraphrase, each at least one character.
    tokenizer : CharTokenizer
        Turns text into ids.
    separator_tokens : int
        Separator tokens between consecutive paraphrases; ``>= 0``.
    num_generated_tokens : int
        Tokens to generate after the prompt; ``>= 0``.
    answer_separator : bool
        End the prompt with one separator token in the generated region (default ``True``).

    Returns
    -------
    Prompt
        ``ids`` (``int64`` tensor of the prompt, ``spans.prompt_length`` tokens), ``pattern`` (the
        ParaphraseFusion pattern of the full sequence, ``pattern.length == spans.length``) and
        ``spans``.
    """
    if not isinstance(tokenizer, CharTokenizer):
        raise ValueError(f"tokenizer must be a CharTokenizer, got {type(tokenizer).__name__}")
    if not isinstance(question, str):
        raise ValueError(f"question must be a str, got {type(question).__name__}")
    if isinstance(paraphrases, str) or not isinstance(paraphrases, Sequence):
        raise ValueError("paraphrases must be a sequence of at least one non-empty str")
    if not paraphrases:
        raise ValueError("paraphrases must hold at least one paraphrase")
    for k, text in enumerate(paraphrases):
        if not isinstance(text, str) or not text:
            raise ValueError(f"paraphrases[{k}] must be a non-empty str, got {text!r}")
    separator_tokens = check_int("separator_tokens", separator_tokens, low=0)
    num_generated_tokens = check_int("num_generated_tokens", num_generated_tokens, low=0)
    if not isinstance(answer_separator, bool):
        raise ValueError(f"answer_separator must be True or False, got {answer_separator!r}")

    sep = tokenizer.separator_id
    ids = tokenizer.encode(question)
    question_span = range(0, len(ids))
    para_spans, sep_spans = [], []
    for k, text in enumerate(paraphrases):
        if k:
            sep_spans.append(range(len(ids), len(ids) + separator_tokens))
            ids += [sep] * separator_tokens
        start = len(ids)
        ids += tokenizer.encode(text)
        para_spans.append(range(start, len(ids)))
    answer = range(len(ids), len(ids) + int(answer_separator))
    ids += [sep] * int(answer_separator)
    spans = Spans(
        question=question_span,
        paraphrases=tuple(para_spans),
        separators=tuple(sep_spans),
        answer=answer,
        generated=range(len(ids), len(ids) + num_generated_tokens),
    )
    pattern = paraphrase_fusion(
        lengths=[len(r) for r in para_spans],
        separator_tokens=separator_tokens,
        prefix_tokens=len(question_span),
        num_generated_tokens=num_generated_tokens + int(answer_separator),
    )
    if pattern.length != spans.length or pattern.generation_start != answer.start:  # layouts agree
        raise AssertionError("build_prompt and paraphrase_fusion disagree on the layout")
    return Prompt(torch.tensor(ids, dtype=torch.int64), pattern, spans)


# ------------------------------------------------------------------------------------------------
# 3-4. A tiny decoder whose attention function can be patched
# ------------------------------------------------------------------------------------------------
def causal_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The default attention: dense causal ``scaled_dot_product_attention``."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def masked_sdpa_fn(mask: np.ndarray | torch.Tensor) -> AttentionFn:
    """Dense SDPA under a boolean mask ``(n, n)`` (``True`` = may attend): the dense reference."""
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if m.dtype != torch.bool or m.ndim != 2:
        raise ValueError(f"mask must be a 2-D boolean array, got {m.dtype} of shape {tuple(m.shape)}")

    def masked_sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=m)

    return masked_sdpa


def _flex_call(q, k, v, block_mask, **options):
    """``flex_attention`` as sparsekit compiles it: a code object of its own, so that dropping
    sparsekit's compiled graphs never touches a caller's ``torch.compile(flex_attention)``."""
    return flex_attention(q, k, v, block_mask=block_mask, **options)


# Compiled regions by (pattern name, lengths, tile size); see _compiled_flex_attention.
_compiled_regions: dict = {}


def _compiled_flex_attention(mask: BlockMask) -> Callable:
    """``torch.compile(flex_attention, dynamic=False)`` for ``mask``, in a recompile region of its own.

    Each pattern is a new graph of the one compiled function: in a single cache the 9th pattern of a
    process would hit dynamo's ``recompile_limit`` (8). Here each pattern (its name, lengths and tile
    size) gets its own region (``isolate_recompiles=True``), so only its own shapes count against that
    limit. All regions share ``accumulated_recompile_limit``; keeping at most ``accumulated //
    recompile_limit`` regions, and dropping every compiled graph of :func:`_flex_call` when one more
    is needed, keeps the cache bounded and under that cap (a dropped graph recompiles from inductor's
    on-disk cache in about a second).
    """
    pattern = getattr(mask.mask_mod, "pattern", None)
    key = (mask.mask_mod if pattern is None else pattern.name, mask.seq_lengths, mask.BLOCK_SIZE)
    if key not in _compiled_regions:
        config = torch._dynamo.config
        if len(_compiled_regions) + 1 > config.accumulated_recompile_limit // config.recompile_limit:
            torch._dynamo.reset_code(_flex_call.__code__)
            _compiled_regions.clear()
        _compiled_regions[key] = torch.compile(_flex_call, dynamic=False, isolate_recompiles=True)
    return _compiled_regions[key]


def flex_attention_fn(mask: BlockMask, compile: bool = False) -> AttentionFn:
    """``flex_attention`` with ``mask`` as a layer's attention function.

    Eager (``compile=False``) runs PyTorch's unfused reference, which evaluates the ``mask_mod`` on
    every cell; its one-time "called without torch.compile" warning is silenced here because that path
    is chosen on purpose. ``compile=True`` uses ``torch.compile(flex_attention)`` (C++ kernel on the
    CPU, compiled once per shape: seconds), in a recompile region per pattern, so a process may
    compile any number of patterns. Dynamo compiles at most ``recompile_limit`` (8) shapes per pattern;
    past it the call raises ``FailOnRecompileLimitHit`` instead of falling back to eager.
    """
    if not isinstance(mask, BlockMask):
        raise ValueError(f"mask must be a FlexAttention BlockMask, got {type(mask).__name__}")
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")

    def flex(q, k, v):
        # Past torch._dynamo.config.recompile_limit (8) shapes, a compiled function silently runs
        # eagerly instead; make that an error (FailOnRecompileLimitHit) so "compiled" never means eager.
        strict = torch._dynamo.config.patch(fail_on_recompile_limit_hit=True)
        with warnings.catch_warnings(), strict if compile else contextlib.nullcontext():
            warnings.filterwarnings("ignore", message=_EAGER_WARNING)
            attend = _compiled_flex_attention(mask) if compile else flex_attention
            return attend(q, k, v, block_mask=mask)

    flex.block_mask = mask
    return flex


class KVCache:
    """Keys and values of every layer for the positions seen so far, ``(batch, heads, length, dim)``."""

    def __init__(self, num_layers: int) -> None:
        self.keys: list[torch.Tensor | None] = [None] * check_int("num_layers", num_layers, low=1)
        self.values: list[torch.Tensor | None] = [None] * num_layers

    @property
    def length(self) -> int:
        """Number of cached positions."""
        return 0 if self.keys[0] is None else int(self.keys[0].shape[-2])

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add the new positions' keys and values of ``layer``; return all of them."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=-2)
            v = torch.cat([self.values[layer], v], dim=-2)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class SelfAttention(nn.Module):
    """Multi-head self-attention whose core, :attr:`attention_fn`, is replaced by patching."""

    def __init__(self, d_model: int, num_heads: int, layer: int) -> None:
        super().__init__()
        self.num_heads, self.layer = num_heads, layer
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.attention_fn: AttentionFn = causal_sdpa

    def forward(
        self, x: torch.Tensor, cache: KVCache | None = None, attn_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)
        if attn_mask is not None:
            # Cached decoding: new queries against every cached key, the allowed ones given by the mask.
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        else:
            y = self.attention_fn(q, k, v)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, d_model: int, num_heads: int, layer: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, num_heads, layer)
        self.norm2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, x, cache=None, attn_mask=None):
        x = x + self.attn(self.norm1(x), cache, attn_mask)
        return x + self.mlp(self.norm2(x))


def _sinusoids(length: int, d_model: int) -> torch.Tensor:
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    freq = torch.exp(-math.log(10000.0) * torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.zeros(length, d_model, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d_model // 2]
    return table.float()


class TinyTransformer(nn.Module):
    """A small decoder-only transformer with fixed random weights (no training, no download).

    Token embedding plus sinusoidal positions, ``num_layers`` pre-norm blocks (multi-head attention,
    GELU MLP), a final LayerNorm and a linear head to ``vocab_size`` logits. Every weight is drawn from
    a ``torch.Generator`` seeded with ``seed`` (the global RNG is left untouched), so the same
    arguments give the same model on every machine. Gradients are off: the model is a measuring device
    for masks, not something to train. Attention is dense causal SDPA until patched
    (:func:`patch_flex_attention`).

    Parameters
    ----------
    vocab_size : int
        Number of token ids; ``>= 2``.
    d_model : int
        Width; ``>= 2``, a multiple of ``num_heads`` with an even head size.
    num_heads, num_layers : int
        ``>= 1``.
    max_positions : int
        Longest sequence the position table covers; ``>= 1``.
    seed : int
        Seed of the weights; ``>= 0``.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int = 64,
        num_heads: int = 4,
        num_layers: int = 2,
        max_positions: int = 4096,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.vocab_size = check_int("vocab_size", vocab_size, low=2)
        self.d_model = check_int("d_model", d_model, low=2)
        self.num_heads = check_int("num_heads", num_heads, low=1)
        self.num_layers = check_int("num_layers", num_layers, low=1)
        self.max_positions = check_int("max_positions", max_positions, low=1)
        self.seed = check_int("seed", seed, low=0)
        if d_model % num_heads or (d_model // num_heads) % 2:
            raise ValueError(
                f"d_model must be a multiple of num_heads={num_heads} with an even head size, got {d_model}"
            )
        # nn.Linear's own init draws from the global RNG; fork it so building a model changes nothing.
        with torch.random.fork_rng(devices=[]):
            self.embed = nn.Embedding(vocab_size, d_model)
            self.blocks = nn.ModuleList(Block(d_model, num_heads, i) for i in range(num_layers))
            self.norm = nn.LayerNorm(d_model)
            self.head = nn.Linear(d_model, vocab_size, bias=False)
        self.register_buffer("positions", _sinusoids(max_positions, d_model), persistent=False)
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in self.named_parameters():
                noise = torch.randn(param.shape, generator=gen)
                if "norm" in name:  # LayerNorm: weights near 1, biases near 0
                    param.copy_((1.0 if name.endswith("weight") else 0.0) + 0.1 * noise)
                elif name == "embed.weight":
                    param.copy_(noise)
                elif name.endswith("bias"):
                    param.copy_(0.1 * noise)
                else:  # fan-in scaling keeps activations of order 1 through the layers
                    param.copy_(noise / math.sqrt(param.shape[1]))
        self.requires_grad_(False)
        self.eval()

    def forward(
        self,
        ids: torch.Tensor,
        cache: KVCache | None = None,
        attn_mask: torch.Tensor | None = None,
        return_hidden: bool = False,
    ):
        """Logits ``(length, vocab)`` for ids ``(length,)``, or ``(batch, length, vocab)`` for 2-D ids.

        With a ``cache``, the ids are the positions after the cached ones and their keys and values are
        appended to it. ``attn_mask`` (boolean, broadcastable to ``(new, cached + new)``) selects the
        cached-decoding path, dense SDPA under that mask; without it every layer runs its
        ``attention_fn`` (which sees only the new positions, so it needs an empty cache).
        ``return_hidden=True`` also returns the residual stream after the embedding and after each
        block, a tuple of ``num_layers + 1`` tensors shaped like the input plus ``d_model``.
        """
        squeeze = ids.ndim == 1
        x_ids = ids[None] if squeeze else ids
        if x_ids.ndim != 2:
            raise ValueError(f"ids must be 1-D or 2-D, got shape {tuple(ids.shape)}")
        start = 0 if cache is None else cache.length
        if start and attn_mask is None:
            raise ValueError("attn_mask is required when the cache already holds positions")
        stop = start + x_ids.shape[1]
        if stop > self.max_positions:
            raise ValueError(f"positions must be < max_positions={self.max_positions}, got up to {stop - 1}")
        if x_ids.numel() and (int(x_ids.min()) < 0 or int(x_ids.max()) >= self.vocab_size):
            raise ValueError(f"ids must be in [0, {self.vocab_size - 1}]")
        x = self.embed(x_ids) + self.positions[start:stop]
        hidden = [x]
        for block in self.blocks:
            x = block(x, cache, attn_mask)
            hidden.append(x)
        logits = self.head(self.norm(x))
        if squeeze:
            logits, hidden = logits[0], [h[0] for h in hidden]
        return (logits, tuple(hidden)) if return_hidden else logits


def _check_model(model: object) -> TinyTransformer:
    if not isinstance(model, TinyTransformer):
        raise ValueError(f"model must be a TinyTransformer, got {type(model).__name__}")
    return model


def patch_attention(model: TinyTransformer, attention_fn: AttentionFn) -> list[AttentionFn]:
    """Replace the attention function of every layer; return the previous ones (in layer order)."""
    model = _check_model(model)
    if not callable(attention_fn):
        raise ValueError(f"attention_fn must be callable (q, k, v) -> out, got {attention_fn!r}")
    previous = [block.attn.attention_fn for block in model.blocks]
    for block in model.blocks:
        block.attn.attention_fn = attention_fn
    return previous


def patch_flex_attention(model: TinyTransformer, mask: BlockMask, compile: bool = False) -> TinyTransformer:
    """Patch every layer to run ``flex_attention`` with ``mask`` (see :func:`flex_attention_fn`).

    The patched model accepts only sequences of the mask's length: FlexAttention refuses others.
    """
    patch_attention(model, flex_attention_fn(mask, compile))
    return model


def unpatch(model: TinyTransformer) -> TinyTransformer:
    """Restore the default dense causal SDPA in every layer."""
    patch_attention(model, causal_sdpa)
    return model


@contextlib.contextmanager
def patched(model: TinyTransformer, attention_fn: AttentionFn) -> Iterator[TinyTransformer]:
    """Context manager: the model runs ``attention_fn`` inside, its previous functions after."""
    previous = patch_attention(model, attention_fn)
    try:
        yield model
    finally:
        for block, fn in zip(model.blocks, previous, strict=True):
            block.attn.attention_fn = fn


# ------------------------------------------------------------------------------------------------
# 5-6. Encoding and generation with a key/value cache
# ------------------------------------------------------------------------------------------------
class Generation(NamedTuple):
    """What :func:`generate` returns."""

    ids: torch.Tensor  #: prompt and generated tokens, ``int64 (prompt + num_tokens,)``
    tokens: torch.Tensor  #: the generated tokens, ``int64 (num_tokens,)``
    logits: torch.Tensor  #: the logits each token was chosen from, ``float32 (num_tokens, vocab)``


def _as_ids(ids: object, model: TinyTransformer, name: str = "ids") -> torch.Tensor:
    values = torch.tensor(_as_int_list(ids, name), dtype=torch.int64)
    if values.numel() == 0:
        raise ValueError(f"{name} must hold at least one token id")
    if int(values.min()) < 0 or int(values.max()) >= model.vocab_size:
        raise ValueError(f"{name} must be token ids in [0, {model.vocab_size - 1}]")
    return values


def _check_pattern(pattern: object) -> Pattern:
    if not isinstance(pattern, Pattern):
        raise ValueError(f"pattern must be a sparsekit Pattern, got {type(pattern).__name__}")
    return pattern


def generate(
    model: TinyTransformer,
    prompt_ids: Sequence[int] | torch.Tensor,
    pattern: Pattern,
    num_tokens: int,
    block_size: int = 128,
) -> Generation:
    """Greedy decoding, one token at a time, with a key/value cache and ``pattern`` as the mask.

    Encoding: one pass over the prompt with every layer patched to ``flex_attention`` under the
    pattern's upper-left ``P x P`` corner (``P = len(prompt_ids)``; its ``BlockMask`` comes from
    ``create_block_mask`` at length ``P``), which fills the cache. Generation: each new token is one
    query row at position ``t`` against the cached keys ``0..t``, allowed where ``pattern(t, kv)`` is
    true (for paraphrase fusion, every earlier position), computed by dense SDPA on that single row.
    The cache is exact only for causal patterns (no position sees a later one), which is checked.

    Parameters
    ----------
    model : TinyTransformer
    prompt_ids : sequence of int or torch.Tensor
        The prompt, ``P >= 1`` ids.
    pattern : Pattern
        The mask over prompt and generated tokens; positions ``0 .. P + num_tokens - 1`` are used.
    num_tokens : int
        Tokens to generate; ``>= 1``, with ``P + num_tokens <= model.max_positions``.
    block_size : int
        Tile size of the encoding ``BlockMask``; ``>= 1``.

    Returns
    -------
    Generation
        ``ids`` (prompt and generated), ``tokens`` and the ``logits`` each token was chosen from.
    """
    model = _check_model(model)
    prompt = _as_ids(prompt_ids, model, "prompt_ids")
    pattern = _check_pattern(pattern)
    num_tokens = check_int("num_tokens", num_tokens, low=1)
    block_size = check_int("block_size", block_size, low=1)
    p = prompt.numel()
    n = p + num_tokens
    if n > model.max_positions:
        raise ValueError(
            f"num_tokens must be <= max_positions - len(prompt_ids) = {model.max_positions - p}, "
            f"got {num_tokens}"
        )
    if isinstance(pattern, ParaphraseFusion) and n != pattern.length:
        raise ValueError(
            f"len(prompt_ids) + num_tokens must equal the pattern's layout length {pattern.length}, "
            f"got {p} + {num_tokens} = {n}"
        )
    idx = np.arange(n)
    if np.triu(np.asarray(pattern(idx[:, None], idx[None, :])), 1).any():
        raise ValueError("pattern must be causal (no position attending to a later one) for a KV cache")

    cache = KVCache(model.num_layers)
    prefill = create_block_mask(mask_mod(pattern), 1, 1, p, p, device="cpu", BLOCK_SIZE=block_size)
    tokens, logits = [], []
    with torch.no_grad():
        with patched(model, flex_attention_fn(prefill)):
            step = model(prompt, cache=cache)[-1]
        for t in range(p, n):
            token = int(torch.argmax(step))
            tokens.append(token)
            logits.append(step)
            if t == n - 1:
                break
            row = torch.as_tensor(np.asarray(pattern(np.array([t]), np.arange(t + 1))), dtype=torch.bool)
            step = model(torch.tensor([token]), cache=cache, attn_mask=row[None, :])[-1]
    generated = torch.tensor(tokens, dtype=torch.int64)
    return Generation(torch.cat([prompt, generated]), generated, torch.stack(logits))


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def _full_length(model: TinyTransformer, ids: object, pattern: object) -> tuple[torch.Tensor, Pattern]:
    ids = _as_ids(ids, model)
    pattern = _check_pattern(pattern)
    if isinstance(pattern, ParaphraseFusion) and ids.numel() != pattern.length:
        raise ValueError(
            f"ids must hold the full sequence, len(ids) == pattern.length = {pattern.length}, "
            f"got {ids.numel()}"
        )
    return ids, pattern


def _run(model: TinyTransformer, ids: torch.Tensor, attention_fn: AttentionFn):
    with torch.no_grad(), patched(model, attention_fn):
        return model(ids, return_hidden=True)


def _flex_run(model, ids, pattern, block_size, compile=False):
    return _run(model, ids, flex_attention_fn(block_mask(pattern, ids.numel(), block_size), compile))


def _check_spans(spans: object, pattern: ParaphraseFusion) -> Spans:
    if not isinstance(spans, Spans):
        raise ValueError(f"spans must be the Spans of build_prompt, got {type(spans).__name__}")
    if spans.length != pattern.length or len(spans.paraphrases) != len(pattern.lengths):
        raise ValueError("spans and pattern describe different layouts")
    return spans


def _need_fusion(pattern: object) -> ParaphraseFusion:
    if not isinstance(pattern, ParaphraseFusion):
        raise ValueError(f"pattern must be a ParaphraseFusion pattern, got {type(pattern).__name__}")
    return pattern


def _check_layout_run(model, ids, pattern, spans, block_size):
    """The arguments shared by :func:`isolation` and :func:`fusion_effect`, checked."""
    model = _check_model(model)
    ids, pattern = _full_length(model, ids, _need_fusion(pattern))
    return model, ids, pattern, _check_spans(spans, pattern), check_int("block_size", block_size, low=1)


def replace_span(ids: torch.Tensor, span: range, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """A copy of ``ids`` whose tokens in ``span`` are replaced by different ids (seeded, uniform)."""
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    out = ids.clone()
    shift = torch.randint(1, vocab_size, (len(span),), generator=gen)  # never 0: each token changes
    out[span.start : span.stop] = (ids[span.start : span.stop] + shift) % vocab_size
    return out


def equivalence(
    model: TinyTransformer, ids: object, pattern: Pattern, block_size: int = 128, compile: bool = False
) -> float:
    """Largest ``|flex - dense|`` over the logits and every layer's hidden states.

    The model runs once patched with ``flex_attention`` and :func:`sparsekit.torch.blockmask.block_mask`, once
    with dense SDPA under ``pattern.dense(n)``. Expected within :data:`EQUIVALENCE_TOLERANCE` (float32).
    ``ids`` is the full sequence (``len(ids) == pattern.length`` for paraphrase fusion).
    """
    model = _check_model(model)
    ids, pattern = _full_length(model, ids, pattern)
    block_size = check_int("block_size", block_size, low=1)
    flex_logits, flex_hidden = _flex_run(model, ids, pattern, block_size, compile)
    dense_logits, dense_hidden = _run(model, ids, masked_sdpa_fn(pattern.dense(ids.numel())))
    diffs = [
        (a - b).abs().max()
        for a, b in zip((flex_logits, *flex_hidden), (dense_logits, *dense_hidden), strict=True)
    ]
    return float(torch.stack(diffs).max())


def isolation(
    model: TinyTransformer,
    ids: object,
    pattern: ParaphraseFusion,
    spans: Spans,
    segment: int,
    block_size: int = 128,
    seed: int = 0,
) -> float:
    """Largest change of the encoding states outside paraphrase ``segment`` when its tokens change.

    Replaces every token of paraphrase ``segment`` by a different id (:func:`replace_span`), runs the
    flex-patched model on both sequences and returns the largest ``|difference|`` of the residual
    stream (embedding and every block) at every prompt position outside that paraphrase: the question,
    the separators and every other paraphrase. Masked cells enter softmax as ``exp(-inf) = 0`` and
    ``0 * v = 0`` whatever ``v``, so the result is exactly ``0.0``, not merely small.
    """
    model, ids, pattern, spans, block_size = _check_layout_run(model, ids, pattern, spans, block_size)
    segment = check_int("segment", segment, low=0, high=len(spans.paraphrases) - 1)
    span = spans.paraphrases[segment]
    other = np.ones(pattern.generation_start, dtype=bool)  # encoding positions: rows before generation
    other[span.start : span.stop] = False
    _, before = _flex_run(model, ids, pattern, block_size)
    _, after = _flex_run(model, replace_span(ids, span, model.vocab_size, seed), pattern, block_size)
    keep = torch.from_numpy(other)
    diffs = [
        (a[: other.size][keep] - b[: other.size][keep]).abs().max()
        for a, b in zip(before, after, strict=True)
    ]
    return float(torch.stack(diffs).max())


def fusion_effect(
    model: TinyTransformer,
    ids: object,
    pattern: ParaphraseFusion,
    spans: Spans,
    block_size: int = 128,
    seed: int = 0,
) -> list[float]:
    """Per paraphrase, the largest change of the logits that choose the first generated token.

    For each paraphrase in turn its tokens are replaced (:func:`replace_span`) and the flex-patched
    model is rerun; the value is ``max |logits[P - 1] change|`` with ``P = spans.prompt_length``: the
    row whose logits pick the first generated token. With the answer separator that row is a fusion
    row and every value is clearly positive; without it the row belongs to the last paraphrase and the
    values of all other paraphrases are exactly 0.
    """
    model, ids, pattern, spans, block_size = _check_layout_run(model, ids, pattern, spans, block_size)
    row = spans.prompt_length - 1
    base, _ = _flex_run(model, ids, pattern, block_size)
    out = []
    for span in spans.paraphrases:
        changed, _ = _flex_run(model, replace_span(ids, span, model.vocab_size, seed), pattern, block_size)
        out.append(float((changed[row] - base[row]).abs().max()))
    return out


def mask_report(pattern: ParaphraseFusion) -> dict[str, int | float | None]:
    """The seed's mask checks, counted exactly from the predicate (numpy only, rows in chunks).

    Returns a dict: ``length``, ``generation_start``, ``density``; ``causal_violations`` (allowed cells
    with ``kv > q``, should be 0); ``cross_segment_cells`` (allowed cells of encoding rows ``q <
    generation_start`` whose key lies in another span and outside the shared prefix, should be 0);
    ``first_generated_attends`` and ``first_generated_positions`` (how many of the ``generation_start``
    earlier positions row ``generation_start`` may attend to, and that number of earlier positions:
    the seed's "First generated token attends to: 50/50" for 5 paraphrases of 10 tokens; ``None``
    without a generated region).
    """
    pattern = _need_fusion(pattern)
    n, gen, prefix = pattern.length, pattern.generation_start, pattern.prefix_tokens
    seg = pattern.segment_ids()
    kv = np.arange(n)
    causal = cross = 0
    chunk = max(1, (1 << 22) // n)
    for lo in range(0, n, chunk):
        q = np.arange(lo, min(n, lo + chunk))
        allowed = np.asarray(pattern(q[:, None], kv[None, :]))
        causal += int(np.count_nonzero(allowed & (kv[None, :] > q[:, None])))
        enc = q < gen
        other = (seg[q][:, None] != seg[None, :]) & (kv[None, :] >= prefix)
        cross += int(np.count_nonzero(allowed[enc] & other[enc]))
    first = None
    if gen < n:
        first = int(np.count_nonzero(pattern(np.array([gen]), np.arange(gen))))  # earlier keys only
    return {
        "length": n,
        "generation_start": gen,
        "density": pattern.density(n),
        "causal_violations": causal,
        "cross_segment_cells": cross,
        "first_generated_attends": first,
        "first_generated_positions": gen if gen < n else None,
    }


# ------------------------------------------------------------------------------------------------
# Timing
# ------------------------------------------------------------------------------------------------
def timing_pattern(n: int) -> ParaphraseFusion:
    """The layout timed by :func:`time_backends`: 8 paraphrases, a question of ``n // 32`` tokens,
    4 separator tokens between paraphrases and ``n // 16`` generated tokens, ``n`` tokens in all."""
    n = check_int("n", n, low=64)
    prefix, separator, generated, k = n // 32, 4, n // 16, 8
    rest = n - prefix - generated - separator * (k - 1)
    lengths = [rest // k] * (k - 1) + [rest - (k - 1) * (rest // k)]
    return paraphrase_fusion(
        lengths=lengths, separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated
    )


def _best_ms(fn: Callable[[], torch.Tensor], repeat: int) -> tuple[float, torch.Tensor]:
    out = fn()  # warm-up (and, compiled, the compilation)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return 1e3 * best, out


def time_backends(
    lengths: Sequence[int] = (256, 512, 1024, 2048, 4096),
    num_heads: int = 4,
    head_dim: int = 16,
    block_size: int = 128,
    repeat: int = 3,
    compile: bool = True,
    seed: int = 0,
    num_threads: int | None = None,
) -> list[dict[str, object]]:
    """Measure one attention call on this machine for each length ``n`` of :func:`timing_pattern`.

    Inputs are float32 ``(1, num_heads, n, head_dim)`` from a seeded generator. Times are the best of
    ``repeat`` calls after one warm-up call, in milliseconds, with ``num_threads`` intra-op threads
    (default: ``torch.get_num_threads()``; restored afterwards); nothing is hard-coded. On a machine
    shared with other work, use ``num_threads=1``: OpenMP threads waiting for a descheduled sibling
    slowed eager ``flex_attention`` 20-30 times on a busy 2-core machine. Each dict holds ``n``,
    ``density`` (allowed fraction of cells), ``tiles_computed`` (non-empty tiles / all tiles at
    ``block_size``), ``threads``, and:

    * ``sdpa_causal_ms``: dense causal SDPA without a mask tensor (the unpatched model; a different
      mask, shown as the floor of dense attention);
    * ``sdpa_mask_ms``: dense SDPA with the boolean ``n x n`` mask (the dense reference);
    * ``flex_eager_ms``: eager ``flex_attention`` with the segment ``BlockMask``;
    * ``flex_compiled_ms`` and ``compile_s`` (first call, compilation included): the same through
      ``torch.compile``; ``None`` when ``compile=False`` or compilation failed, with the error text in
      ``compile_error``;
    * ``eager_max_abs_diff`` and ``compiled_max_abs_diff`` against ``sdpa_mask``.
    """
    if isinstance(lengths, str) or not isinstance(lengths, Sequence) or not lengths:
        raise ValueError("lengths must be a non-empty sequence of integers >= 64")
    sizes = [check_int(f"lengths[{k}]", v, low=64) for k, v in enumerate(lengths)]
    num_heads = check_int("num_heads", num_heads, low=1)
    head_dim = check_int("head_dim", head_dim, low=1)
    block_size = check_int("block_size", block_size, low=1)
    repeat = check_int("repeat", repeat, low=1)
    if not isinstance(compile, bool):
        raise ValueError(f"compile must be True or False, got {compile!r}")
    gen = torch.Generator().manual_seed(check_int("seed", seed, low=0))
    previous = torch.get_num_threads()
    threads = previous if num_threads is None else check_int("num_threads", num_threads, low=1)
    rows = []
    # One compiled shape per length: raise dynamo's recompile limit for this measurement only.
    limit = torch._dynamo.config.patch(recompile_limit=torch._dynamo.config.recompile_limit + len(sizes))
    try:
        torch.set_num_threads(threads)
        for n in sizes:
            q, k, v = (torch.randn(1, num_heads, n, head_dim, generator=gen) for _ in range(3))
            with torch.no_grad(), limit:
                rows.append(_time_one(q, k, v, block_size, repeat, compile))
    finally:
        torch.set_num_threads(previous)
    return rows


def _time_one(q, k, v, block_size: int, repeat: int, compile: bool) -> dict[str, object]:
    """One row of :func:`time_backends`, for inputs of length ``n = q.shape[-2]``."""
    n = q.shape[-2]
    pattern = timing_pattern(n)
    dense = masked_sdpa_fn(pattern.dense(n))
    eager = flex_attention_fn(block_mask(pattern, n, block_size))
    tiles = pattern.blocks(n, block_size)
    row: dict[str, object] = {
        "n": n,
        "density": pattern.density(n),
        "tiles_computed": float(np.count_nonzero(tiles)) / tiles.size,
        "threads": torch.get_num_threads(),
    }
    row["sdpa_causal_ms"], _ = _best_ms(lambda: causal_sdpa(q, k, v), repeat)
    row["sdpa_mask_ms"], ref = _best_ms(lambda: dense(q, k, v), repeat)
    row["flex_eager_ms"], out = _best_ms(lambda: eager(q, k, v), repeat)
    row["eager_max_abs_diff"] = float((out - ref).abs().max())
    row.update(flex_compiled_ms=None, compile_s=None, compiled_max_abs_diff=None, compile_error=None)
    if compile:
        compiled = flex_attention_fn(eager.block_mask, compile=True)
        start = time.perf_counter()
        try:
            compiled(q, k, v)
        except Exception as err:  # report the limitation, keep the other measurements
            row["compile_error"] = f"{type(err).__name__}: {err}"
        else:
            row["compile_s"] = time.perf_counter() - start
            row["flex_compiled_ms"], out = _best_ms(lambda: compiled(q, k, v), repeat)
            row["compiled_max_abs_diff"] = float((out - ref).abs().max())
    return row

"""Paraphrase fusion on Hugging Face causal language models (optional: needs ``torch`` and ``transformers``).

``import sparsekit`` never imports this module. The prompt is laid out as :func:`sparsekit.paraphrase_fusion`
defines it, with no separator tokens::

    [prefix] [paraphrase 0] ... [paraphrase k-1] [suffix] [generated ...]

and prefilled in **one** forward pass: every paraphrase token sees the prefix and its own paraphrase only;
the suffix (an answer cue such as ``"\\n"`` or ``"Answer:"``) lies in the pattern's generated region, so its
rows, and above all the last one, which picks the first answer token, see everything. Position ids
restart for every paraphrase where the prefix ends, as Parallel Context Windows do (Ratner et al., 2023);
the suffix and the generated tokens continue after the longest paraphrase. Paraphrase ``i``'s keys and
values are therefore exactly those of ``prefix + paraphrase i`` run alone, and the order of the
paraphrases changes nothing. Decoding is ordinary attention onto the whole cache: every generated row
attends to every earlier token, so it needs no mask.

Two attention backends give the same tokens:

* ``"flex"``: the prefill passes sparsekit's own :func:`sparsekit.torch.blockmask.block_mask` as
  ``attention_mask`` to a model loaded with ``attn_implementation="flex_attention"`` (transformers hands a 4-D
  ``BlockMask`` to ``flex_attention`` unchanged). transformers compiles ``flex_attention`` with dynamic
  shapes by default, which the CPU kernel of torch 2.13 fails to compile once a second prompt length
  arrives (C++ error ``cur_qSplitSize9`` was not declared); this module recompiles it with
  ``dynamic=False`` instead: one compilation per prompt shape, tens of seconds each on a CPU.
* ``"sdpa"``: the prefill passes the dense boolean ``(1, 1, n, n)`` mask of the same pattern to
  ``scaled_dot_product_attention``.

Decoding always runs on SDPA without a mask (one query row attends to the whole cache), so no
compilation happens per generated token. Everything runs under ``torch.no_grad()`` (FlexAttention has no
CPU backward).

:func:`generate` runs one of four ensembles on the same paraphrases (:data:`MODES`): ``single`` (prefix +
first paraphrase), ``concat`` (prefix + all paraphrases as one causal sequence, ordinary positions),
``fused`` (the layout above) and ``average`` (k separate runs, one per paraphrase; at each step the k
next-token log-probabilities are averaged, the best token is picked and fed to every run).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

from ._validate import check_int
from .masks.causal import causal
from .masks.segments import ParaphraseFusion, paraphrase_fusion

__all__ = [
    "BACKENDS",
    "MODES",
    "FusedPrompt",
    "Generation",
    "compare",
    "compile_timing",
    "emptied",
    "encode",
    "extend",
    "fused_prompt",
    "generate",
    "inductor_cache_counts",
    "isolation_gaps",
    "load",
    "prefill",
]

#: The four ensembles, in the order :func:`compare` runs them.
MODES = ("single", "concat", "fused", "average")
#: Attention backends of the prefill.
BACKENDS = ("flex", "sdpa")
_IMPLEMENTATION = {"flex": "flex_attention", "sdpa": "sdpa"}


class FusedPrompt(NamedTuple):
    """One prompt as a single forward pass sees it."""

    ids: torch.Tensor  #: Token ids, ``int64 (1, n)``.
    position_ids: torch.Tensor  #: Position of each token, ``int64 (1, n)``.
    pattern: ParaphraseFusion | None  #: The prompt's fusion pattern; ``None`` for a causal prompt.
    next_position: int  #: Position of the first generated token.

    @property
    def length(self) -> int:
        return int(self.ids.shape[1])

    @property
    def cells(self) -> int:
        """Attention cells (query, key pairs) of the prefill, exact from the pattern."""
        return (self.pattern or causal()).nnz(self.length)


class Generation(NamedTuple):
    """What :func:`generate` returns for one mode."""

    mode: str  #: One of :data:`MODES`.
    token_ids: list[int]  #: Generated ids (EOS included when it stopped the run).
    text: str  #: The generated ids decoded, special tokens left out.
    logprobs: list[float]  #: Each chosen token's log-probability under the mode's distribution.
    prompt_tokens: int  #: Prompt tokens run through the model, over all runs.
    attention_cells: int  #: Attention cells of the prefill(s), over all runs.
    runs: int  #: Sequences run (1, or k for ``average``).
    seconds: float  #: Measured wall time of prefill and decoding.
    prefill_seconds: float  #: The part of ``seconds`` spent on the prefill(s).

    def as_dict(self) -> dict[str, object]:
        return self._asdict()


# ------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------
def _check_backend(backend: object) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return str(backend)


def load(model: str | os.PathLike, backend: str = "flex", device: str = "cpu"):
    """Load a causal LM and its tokenizer for fusion: ``model, tokenizer = load(path)``.

    Parameters
    ----------
    model : str
        A local directory saved with ``save_pretrained`` (model and tokenizer), or a hub name where the
        hub is reachable. A name that looks like a path (it exists, or starts with ``.``, ``/`` or ``~``)
        must be a directory.
    backend : {"flex", "sdpa"}
        Attention implementation the model is loaded with (``flex_attention`` or ``sdpa``).
    device : str
        Where the weights go.

    Raises
    ------
    ValueError
        For a missing directory, a directory without a model or a tokenizer, or a model whose
        architecture does not support the backend; the message is one line.
    """
    backend = _check_backend(backend)
    name = os.fspath(model)
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        if not path.is_dir():
            raise ValueError(f"model: no such directory: {name}")
        if not (path / "config.json").is_file():
            raise ValueError(f"model: {name} holds no model (no config.json; save it with save_pretrained)")
        name = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"model: no tokenizer could be loaded from {name}: {_one_line(error)}") from error
    try:
        lm = AutoModelForCausalLM.from_pretrained(name, attn_implementation=_IMPLEMENTATION[backend])
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"model: no causal LM could be loaded from {name}: {_one_line(error)}") from error
    return lm.to(device).eval(), tokenizer


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:300] or type(error).__name__


# ------------------------------------------------------------------------------------------------
# Prompts
# ------------------------------------------------------------------------------------------------
def encode(
    tokenizer, prefix: str, paraphrases: Sequence[str], suffix: str
) -> tuple[list[int], list[list[int]], list[int]]:
    """Token ids ``(prefix, [paraphrase, ...], suffix)``: the prefix with the tokenizer's special tokens
    (e.g. BOS; a BOS alone when the prefix is empty), each paraphrase and the suffix without.

    Raises ``ValueError`` for a paraphrase that is empty or has no tokens, and for no paraphrase.
    """
    if not isinstance(prefix, str):
        raise ValueError(f"prefix must be a str, got {type(prefix).__name__}")
    if not isinstance(suffix, str):
        raise ValueError(f"suffix must be a str, got {type(suffix).__name__}")
    if isinstance(paraphrases, str) or not isinstance(paraphrases, Sequence) or not paraphrases:
        raise ValueError("paraphrases must be a sequence of at least one non-empty str")
    para_ids = []
    for k, text in enumerate(paraphrases):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"paraphrase {k + 1} is empty: every paraphrase needs some text")
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"paraphrase {k + 1} ({text!r}) has no tokens under this tokenizer")
        para_ids.append(list(ids))
    prefix_ids = list(tokenizer(prefix, add_special_tokens=True)["input_ids"]) if prefix else []
    if not prefix and tokenizer.bos_token_id is not None and _adds_bos(tokenizer):
        prefix_ids = [tokenizer.bos_token_id]
    suffix_ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"]) if suffix else []
    return prefix_ids, para_ids, suffix_ids


def _adds_bos(tokenizer) -> bool:
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == tokenizer.bos_token_id


def fused_prompt(
    prefix_ids: Sequence[int], paraphrase_ids: Sequence[Sequence[int]], suffix_ids: Sequence[int]
):
    """The fused layout of token ids: ids, per-segment position ids and the fusion pattern.

    The pattern is ``paraphrase_fusion(lengths, prefix_tokens=len(prefix), num_generated_tokens=
    len(suffix))``. Positions: the prefix ``0 .. P-1``; each paraphrase ``P .. P+L_i-1``; the suffix
    from ``P + max(L_i)`` on. With two or more paraphrases the suffix must hold a token, since the last
    prompt row picks the first answer token and only suffix rows see every paraphrase.
    """
    lengths = [len(ids) for ids in paraphrase_ids]
    if len(lengths) > 1 and not suffix_ids:
        raise ValueError(
            "suffix must hold at least one token when fusing two or more paraphrases (an answer cue "
            "such as 'Answer:'): only suffix rows see every paraphrase"
        )
    p = len(prefix_ids)
    ids = list(prefix_ids) + [t for para in paraphrase_ids for t in para] + list(suffix_ids)
    positions = list(range(p)) + [p + j for n in lengths for j in range(n)]
    start = p + max(lengths)
    positions += range(start, start + len(suffix_ids))
    pattern = paraphrase_fusion(lengths=lengths, prefix_tokens=p, num_generated_tokens=len(suffix_ids))
    return FusedPrompt(_row(ids), _row(positions), pattern, start + len(suffix_ids))


def _causal_prompt(ids: Sequence[int]) -> FusedPrompt:
    return FusedPrompt(_row(ids), _row(range(len(ids))), None, len(ids))


def extend(prompt: FusedPrompt, token_ids: Sequence[int]) -> FusedPrompt:
    """The whole sequence after generation: the prompt followed by ``token_ids``.

    The generated tokens take positions ``next_position, next_position + 1, ...`` and join the
    pattern's generated region (rows that see every earlier token), so one forward pass of the result
    under its own mask reproduces what the cached decoding computed token by token.
    """
    extra = [int(t) for t in token_ids]
    ids = torch.cat([prompt.ids, _row(extra).reshape(1, len(extra))], dim=1)
    start = prompt.next_position
    positions = torch.cat([prompt.position_ids, _row(range(start, start + len(extra))).reshape(1, -1)], 1)
    pattern = prompt.pattern
    if pattern is not None:
        pattern = paraphrase_fusion(
            lengths=pattern.lengths,
            separator_tokens=pattern.separator_tokens,
            prefix_tokens=pattern.prefix_tokens,
            num_generated_tokens=pattern.num_generated_tokens + len(extra),
        )
    return FusedPrompt(ids, positions, pattern, start + len(extra))


def _row(values) -> torch.Tensor:
    return torch.tensor([list(values)], dtype=torch.int64)


# ------------------------------------------------------------------------------------------------
# Attention backends
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _implementation(model, name: str) -> Iterator[None]:
    """Run the block with the model's attention implementation set to ``name``, then restore it."""
    before = model.config._attn_implementation
    if before != name:
        model.set_attn_implementation(name)
    try:
        yield
    finally:
        if before != name:
            model.set_attn_implementation(before)


_STATIC_FLEX = None


def _use_static_flex() -> None:
    """Make transformers' compiled ``flex_attention`` a ``dynamic=False`` compilation (see the module
    docstring: the dynamic one fails to compile on the CPU at the second prompt length)."""
    global _STATIC_FLEX
    from torch.nn.attention.flex_attention import flex_attention
    from transformers.integrations import flex_attention as hf_flex

    wrapper = hf_flex.WrappedFlexAttention(training=False)
    if _STATIC_FLEX is None:
        _STATIC_FLEX = torch.compile(flex_attention, dynamic=False)
    wrapper._compiled_flex_attention = _STATIC_FLEX


def _prompt_mask(prompt: FusedPrompt, backend: str, device):
    """The prefill's mask: sparsekit's BlockMask (flex) or the dense boolean mask (sdpa)."""
    pattern = prompt.pattern or causal()
    n = prompt.length
    if backend == "flex":
        from .torch.blockmask import block_mask

        return block_mask(pattern, n, device=device)
    return torch.from_numpy(pattern.dense(n)).to(device)[None, None]


def prefill(model, prompt: FusedPrompt, backend: str = "flex", mask=None, every_row: bool = False):
    """Run the prompt in one forward pass; returns ``(logits of the last row, DynamicCache)``.

    ``mask`` replaces the prompt's own mask (a ``BlockMask`` for ``"flex"``, a boolean ``(1, 1, n, n)``
    tensor for ``"sdpa"``), for probing what a backend reads, e.g. :func:`emptied`. ``every_row=True``
    returns the logits of every row, ``(n, vocab)``, instead of the last row's.
    """
    backend = _check_backend(backend)
    device = model.device
    cache = DynamicCache(config=model.config)
    if mask is None:
        mask = _prompt_mask(prompt, backend, device)
    with torch.no_grad(), _implementation(model, _IMPLEMENTATION[backend]):
        if backend == "flex":
            _use_static_flex()
        out = model(
            input_ids=prompt.ids.to(device),
            position_ids=prompt.position_ids.to(device),
            attention_mask=mask,
            cache=cache,
            use_cache=True,
            logits_to_keep=0 if every_row else 1,
        )
    return (out.logits[0] if every_row else out.logits[0, -1]).float(), cache


def emptied(mask):
    """``mask`` (a FlexAttention ``BlockMask``) with every tile table emptied, ``mask_mod`` kept.

    A kernel that reads the tables computes no tile at all; one that evaluates ``mask_mod`` on every
    cell (eager ``flex_attention`` on the CPU) gives the same output as with ``mask``.
    """
    from torch.nn.attention.flex_attention import BlockMask

    return BlockMask.from_kv_blocks(
        torch.zeros_like(mask.kv_num_blocks),
        mask.kv_indices,
        BLOCK_SIZE=mask.BLOCK_SIZE,
        mask_mod=mask.mask_mod,
        seq_lengths=mask.seq_lengths,
    )


def isolation_gaps(model, prompt: FusedPrompt, backend: str = "sdpa") -> list[float]:
    """For each paraphrase ``i``: the largest difference, over every layer's keys and values, between
    the fused prefill of ``prompt`` and ``prefix + paraphrase i`` run alone (the model's own causal
    mask and positions ``0, 1, ...``, on SDPA). With per-segment positions each is ``0`` up to float
    rounding; with positions that run on through the prompt they are not.
    """
    if prompt.pattern is None:
        raise ValueError("prompt must be a fused prompt (fused_prompt), not a causal one")
    _, fused = prefill(model, prompt, backend)
    p = prompt.pattern.prefix_tokens
    gaps = []
    for span in prompt.pattern.spans("paraphrase"):
        rows = list(range(p)) + list(range(span.start, span.stop))
        ids = prompt.ids[:, rows].to(model.device)
        with torch.no_grad(), _implementation(model, "sdpa"):
            alone = model(input_ids=ids, use_cache=True).cache
        gap = 0.0
        for got, ref in zip(fused.layers, alone.layers, strict=True):
            for a, b in ((got.keys, ref.keys), (got.values, ref.values)):
                gap = max(gap, float((a[:, :, rows] - b).abs().max()))
        gaps.append(gap)
    return gaps


def inductor_cache_counts() -> dict[str, int]:
    """How many compiled graphs inductor has found in its cache (``hit``) and compiled anew (``miss``)
    in this process so far: the difference over a call says whether its compilation was warm or cold."""
    from torch._dynamo.utils import counters

    inductor = counters["inductor"]
    return {"hit": inductor["fxgraph_cache_hit"], "miss": inductor["fxgraph_cache_miss"]}


def compile_timing(
    model,
    tokenizer,
    paraphrases: Sequence[str],
    prefix: str = "",
    suffix: str = "\n",
    repeat: int = 3,
) -> dict[str, float | int]:
    """Seconds of the compiled FlexAttention prefill of the fused prompt: cold, warm and compiled.

    Inside a new, empty inductor cache folder (deleted afterwards), everything compiled so far in this
    process is dropped (``torch._dynamo.reset()``) and the first prefill is timed: a **cold** compile.
    Dropped again, the next first prefill finds its kernels in that folder: a **warm** compile, what a
    second run of a program pays. Then the best of ``repeat`` further calls. Returns ``cold_seconds``,
    ``warm_seconds``, ``run_seconds``, the cache misses and hits of each first call (``cold_misses``,
    ``cold_hits``, ``warm_misses``, ``warm_hits``) and ``prompt_tokens``. ``torch._dynamo.reset()``
    drops every compiled graph of the process, here and at the end, so the next compiled call of any
    function compiles again (from the default cache: usually warm).
    """
    from torch._inductor.utils import fresh_cache

    from .torch.measure import best_of

    repeat = check_int("repeat", repeat, low=1)
    prompt = fused_prompt(*encode(tokenizer, prefix, paraphrases, suffix))
    result: dict[str, float | int] = {"prompt_tokens": prompt.length}
    with fresh_cache():
        for name in ("cold", "warm"):
            torch._dynamo.reset()
            before = inductor_cache_counts()
            start = time.perf_counter()
            prefill(model, prompt, "flex")
            result[f"{name}_seconds"] = time.perf_counter() - start
            after = inductor_cache_counts()
            result[f"{name}_misses"] = after["miss"] - before["miss"]
            result[f"{name}_hits"] = after["hit"] - before["hit"]
        result["run_seconds"] = best_of(lambda: prefill(model, prompt, "flex"), repeat)[0]
        torch._dynamo.reset()
    return result


def _step(model, cache, token: int, position: int) -> torch.Tensor:
    """Feed one token at ``position``; it attends to the whole cache, so no mask is needed."""
    device = model.device
    out = model(
        input_ids=torch.tensor([[token]], device=device),
        position_ids=torch.tensor([[position]], device=device),
        cache=cache,
        use_cache=True,
    )
    return out.logits[0, -1].float()


# ------------------------------------------------------------------------------------------------
# Generation
# ------------------------------------------------------------------------------------------------
def _eos_ids(model, tokenizer) -> set[int]:
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = set(ids if isinstance(ids, list) else [] if ids is None else [ids])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def _context(model) -> int | None:
    return getattr(model.config, "max_position_embeddings", None)


def _check_context(model, prompts: Sequence[FusedPrompt]) -> None:
    limit = _context(model)
    need = max(p.next_position for p in prompts)
    if limit is not None and need >= limit:
        raise ValueError(
            f"the prompt spans {need} positions, longer than the model's context of {limit} allows "
            "(max_position_embeddings, less one position for the answer): shorten the prefix or the "
            "paraphrases"
        )


def _check_window(model, prompts: Sequence[FusedPrompt], max_new_tokens: int) -> None:
    """Refuse runs longer than a sliding attention window: the prompt mask given to the model replaces
    its own, so the window would be ignored in the prefill and then cut the cache during decoding."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return
    need = max(p.length for p in prompts) + max_new_tokens
    if need > window:
        raise ValueError(
            f"the prompt and max_new_tokens need {need} tokens in the cache, more than this model's "
            f"sliding attention window of {window} (sliding_window): shorten the prompt or the budget"
        )


def _decode(model, tokenizer, prompts, backend, max_new_tokens):
    """Greedy decoding of one or more runs that share every choice (several runs: averaged log-probs)."""
    start = time.perf_counter()
    states = [prefill(model, p, backend) for p in prompts]
    prefill_seconds = time.perf_counter() - start
    logits = [s[0] for s in states]
    caches = [s[1] for s in states]
    eos = _eos_ids(model, tokenizer)
    limit = _context(model)
    token_ids, logprobs = [], []
    with torch.no_grad(), _implementation(model, "sdpa"):  # one query row: no mask, no compilation
        while True:
            mean = torch.stack([torch.log_softmax(row, -1) for row in logits]).mean(0)
            mean = torch.log_softmax(mean, -1)  # the normalized product of the runs' distributions
            token = int(mean.argmax())
            token_ids.append(token)
            logprobs.append(float(mean[token]))
            if token in eos or len(token_ids) == max_new_tokens:
                break
            if limit is not None and max(p.next_position for p in prompts) + len(token_ids) >= limit:
                break  # the next token's position would fall outside the model's context
            logits = [
                _step(model, cache, token, p.next_position + len(token_ids) - 1)
                for p, cache in zip(prompts, caches, strict=True)
            ]
    return token_ids, logprobs, prefill_seconds


def _prompts(mode: str, prefix_ids, para_ids, suffix_ids) -> list[FusedPrompt]:
    if mode == "single":
        return [_causal_prompt(prefix_ids + para_ids[0] + suffix_ids)]
    if mode == "concat":
        return [_causal_prompt(prefix_ids + [t for para in para_ids for t in para] + suffix_ids)]
    if mode == "fused":
        return [fused_prompt(prefix_ids, para_ids, suffix_ids)]
    return [_causal_prompt(prefix_ids + para + suffix_ids) for para in para_ids]


def generate(
    model,
    tokenizer,
    paraphrases: Sequence[str],
    prefix: str = "",
    suffix: str = "\n",
    mode: str = "fused",
    max_new_tokens: int = 16,
    backend: str = "flex",
) -> Generation:
    """Greedy answer of one ensemble (:data:`MODES`) over ``paraphrases``.

    Parameters
    ----------
    model, tokenizer
        A ``transformers`` causal LM and its tokenizer (see :func:`load`).
    paraphrases : sequence of str
        At least one non-empty paraphrase of the question.
    prefix : str
        Shared text before the paraphrases (tokenized with the tokenizer's special tokens, e.g. BOS).
    suffix : str
        Answer cue after the paraphrases (every mode appends it); fusing two or more paraphrases needs
        it to hold at least one token.
    mode : {"single", "concat", "fused", "average"}
        The ensemble (see the module docstring).
    max_new_tokens : int
        Token budget, ``>= 1``; generation also stops at EOS or at the end of the model's context
        (no generated token's position reaches ``max_position_embeddings``, as in ``model.generate``).
    backend : {"flex", "sdpa"}
        Attention of the prefill; decoding always uses SDPA without a mask.

    Returns
    -------
    Generation
        Generated ids, text, log-probabilities (for ``average``: of the normalized product of the k
        distributions, whose argmax is the argmax of the mean log-probability), prompt tokens and
        attention cells of the prefill summed over runs, the number of runs, and the measured seconds
        (in all, and of the prefill).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    backend = _check_backend(backend)
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, low=1)
    prefix_ids, para_ids, suffix_ids = encode(tokenizer, prefix, paraphrases, suffix)
    prompts = _prompts(mode, prefix_ids, para_ids, suffix_ids)
    _check_context(model, prompts)
    _check_window(model, prompts, max_new_tokens)
    start = time.perf_counter()
    token_ids, logprobs, prefill_seconds = _decode(model, tokenizer, prompts, backend, max_new_tokens)
    seconds = time.perf_counter() - start
    return Generation(
        mode=mode,
        token_ids=token_ids,
        text=tokenizer.decode(token_ids, skip_special_tokens=True),
        logprobs=logprobs,
        prompt_tokens=sum(p.length for p in prompts),
        attention_cells=sum(p.cells for p in prompts),
        runs=len(prompts),
        seconds=seconds,
        prefill_seconds=prefill_seconds,
    )


def compare(
    model, tokenizer, paraphrases: Sequence[str], repeat: int = 1, **options
) -> dict[str, Generation]:
    """:func:`generate` in every mode of :data:`MODES` on the same prompt; ``options`` as there.

    Each mode runs ``repeat`` times (``>= 1``) and keeps its fastest run: the tokens are the same every
    time, and the first call of a mode also pays one-off costs (compilation, warm caches).
    """
    if "mode" in options:
        raise ValueError("compare runs every mode: do not pass mode=")
    repeat = check_int("repeat", repeat, low=1)
    table = {}
    for mode in MODES:
        runs = [generate(model, tokenizer, paraphrases, mode=mode, **options) for _ in range(repeat)]
        table[mode] = min(runs, key=lambda run: run.seconds)
    return table

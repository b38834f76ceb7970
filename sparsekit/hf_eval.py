"""Accuracy, cross-order agreement and cost of the four ensembles of :mod:`sparsekit.hf` on many examples.

:func:`evaluate` answers every example in every mode of :data:`sparsekit.hf.MODES` from its first ``k``
paraphrases, for each ``k`` asked, in several orders of those paraphrases. The answers are the greedy
answers :func:`sparsekit.hf.generate` gives with the SDPA backend (the prompts are the ones it builds, and
decoding follows its rules: the averaged log-probabilities for ``average``, a stop at EOS, at the token
budget or at the end of the context); only the batching differs: many runs are padded on the left into
one prefill with per-run 4-D boolean masks and position ids, then decoded together with one cache. Padding
changes float rounding only, so an answer could differ from :func:`~sparsekit.hf.generate` only where
two tokens tie to within rounding; ``tests/test_hf_eval.py`` compares the two.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from transformers import DynamicCache

from . import hf
from ._validate import check_int
from .masks.causal import causal

__all__ = ["evaluate"]


def _orders(rng: np.random.Generator, k: int, count: int) -> list[tuple[int, ...]]:
    """``min(count, k!)`` distinct orders of ``k`` paraphrases: the given order, then random others."""
    wanted = min(count, math.factorial(k))
    orders = [tuple(range(k))]
    while len(orders) < wanted:
        order = tuple(int(i) for i in rng.permutation(k))
        if order not in orders:
            orders.append(order)
    return orders


def _chunks(lengths: Sequence[int], runs_per_item: int, batch_runs: int) -> list[list[int]]:
    """Items grouped, shortest prompts first, so that a group holds at most ``batch_runs`` runs."""
    per_group = max(1, batch_runs // runs_per_item)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + per_group] for i in range(0, len(order), per_group)]


def _decode_group(model, prompts: list[list[hf.FusedPrompt]], eos: set[int], budget: int, pad_id: int):
    """Greedy answers of several items at once; each item is one run, or several whose log-probabilities
    are averaged (``average``). Returns the generated ids of each item."""
    runs = [p for item in prompts for p in item]
    per_item = len(prompts[0])
    width = max(p.length for p in runs)
    batch = len(runs)
    ids = torch.full((batch, width), pad_id, dtype=torch.int64)
    positions = torch.zeros((batch, width), dtype=torch.int64)
    mask = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1, 1)  # padding rows see themselves only
    valid = torch.zeros((batch, width), dtype=torch.bool)
    for row, prompt in enumerate(runs):
        start = width - prompt.length  # left padding: every prompt ends in the last column
        ids[row, start:] = prompt.ids[0]
        positions[row, start:] = prompt.position_ids[0]
        mask[row, 0, start:, start:] = torch.from_numpy((prompt.pattern or causal()).dense(prompt.length))
        valid[row, start:] = True
    next_position = torch.tensor([p.next_position for p in runs])
    limit = hf._context(model)
    furthest = [max(p.next_position for p in item) for item in prompts]
    cache = DynamicCache(config=model.config)
    out = model(
        input_ids=ids,
        position_ids=positions,
        attention_mask=mask,
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    logits = out.logits[:, -1].float()
    answers: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in itertools.count():
        mean = torch.log_softmax(logits, -1).reshape(len(prompts), per_item, -1).mean(1)
        chosen = torch.log_softmax(mean, -1).argmax(-1).tolist()
        for item, token in enumerate(chosen):
            if done[item]:
                continue
            answers[item].append(token)
            steps = len(answers[item])
            if token in eos or steps == budget or (limit is not None and furthest[item] + steps >= limit):
                done[item] = True
        if all(done):
            return answers
        feed = torch.tensor(chosen).repeat_interleave(per_item)[:, None]
        valid = torch.cat([valid, torch.ones((batch, 1), dtype=torch.bool)], 1)
        logits = (
            model(
                input_ids=feed,
                position_ids=(next_position + step)[:, None],
                attention_mask=valid[:, None, None, :],
                cache=cache,
                use_cache=True,
            )
            .logits[:, -1]
            .float()
        )


def evaluate(
    model,
    tokenizer,
    examples: Sequence,
    ks: Sequence[int] = (1, 2, 3, 4, 5),
    modes: Sequence[str] = hf.MODES,
    orders: int = 3,
    seed: int = 0,
    max_new_tokens: int | None = None,
    batch_runs: int = 512,
    threads: int | None = 1,
) -> list[dict]:
    """Accuracy, cross-order agreement and cost of each ensemble, one row per ``(mode, k)``.

    Parameters
    ----------
    model, tokenizer
        A ``transformers`` causal LM (any attention implementation; it runs on SDPA here) and its
        tokenizer, e.g. from :func:`sparsekit.hf.load`.
    examples : sequence
        Objects with ``prefix``, ``paraphrases`` (at least ``max(ks)``), ``answer`` and ``suffix``
        (the answer cue; ``"\\n"`` where absent), e.g. :func:`sparsekit.fusion_task.make_examples`.
    ks : sequence of int
        Numbers of paraphrases to use (each example's first ``k``), each in ``[1, len(paraphrases)]``.
    modes : sequence of str
        Ensembles, from :data:`sparsekit.hf.MODES`.
    orders : int
        Orders of the ``k`` paraphrases to answer in, ``>= 1``: the given one, then random distinct
        ones (fewer when ``k!`` is smaller).
    seed : int
        Seed of the random orders, ``>= 0``.
    max_new_tokens : int, optional
        Token budget of each answer, ``>= 1``; default: the longest answer's tokens plus one (for EOS).
    batch_runs : int
        Sequences per batched forward pass, ``>= 1`` (speed only; the answers do not depend on it
        beyond float rounding).
    threads : int or None
        torch's intra-op threads during the evaluation (restored afterwards); ``None`` leaves them.
        One by default: the batched matrices are small, and on a machine busier than its cores
        several threads wait for each other (measured: one thread about 8 times faster than two
        on a loaded 2-core machine, unless ``OMP_WAIT_POLICY=PASSIVE`` was set before torch loaded).

    Returns
    -------
    list of dict
        Per ``(mode, k)``: ``accuracy`` (share of answers, over examples and orders, whose generated
        text, stripped, equals ``answer``), ``agreement`` (share of examples answered identically in
        every order), ``orders`` (orders used), and means per example and order of ``prompt_tokens``
        and ``attention_cells`` (of the prefill, summed over the runs: ``k`` runs for ``average``)
        and ``seconds`` (measured wall time of prefill and decoding, batched); ``answers``, the
        generated texts, example by example and order by order, and ``answer_orders``, the order
        of the paraphrases (indices into the example's first ``k``) behind each answer.
    """
    examples = list(examples)
    if not examples:
        raise ValueError("examples must hold at least one example")
    views = min(len(e.paraphrases) for e in examples)
    ks = [check_int("ks[]", k, low=1, high=views) for k in ks]
    for mode in modes:
        if mode not in hf.MODES:
            raise ValueError(f"modes must be taken from {hf.MODES}, got {mode!r}")
    orders = check_int("orders", orders, low=1)
    rng = np.random.default_rng(check_int("seed", seed, low=0))
    batch_runs = check_int("batch_runs", batch_runs, low=1)
    encoded = [hf.encode(tokenizer, e.prefix, e.paraphrases, getattr(e, "suffix", "\n")) for e in examples]
    if max_new_tokens is None:
        max_new_tokens = 1 + max(
            len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples
        )
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, low=1)
    eos = hf._eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    rows = []
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(check_int("threads", threads, low=1))
    try:
        with torch.no_grad(), hf._implementation(model, "sdpa"):
            for k in ks:
                # One list of orders per example, shared by every mode so that the modes see the same prompts.
                example_orders = [_orders(rng, k, orders) for _ in examples]
                for mode in modes:
                    rows.append(
                        _evaluate_cell(
                            model, tokenizer, examples, encoded, example_orders, mode, k, eos, max_new_tokens,
                            pad_id, batch_runs,
                        )
                    )  # fmt: skip
    finally:
        torch.set_num_threads(saved_threads)
    return rows


def _evaluate_cell(
    model, tokenizer, examples, encoded, example_orders, mode, k, eos, budget, pad_id, batch_runs
):
    items, answer_orders = [], []  # (example index, prompts of one answer), the order of its paraphrases
    for index, ((prefix, paras, suffix), item_orders) in enumerate(zip(encoded, example_orders, strict=True)):
        for order in item_orders:
            chosen = [paras[i] for i in order]
            items.append((index, hf._prompts(mode, prefix, chosen, suffix)))
            answer_orders.append(order)
    runs = [p for _, prompts in items for p in prompts]
    hf._check_context(model, runs)  # the refusals of generate: no room for an answer, a sliding window
    hf._check_window(model, runs, budget)
    start = time.perf_counter()
    generated: list[list[int]] = [[] for _ in items]
    lengths = [sum(p.length for p in prompts) for _, prompts in items]
    for group in _chunks(lengths, len(items[0][1]), batch_runs):
        answers = _decode_group(model, [items[i][1] for i in group], eos, budget, pad_id)
        for i, answer in zip(group, answers, strict=True):
            generated[i] = answer
    seconds = time.perf_counter() - start
    texts = [tokenizer.decode(ids, skip_special_tokens=True).strip() for ids in generated]
    by_example: dict[int, list[str]] = {}
    correct = 0
    for (index, _), text in zip(items, texts, strict=True):
        by_example.setdefault(index, []).append(text)
        correct += text == examples[index].answer.strip()
    answers = len(items)
    return {
        "mode": mode,
        "k": k,
        "accuracy": correct / answers,
        "agreement": float(np.mean([len(set(t)) == 1 for t in by_example.values()])),
        "orders": float(np.mean([len(t) for t in by_example.values()])),
        "prompt_tokens": float(np.mean(lengths)),
        "attention_cells": float(np.mean([sum(p.cells for p in prompts) for _, prompts in items])),
        "seconds": seconds / answers,
        "answers": texts,
        "answer_orders": answer_orders,
    }

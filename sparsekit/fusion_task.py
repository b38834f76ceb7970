"""A synthetic task on which several paraphrases genuinely help: each one is an independently corrupted view.

The answer is a code of :data:`CODE_LENGTH` symbols drawn uniformly from :data:`ALPHABET`. Each paraphrase
states the code in one of several surface :data:`TEMPLATES`, with every symbol independently replaced, with
probability ``corruption``, by one of the other symbols chosen uniformly. One view therefore gives the
right code with probability ``(1 - corruption) ** CODE_LENGTH``; several views, combined position by
position, give it more often. With a uniform prior and this symmetric noise the posterior of a symbol
grows with the number of views that show it, so the per-position **majority vote** (ties broken at
random) is the Bayes decision: :func:`vote_ceiling` is its exact expected accuracy, the most any model
can reach from ``k`` views, and :func:`vote_accuracy` the same voter's expected accuracy on given
examples. Pure Python and numpy; the model trained on the task ships in :data:`SHIPPED_MODEL`.

>>> example = make_examples(1, num_views=3, seed=0)[0]
>>> example.prefix, example.suffix
('which code ?', 'answer :')
>>> len(example.paraphrases), len(example.answer.split())
(3, 4)
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ._validate import check_fraction, check_int

__all__ = [
    "ALPHABET",
    "CODE_LENGTH",
    "CORRUPTION",
    "PREFIX",
    "SHIPPED_MODEL",
    "SUFFIX",
    "TEMPLATES",
    "Example",
    "make_examples",
    "parse_view",
    "sample_examples",
    "vote_accuracy",
    "vote_ceiling",
    "vocabulary",
]

#: Symbols of the code (single letters; no template word is one of them).
ALPHABET = ("a", "b", "c", "d", "e", "f", "g", "h")
#: Symbols per code.
CODE_LENGTH = 4
#: Default probability that a view shows a symbol other than the true one.
CORRUPTION = 0.3
#: Surface forms of one view; ``{}`` is the code, symbols separated by spaces.
TEMPLATES = (
    "the code is {} .",
    "{} is the code .",
    "code : {}",
    "i read {} on the card .",
)
#: Shared question before the paraphrases, and the answer cue after them.
PREFIX = "which code ?"
SUFFIX = "answer :"
#: The model trained on this task by ``python -m sparsekit.torch.train_fusion`` (Hugging Face format).
SHIPPED_MODEL = Path(__file__).resolve().parent / "models" / "views_llama"


class Example(NamedTuple):
    """One question: a shared prefix, ``k`` corrupted views of the code, the answer cue and the answer."""

    prefix: str  #: Shared text before the paraphrases.
    paraphrases: list[str]  #: The views, each in one of :data:`TEMPLATES`.
    answer: str  #: The true code, symbols separated by single spaces.
    suffix: str = SUFFIX  #: Answer cue after the paraphrases.


def vocabulary() -> list[str]:
    """Every word the task writes, in a fixed order (symbols first): the tokenizer's word list."""
    words = list(ALPHABET)
    for text in (*TEMPLATES, PREFIX, SUFFIX):
        for word in text.replace("{}", " ").split():
            if word not in words:
                words.append(word)
    return words


def _check_task(num_views: object, corruption: object) -> tuple[int, float]:
    num_views = check_int("num_views", num_views, low=1, high=64)
    corruption = check_fraction("corruption", corruption)
    return num_views, corruption


def sample_examples(
    rng: np.random.Generator, count: int, num_views: int, corruption: float = CORRUPTION
) -> list[Example]:
    """``count`` examples with ``num_views`` views each, drawn from ``rng`` (see :func:`make_examples`)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy Generator, got {type(rng).__name__}")
    count = check_int("count", count, low=1)
    num_views, corruption = _check_task(num_views, corruption)
    size = len(ALPHABET)
    codes = rng.integers(size, size=(count, CODE_LENGTH))
    corrupted = rng.random((count, num_views, CODE_LENGTH)) < corruption
    # A corrupted symbol is one of the size - 1 others, uniformly: add an offset in 1 .. size - 1.
    offsets = rng.integers(1, size, size=(count, num_views, CODE_LENGTH))
    views = (codes[:, None, :] + corrupted * offsets) % size
    templates = rng.integers(len(TEMPLATES), size=(count, num_views))
    letters = np.asarray(ALPHABET)
    return [
        Example(
            prefix=PREFIX,
            paraphrases=[
                TEMPLATES[templates[i, v]].format(" ".join(letters[views[i, v]])) for v in range(num_views)
            ],
            answer=" ".join(letters[codes[i]]),
        )
        for i in range(count)
    ]


def make_examples(count: int, num_views: int, seed: int, corruption: float = CORRUPTION) -> list[Example]:
    """Seeded examples of the task.

    Parameters
    ----------
    count : int
        Number of examples, ``>= 1``.
    num_views : int
        Paraphrases (views) per example, in ``[1, 64]``; the views of one example are independent.
    seed : int
        Seed of ``numpy.random.default_rng``, ``>= 0``. The training script draws from other streams
        (``default_rng([seed, 1])``), so examples made here are held out from training.
    corruption : float
        Probability, in ``[0, 1]``, that a view replaces a symbol by another one.

    Returns
    -------
    list of Example
    """
    seed = check_int("seed", seed, low=0)
    return sample_examples(np.random.default_rng(seed), count, num_views, corruption)


def parse_view(text: str) -> tuple[str, ...]:
    """The code a view states: its symbols in order."""
    return tuple(word for word in text.split() if word in ALPHABET)


def vote_accuracy(examples: Sequence[Example], k: int) -> float:
    """Expected exact-match accuracy of the per-position majority vote over each example's first ``k``
    views, a tie among ``m`` symbols counting ``1 / m`` (the vote picks one of them at random)."""
    k = check_int("k", k, low=1)
    total = 0.0
    for example in examples:
        if len(example.paraphrases) < k:
            raise ValueError(f"k must be <= the number of paraphrases ({len(example.paraphrases)}), got {k}")
        views = [parse_view(text) for text in example.paraphrases[:k]]
        chance = 1.0
        for position, truth in enumerate(example.answer.split()):
            counts = Counter(view[position] for view in views)
            top = max(counts.values())
            winners = [s for s, c in counts.items() if c == top]
            chance *= (truth in winners) / len(winners)
        total += chance
    return total / len(examples)


def vote_ceiling(k: int, corruption: float = CORRUPTION) -> float:
    """Exact expected accuracy of the per-position majority vote over ``k`` independent views.

    Per position, the true symbol gets ``c ~ Binomial(k, 1 - corruption)`` votes and the other
    ``k - c`` votes fall uniformly on the ``len(ALPHABET) - 1`` other symbols; the vote is right when
    ``c`` beats every other count, and with probability ``1 / m`` when ``m`` symbols tie at the top.
    Positions are independent, so the code is right with the per-position probability to the power
    :data:`CODE_LENGTH`. Enumerates the multisets of wrong votes, so ``k`` is at most 16.
    """
    k = check_int("k", k, low=1, high=16)
    corruption = check_fraction("corruption", corruption)
    others = len(ALPHABET) - 1
    right = 0.0
    for c in range(k + 1):
        weight = math.comb(k, c) * (1 - corruption) ** c * corruption ** (k - c)
        wrong = k - c
        for votes in itertools.combinations_with_replacement(range(others), wrong):
            counts = Counter(votes)
            ways = math.factorial(wrong) / math.prod(math.factorial(n) for n in counts.values())
            top = max(counts.values(), default=0)
            if c > top:
                win = 1.0
            elif c == top and c > 0:
                win = 1.0 / (1 + sum(n == c for n in counts.values()))
            else:
                win = 0.0
            right += weight * ways / others**wrong * win
    return right**CODE_LENGTH

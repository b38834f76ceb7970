"""The synthetic multi-view task: seeded, corrupted at the stated rate, views independent, and a vote
ceiling that a brute-force simulation of the majority vote reproduces."""

import itertools
import random
from collections import Counter

import numpy as np
import pytest

from sparsekit import fusion_task as ft


def _views(example):
    return [ft.parse_view(text) for text in example.paraphrases]


def test_examples_are_seeded_and_well_formed():
    first = ft.make_examples(50, 4, seed=3)
    assert first == ft.make_examples(50, 4, seed=3)
    assert first != ft.make_examples(50, 4, seed=4)
    templates = set()
    for example in first:
        assert example.prefix == ft.PREFIX and example.suffix == ft.SUFFIX
        answer = example.answer.split()
        assert len(answer) == ft.CODE_LENGTH and set(answer) <= set(ft.ALPHABET)
        for text in example.paraphrases:
            # The view with its symbols blanked out is one of the templates.
            words = ["{}" if w in ft.ALPHABET else w for w in text.split()]
            template = " ".join(words).replace(" ".join(["{}"] * ft.CODE_LENGTH), "{}")
            assert template in ft.TEMPLATES
            templates.add(template)
            assert set(text.split()) <= set(ft.vocabulary())
    assert templates == set(ft.TEMPLATES)


def test_corruption_rate_and_replacements_follow_the_parameter():
    for rate in (0.0, 0.2, 0.5):
        changed = total = 0
        replacements = Counter()
        for example in ft.make_examples(800, 3, seed=11, corruption=rate):
            truth = example.answer.split()
            for view in _views(example):
                for t, v in zip(truth, view, strict=True):
                    total += 1
                    if t != v:
                        changed += 1
                        replacements[(ft.ALPHABET.index(v) - ft.ALPHABET.index(t)) % len(ft.ALPHABET)] += 1
        share = changed / total
        # Binomial standard error at 9600 symbols is at most 0.0052; allow 4 of them.
        assert abs(share - rate) < 0.021, (rate, share)
        if rate:  # a corrupted symbol is any other symbol, uniformly (7 offsets, about 1/7 each)
            assert set(replacements) == set(range(1, len(ft.ALPHABET)))
            assert max(replacements.values()) / changed < 1 / 7 + 0.03


def test_views_of_one_example_are_independent():
    both = first = second = total = 0
    for example in ft.make_examples(3000, 2, seed=5, corruption=0.3):
        truth = example.answer.split()
        a, b = _views(example)
        for t, x, y in zip(truth, a, b, strict=True):
            total += 1
            first += x != t
            second += y != t
            both += x != t and y != t
    # Independence: P(both corrupted) = P(first) P(second) = 0.09, within sampling error (se about 0.0021).
    assert abs(both / total - (first / total) * (second / total)) < 0.009


def _brute_force_ceiling(k, corruption, trials, seed):
    """Simulate views with Python's own random module and vote, ties broken at random."""
    rng = random.Random(seed)
    size = len(ft.ALPHABET)
    right = 0
    for _ in range(trials):
        ok = True
        for _ in range(ft.CODE_LENGTH):
            truth = rng.randrange(size)
            votes = Counter(
                truth if rng.random() >= corruption else rng.choice([s for s in range(size) if s != truth])
                for _ in range(k)
            )
            top = max(votes.values())
            ok &= rng.choice([s for s, c in votes.items() if c == top]) == truth
        right += ok
    return right / trials


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_vote_ceiling_matches_a_simulated_vote(k):
    trials = 8000
    simulated = _brute_force_ceiling(k, 0.3, trials, seed=k)
    exact = ft.vote_ceiling(k, 0.3)
    assert abs(simulated - exact) < 4 * np.sqrt(exact * (1 - exact) / trials)


def test_vote_ceiling_closed_forms():
    # One view: every symbol must survive. Two views: a disagreement is a coin flip, so no gain.
    for p in (0.0, 0.1, 0.3):
        assert ft.vote_ceiling(1, p) == pytest.approx((1 - p) ** ft.CODE_LENGTH)
        assert ft.vote_ceiling(2, p) == pytest.approx((1 - p) ** ft.CODE_LENGTH)
    # Three views, brute force over every triple of symbols with its probability.
    p, size = 0.3, len(ft.ALPHABET)
    per_position = 0.0
    for triple in itertools.product(range(size), repeat=3):  # truth is symbol 0
        prob = np.prod([(1 - p) if s == 0 else p / (size - 1) for s in triple])
        counts = Counter(triple)
        top = max(counts.values())
        winners = [s for s, c in counts.items() if c == top]
        per_position += prob * (0 in winners) / len(winners)
    assert ft.vote_ceiling(3, p) == pytest.approx(per_position**ft.CODE_LENGTH)
    assert ft.vote_ceiling(1) < ft.vote_ceiling(3) < ft.vote_ceiling(5)


def test_vote_accuracy_on_examples_is_near_the_ceiling():
    examples = ft.make_examples(3000, 5, seed=9)
    for k in (1, 3, 5):
        exact = ft.vote_ceiling(k)
        assert abs(ft.vote_accuracy(examples, k) - exact) < 4 * np.sqrt(exact * (1 - exact) / 3000)


def test_bad_input_names_the_parameter():
    with pytest.raises(ValueError, match="count"):
        ft.make_examples(0, 3, seed=0)
    with pytest.raises(ValueError, match="num_views"):
        ft.make_examples(5, 0, seed=0)
    with pytest.raises(ValueError, match="seed"):
        ft.make_examples(5, 3, seed=-1)
    with pytest.raises(ValueError, match="corruption"):
        ft.make_examples(5, 3, seed=0, corruption=1.5)
    with pytest.raises(ValueError, match="k must"):
        ft.vote_accuracy(ft.make_examples(2, 2, seed=0), 3)
    with pytest.raises(ValueError, match="k must"):
        ft.vote_ceiling(17)

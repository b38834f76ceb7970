"""Paraphrase fusion run for real: tokenizer, layout, patched tiny model, cached generation, checks.

Everything runs eager on the CPU with a seeded model (no download, no compilation). The properties:
FlexAttention equals dense attention under the boolean mask (within ``EQUIVALENCE_TOLERANCE``);
replacing one paraphrase leaves every other encoding position exactly unchanged; replacing any
paraphrase changes the logits that choose the first generated token; cached decoding equals
recomputing the full sequence; the mask has no causal or cross-segment cells. Skipped without torch.
"""

from __future__ import annotations

import types

import numpy as np
import pytest
from marks import compiles

import sparsekit as sk

torch = pytest.importorskip("torch")  # the one optional dependency; sparsekit.torch must import

import sparsekit.torch as skt  # noqa: E402
import sparsekit.torch.fusion as fz  # noqa: E402

QUESTION = "Q: What is the capital of France? "
PARAPHRASES = ["Name the French capital.", "Which city is France's capital?", "Capital of France:"]
GENERATED = 10


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: eager flex_attention runs many small parallel ops, and on a shared machine
    OpenMP threads that wait for a descheduled sibling made each call 20-30 times slower (measured)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return fz.CharTokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return fz.TinyTransformer(tokenizer.vocab_size, d_model=32, num_heads=4, num_layers=2, seed=0)


@pytest.fixture(scope="module")
def run(tokenizer, model):
    """Prompt, pattern, spans and the generated sequence (separators of 2 tokens, answer separator)."""
    ids, pattern, spans = fz.build_prompt(
        QUESTION, PARAPHRASES, tokenizer, separator_tokens=2, num_generated_tokens=GENERATED
    )
    return ids, pattern, spans, fz.generate(model, ids, pattern, GENERATED, block_size=16)


# ------------------------------------------------------------------------------------------------
# Tokenizer and layout
# ------------------------------------------------------------------------------------------------
def test_tokenizer_round_trip_and_special_tokens(tokenizer):
    text = "".join(tokenizer.alphabet) + "\nHello, world! 1 + 1 = 2 ~"
    ids = tokenizer.encode(text)
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(torch.tensor(ids)) == text
    assert tokenizer.decode(np.array(ids)) == text
    assert tokenizer.vocab_size == len(tokenizer.alphabet) + 2
    assert min(ids) == tokenizer.first_char_id and max(ids) == tokenizer.vocab_size - 1
    # Outside the alphabet: the unknown token; the separator decodes to its own symbol.
    assert tokenizer.encode("é\t") == [tokenizer.unknown_id] * 2
    assert tokenizer.decode([tokenizer.separator_id, tokenizer.unknown_id]) == "\u241f\ufffd"
    assert tokenizer.encode("") == [] and tokenizer.decode([]) == ""


def test_build_prompt_tracks_positions(tokenizer, run):
    ids, pattern, spans, _ = run
    sizes = [len(p) for p in PARAPHRASES]
    assert spans.question == range(0, len(QUESTION))
    assert [len(r) for r in spans.paraphrases] == sizes
    assert [len(r) for r in spans.separators] == [2, 2]
    assert len(spans.answer) == 1 and spans.answer.start == pattern.generation_start
    assert spans.prompt_length == ids.numel() == spans.answer.stop
    assert spans.length == pattern.length == ids.numel() + GENERATED
    # Every position belongs to exactly one span, in layout order.
    ranges = [spans.question, spans.paraphrases[0], spans.separators[0], spans.paraphrases[1]]
    ranges += [spans.separators[1], spans.paraphrases[2], spans.answer, spans.generated]
    assert [i for r in ranges for i in r] == list(range(spans.length))
    for text, r in zip(PARAPHRASES, spans.paraphrases, strict=True):
        assert tokenizer.decode(ids[r.start : r.stop]) == text
    assert tokenizer.decode(ids[spans.question.start : spans.question.stop]) == QUESTION
    sep = tokenizer.separator_id
    assert all(int(ids[i]) == sep for r in (*spans.separators, spans.answer) for i in r)
    # The pattern's own layout agrees with the spans.
    para = [(s.start, s.stop) for s in pattern.spans("paraphrase")]
    assert para == [(r.start, r.stop) for r in spans.paraphrases]
    assert pattern.prefix_tokens == len(QUESTION)
    assert pattern.spans("generated")[0].start == spans.answer.start


def test_build_prompt_without_answer_separator_or_separators(tokenizer):
    ids, pattern, spans = fz.build_prompt(
        "", ["ab", "cde"], tokenizer, separator_tokens=0, answer_separator=False
    )
    assert tokenizer.decode(ids) == "abcde"
    assert spans.question == range(0, 0) and spans.answer == range(5, 5)
    assert spans.separators == (range(2, 2),)
    assert pattern.generation_start == spans.prompt_length == 5
    assert pattern.length == 5 + 8  # default num_generated_tokens


# ------------------------------------------------------------------------------------------------
# Model and patching
# ------------------------------------------------------------------------------------------------
def test_model_is_seeded_and_leaves_the_global_rng_alone(tokenizer):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    a = fz.TinyTransformer(tokenizer.vocab_size, d_model=16, num_heads=2, num_layers=1, seed=7)
    assert torch.equal(torch.rand(3), expected)  # building the model drew nothing from the global RNG
    b = fz.TinyTransformer(tokenizer.vocab_size, d_model=16, num_heads=2, num_layers=1, seed=7)
    c = fz.TinyTransformer(tokenizer.vocab_size, d_model=16, num_heads=2, num_layers=1, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert not any(p.requires_grad for p in a.parameters())


def test_patch_and_unpatch_switch_the_attention(model, run):
    _, pattern, _, gen = run
    ids, n = gen.ids, pattern.length
    with torch.no_grad():
        causal = model(ids)
        patched = skt.block_mask(pattern, n, block_size=16)
        fz.patch_flex_attention(model, patched)
        try:
            assert all(b.attn.attention_fn.block_mask is patched for b in model.blocks)
            flex = model(ids)
            with pytest.raises(ValueError, match="block_mask was created for"):
                model(ids[:-1])  # FlexAttention refuses a sequence shorter than the mask
        finally:
            fz.unpatch(model)
        assert all(b.attn.attention_fn is fz.causal_sdpa for b in model.blocks)
        torch.testing.assert_close(model(ids), causal, rtol=0, atol=0)
    # Causal SDPA lets paraphrases see each other; the segment mask does not: the outputs differ.
    assert float((flex - causal).abs().max()) > 1e-2
    # The first rows (the question, shared prefix of both masks) are the same under both.
    q = len(QUESTION)
    torch.testing.assert_close(flex[:q], causal[:q], rtol=0, atol=fz.EQUIVALENCE_TOLERANCE)


def test_patched_context_restores_previous_functions(model):
    fn = fz.masked_sdpa_fn(np.tril(np.ones((4, 4), dtype=bool)))
    with fz.patched(model, fn):
        assert all(b.attn.attention_fn is fn for b in model.blocks)
    assert all(b.attn.attention_fn is fz.causal_sdpa for b in model.blocks)


# ------------------------------------------------------------------------------------------------
# The numbers
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("block_size", [16, 128])
def test_equivalence_flex_against_dense_boolean_mask(model, run, block_size):
    _, pattern, _, gen = run
    assert fz.equivalence(model, gen.ids, pattern, block_size=block_size) <= fz.EQUIVALENCE_TOLERANCE
    assert fz.equivalence(model, gen.ids, sk.causal(), block_size=block_size) <= fz.EQUIVALENCE_TOLERANCE
    # Control: flex under the segment mask against dense under a different (causal) mask is far off,
    # so a wrong mask on either side would fail the check.
    causal = fz.masked_sdpa_fn(sk.causal().dense(pattern.length))
    mixed = fz._run(model, gen.ids, causal)[0] - fz._flex_run(model, gen.ids, pattern, block_size)[0]
    assert float(mixed.abs().max()) > 100 * fz.EQUIVALENCE_TOLERANCE


@compiles("compiles a C++ kernel, 3 s warm but 16-24 s with a cold inductor cache on a busy 2-core machine")
def test_compiled_flex_walks_the_tile_tables(run):
    # Eager flex_attention reads only the mask_mod; the compiled kernel reads sparsekit's tile tables.
    # One compile thread: no pool of worker processes left competing with the other tests. (config.patch,
    # not monkeypatch: restoring the attribute by setattr hides inductor's computed default afterwards.)
    with torch._inductor.config.patch(compile_threads=1):
        _, pattern, _, _ = run
        n = pattern.length
        gen = torch.Generator().manual_seed(1)
        q, k, v = (torch.randn(1, 2, n, 8, generator=gen) for _ in range(3))
        mask = skt.block_mask(pattern, n, block_size=16)
        compiled = fz.flex_attention_fn(mask, compile=True)(q, k, v)
        dense = fz.masked_sdpa_fn(pattern.dense(n))(q, k, v)
        torch.testing.assert_close(compiled, dense, rtol=0, atol=fz.EQUIVALENCE_TOLERANCE)
        # Declare every tile empty (same mask_mod): eager does not notice, the compiled kernel does.
        emptied = skt.block_mask(pattern, n, block_size=16)
        emptied.kv_num_blocks = torch.zeros_like(emptied.kv_num_blocks)
        emptied.full_kv_num_blocks = torch.zeros_like(emptied.full_kv_num_blocks)
        eager = fz.flex_attention_fn(emptied)(q, k, v)
        torch.testing.assert_close(eager, dense, rtol=0, atol=fz.EQUIVALENCE_TOLERANCE)
        assert float((fz.flex_attention_fn(emptied, compile=True)(q, k, v) - dense).abs().max()) > 0.1


@compiles("compiles 11 C++ kernels, about 30 s warm on a busy 2-core machine")
def test_compiled_flex_survives_more_patterns_than_the_recompile_limit():
    # One more pattern than dynamo's recompile_limit allows one compiled function, in one process: in a
    # single cache the last one raised FailOnRecompileLimitHit. The accumulated limit is lowered so
    # that the bound on regions (here 4) is reached twice: every region is dropped and compiling goes
    # on; the first pattern, dropped meanwhile, compiles again.
    limit = torch._dynamo.config.recompile_limit
    n, bound = 128, 4
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, n, 8, generator=gen) for _ in range(3))
    caps = torch._dynamo.config.patch(accumulated_recompile_limit=bound * limit)
    with torch._inductor.config.patch(compile_threads=1), caps:
        for window in [*range(0, 2 * limit + 2, 2), 0]:
            pattern = sk.sliding_window(window)
            mask = skt.block_mask(pattern, n, block_size=128)
            out = fz.flex_attention_fn(mask, compile=True)(q, k, v)
            dense = fz.masked_sdpa_fn(pattern.dense(n))(q, k, v)
            torch.testing.assert_close(out, dense, rtol=0, atol=fz.EQUIVALENCE_TOLERANCE)
            assert 1 <= len(fz._compiled_regions) <= bound


@pytest.mark.parametrize("segment", [0, 1, 2])
def test_isolation_is_exact(model, run, segment):
    _, pattern, spans, gen = run
    assert fz.isolation(model, gen.ids, pattern, spans, segment) == 0.0
    # Control: replacing a paraphrase does change its own states, and the generated ones.
    span = spans.paraphrases[segment]
    changed = fz.replace_span(gen.ids, span, model.vocab_size)
    assert (changed[span.start : span.stop] != gen.ids[span.start : span.stop]).all()
    assert torch.equal(changed[: span.start], gen.ids[: span.start])
    a = fz._flex_run(model, gen.ids, pattern, 128)[0]
    b = fz._flex_run(model, changed, pattern, 128)[0]
    assert float((a[span.start : span.stop] - b[span.start : span.stop]).abs().max()) > 1e-2
    assert float((a[pattern.generation_start :] - b[pattern.generation_start :]).abs().max()) > 1e-2


def test_isolation_fails_under_plain_causal_attention(model, run):
    # The same experiment without the segment mask: later paraphrases see the replaced one.
    _, pattern, spans, gen = run
    span = spans.paraphrases[0]
    causal = np.tril(np.ones((pattern.length, pattern.length), dtype=bool))
    a = fz._run(model, gen.ids, fz.masked_sdpa_fn(causal))[1][-1]
    b = fz._run(model, fz.replace_span(gen.ids, span, model.vocab_size), fz.masked_sdpa_fn(causal))[1][-1]
    later = spans.paraphrases[1]
    assert float((a[later.start : later.stop] - b[later.start : later.stop]).abs().max()) > 1e-2


def test_fusion_every_paraphrase_reaches_the_first_generated_token(model, run):
    _, pattern, spans, gen = run
    effects = fz.fusion_effect(model, gen.ids, pattern, spans)
    assert len(effects) == len(PARAPHRASES)
    assert min(effects) > 1e-2


def test_without_answer_separator_the_first_token_sees_only_the_last_paraphrase(tokenizer, model):
    ids, pattern, spans = fz.build_prompt(
        QUESTION, PARAPHRASES, tokenizer, separator_tokens=2, num_generated_tokens=4, answer_separator=False
    )
    gen = fz.generate(model, ids, pattern, 4)
    effects = fz.fusion_effect(model, gen.ids, pattern, spans)
    assert effects[:-1] == [0.0, 0.0]  # the deciding row is the last paraphrase's own, isolated row
    assert effects[-1] > 1e-2


def test_kv_cache_generation_equals_full_recompute(model, run):
    ids, pattern, spans, gen = run
    p = spans.prompt_length
    assert gen.tokens.shape == (GENERATED,) and gen.logits.shape == (GENERATED, model.vocab_size)
    assert torch.equal(gen.ids[:p], ids) and torch.equal(gen.ids[p:], gen.tokens)
    assert torch.equal(gen.tokens, gen.logits.argmax(-1))
    full = fz._flex_run(model, gen.ids, pattern, 16)[0]
    recomputed = full[p - 1 : p - 1 + GENERATED]  # row t's logits choose token t + 1
    torch.testing.assert_close(gen.logits, recomputed, rtol=0, atol=fz.CACHE_TOLERANCE)
    assert torch.equal(recomputed.argmax(-1), gen.tokens)
    # Generating again gives the same tokens (greedy, fixed weights).
    again = fz.generate(model, ids, pattern, GENERATED)
    assert torch.equal(again.tokens, gen.tokens)


def test_kv_cache_respects_a_row_that_is_not_all_ones(model):
    # A causal sliding window: decode rows see only the last 3 positions, so the cache path must mask.
    window = sk.sliding_window(3) & sk.causal()
    prompt = torch.arange(2, 14)
    gen = fz.generate(model, prompt, window, 5, block_size=16)
    full = fz._flex_run(model, gen.ids, window, 16)[0]
    torch.testing.assert_close(gen.logits, full[11:16], rtol=0, atol=fz.CACHE_TOLERANCE)
    causal = fz.generate(model, prompt, sk.causal(), 5)
    assert float((causal.logits - gen.logits).abs().max()) > 1e-2


def test_mask_report_counts(run):
    _, pattern, _, _ = run
    report = fz.mask_report(pattern)
    assert report["causal_violations"] == 0
    assert report["cross_segment_cells"] == 0
    assert report["first_generated_attends"] == report["first_generated_positions"]
    assert report["first_generated_positions"] == pattern.generation_start
    assert report["density"] == pattern.density(pattern.length)
    # The seed's scenario: 5 paraphrases of 10 tokens; the first generated token sees all 50 ("50/50").
    seed = fz.mask_report(sk.paraphrase_fusion(5, 10, num_generated_tokens=3))
    assert (seed["first_generated_attends"], seed["first_generated_positions"]) == (50, 50)
    # An encoding row, by contrast, sees only its own paraphrase: count row 49 (last of paraphrase 4).
    assert int(sk.paraphrase_fusion(5, 10, num_generated_tokens=3).row_counts(53)[49]) == 10
    assert seed["causal_violations"] == seed["cross_segment_cells"] == 0
    none = fz.mask_report(sk.paraphrase_fusion(2, 4))
    assert none["first_generated_attends"] is None


def test_time_backends_measures_small_lengths(monkeypatch):
    # A clock that advances 2**-7 s per reading: every timed call lasts exactly 7.8125 ms, so the
    # reported times are the clock's, in milliseconds, whatever this machine is doing.
    ticks = iter(range(10**6))
    monkeypatch.setattr(fz, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks) / 128))
    rows = fz.time_backends([64, 128], num_heads=2, head_dim=8, block_size=32, repeat=2, compile=False)
    assert [r["n"] for r in rows] == [64, 128]
    for r in rows:
        for key in ("sdpa_causal_ms", "sdpa_mask_ms", "flex_eager_ms"):
            assert r[key] == 1e3 / 128
        assert r["eager_max_abs_diff"] <= fz.EQUIVALENCE_TOLERANCE
        assert r["flex_compiled_ms"] is None and r["compile_error"] is None
        # Density and tiles counted here: the timing layout's cells, and its non-empty 32 x 32 tiles.
        n, pattern = r["n"], fz.timing_pattern(r["n"])
        dense = pattern.dense(n)
        assert r["density"] == np.count_nonzero(dense) / n**2
        tiles = dense.reshape(n // 32, 32, n // 32, 32).any(axis=(1, 3))
        assert r["tiles_computed"] == np.count_nonzero(tiles) / tiles.size


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"paraphrases": []}, "paraphrases"),
        ({"paraphrases": "abc"}, "paraphrases"),
        ({"paraphrases": ["ok", ""]}, r"paraphrases\[1\]"),
        ({"paraphrases": ["ok", 3]}, r"paraphrases\[1\]"),
        ({"question": 5}, "question"),
        ({"separator_tokens": -1}, "separator_tokens"),
        ({"num_generated_tokens": 1.5}, "num_generated_tokens"),
        ({"answer_separator": 1}, "answer_separator"),
        ({"tokenizer": "chars"}, "tokenizer"),
    ],
)
def test_build_prompt_rejects_bad_input(tokenizer, kwargs, match):
    args = {"question": "q", "paraphrases": ["a", "b"], "tokenizer": tokenizer, **kwargs}
    with pytest.raises(ValueError, match=match):
        fz.build_prompt(**args)


def test_bad_input_is_named(tokenizer, model, run):
    ids, pattern, spans, gen = run
    with pytest.raises(ValueError, match="text"):
        tokenizer.encode(b"bytes")
    with pytest.raises(ValueError, match=r"ids\[1\] must be in \[0, 97\]"):
        tokenizer.decode([3, 98])
    with pytest.raises(ValueError, match="1-D"):
        tokenizer.decode([[1, 2]])
    for kwargs, match in [
        ({"vocab_size": 1}, "vocab_size"),
        ({"vocab_size": 10, "d_model": 30, "num_heads": 4}, "d_model"),
        ({"vocab_size": 10, "num_layers": 0}, "num_layers"),
        ({"vocab_size": 10, "seed": -1}, "seed"),
    ]:
        with pytest.raises(ValueError, match=match):
            fz.TinyTransformer(**kwargs)
    with pytest.raises(ValueError, match="num_tokens"):
        fz.generate(model, ids, pattern, 0)
    with pytest.raises(ValueError, match="layout length"):
        fz.generate(model, ids, pattern, GENERATED - 1)
    with pytest.raises(ValueError, match="prompt_ids"):
        fz.generate(model, [0, model.vocab_size], sk.causal(), 1)
    with pytest.raises(ValueError, match="causal"):
        fz.generate(model, ids[:20], sk.sliding_window(2), 3)
    with pytest.raises(ValueError, match="max_positions"):
        fz.generate(model, ids, sk.causal(), model.max_positions)
    with pytest.raises(ValueError, match="pattern"):
        fz.generate(model, ids, "fusion", 2)
    with pytest.raises(ValueError, match="model"):
        fz.equivalence("model", gen.ids, pattern)
    with pytest.raises(ValueError, match="full sequence"):
        fz.equivalence(model, ids, pattern)
    with pytest.raises(ValueError, match="segment"):
        fz.isolation(model, gen.ids, pattern, spans, 3)
    with pytest.raises(ValueError, match="ParaphraseFusion"):
        fz.isolation(model, gen.ids, sk.causal(), spans, 0)
    with pytest.raises(ValueError, match="spans"):
        fz.fusion_effect(model, gen.ids, pattern, {"paraphrases": []})
    with pytest.raises(ValueError, match="ParaphraseFusion"):
        fz.mask_report(sk.causal())
    with pytest.raises(ValueError, match=r"lengths\[0\]"):
        fz.time_backends([32])
    with pytest.raises(ValueError, match="mask"):
        fz.flex_attention_fn(np.ones((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="attn_mask is required"):
        cache = fz.KVCache(model.num_layers)
        with fz.patched(model, fz.causal_sdpa):
            model(ids[:4], cache=cache)
            model(ids[4:5], cache=cache)

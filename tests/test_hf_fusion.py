"""Paraphrase fusion on tiny Hugging Face models (random weights, saved and loaded with from_pretrained).

References are independent of sparsekit's layout: the model run alone on ``prefix + paraphrase`` with its
own causal mask and positions, ``model.generate``, a brute-force average over full recomputations, and a
cell-by-cell count of the fusion rule.
"""

import itertools
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from hf_models import FAMILIES, save_tiny_model  # noqa: E402
from marks import compiles  # noqa: E402

from sparsekit import hf  # noqa: E402

PREFIX = "question :"
SUFFIX = "answer :"
PARAPHRASES = (
    "which animal sat on the mat near the door ?",
    "the cat sat on the mat",
    "what did the dog find in the field after the rain ?",
)
MAIN = ("llama", "qwen2", "mistral")


class _Models(dict):
    """family -> (model, tokenizer) loaded with SDPA from a saved tiny model, built on first use."""

    def __init__(self, tmp_path_factory):
        super().__init__()
        self.factory = tmp_path_factory

    def __missing__(self, family):
        folder = save_tiny_model(self.factory.mktemp(family), family, seed=1)
        self[family] = hf.load(folder, backend="sdpa")
        return self[family]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return _Models(tmp_path_factory)


def _ids(tokenizer, text, special=False):
    return tokenizer(text, add_special_tokens=special)["input_ids"]


def _alone_cache(model, ids):
    """Keys and values of ``ids`` run alone: the model's own causal mask and positions 0, 1, ..."""
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=True)
    return out.cache


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fused_keys_and_values_equal_each_paraphrase_run_alone(models, family):
    model, tok = models[family]
    prefix, paras = _ids(tok, PREFIX, True), [_ids(tok, p) for p in PARAPHRASES]
    prompt = hf.fused_prompt(prefix, paras, _ids(tok, SUFFIX))
    _, cache = hf.prefill(model, prompt, backend="sdpa")
    start = len(prefix)
    for para in paras:
        alone = _alone_cache(model, prefix + para)
        for layer, ref in zip(cache.layers, alone.layers, strict=True):
            for fused, single in ((layer.keys, ref.keys), (layer.values, ref.values)):
                torch.testing.assert_close(fused[:, :, : len(prefix)], single[:, :, : len(prefix)])
                got = fused[:, :, start : start + len(para)]
                torch.testing.assert_close(got, single[:, :, len(prefix) :], atol=1e-5, rtol=1e-4)
        start += len(para)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_fused_answer_does_not_depend_on_paraphrase_order(models, family):
    model, tok = models[family]
    runs = [
        hf.generate(model, tok, order, PREFIX, SUFFIX, "fused", 6, "sdpa")
        for order in itertools.permutations(PARAPHRASES)
    ]
    for run in runs[1:]:
        assert run.token_ids == runs[0].token_ids
        assert run.logprobs == pytest.approx(runs[0].logprobs, abs=1e-4)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("family", MAIN)
@pytest.mark.parametrize("suffix", (SUFFIX, ""))
def test_fused_with_one_paraphrase_is_ordinary_generation(models, family, suffix):
    model, tok = models[family]
    ids = _ids(tok, PREFIX, True) + _ids(tok, PARAPHRASES[0]) + _ids(tok, suffix)
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=1)
    got = hf.generate(model, tok, PARAPHRASES[:1], PREFIX, suffix, "fused", 8, "sdpa")
    assert got.token_ids == ref[0, len(ids) :].tolist()


@pytest.mark.timeout(120)
def test_single_and_concat_are_ordinary_generation(models):
    model, tok = models["llama"]
    prefix, suffix = _ids(tok, PREFIX, True), _ids(tok, SUFFIX)
    paras = [_ids(tok, p) for p in PARAPHRASES]
    for mode, ids in (("single", prefix + paras[0] + suffix), ("concat", prefix + sum(paras, []) + suffix)):
        with torch.no_grad():
            ref = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, pad_token_id=1)
        got = hf.generate(model, tok, PARAPHRASES, PREFIX, SUFFIX, mode, 8, "sdpa")
        assert got.token_ids == ref[0, len(ids) :].tolist(), mode
        assert got.prompt_tokens == len(ids) and got.attention_cells == len(ids) * (len(ids) + 1) // 2


@pytest.mark.timeout(120)
def test_generation_stops_at_the_end_of_the_context(models):
    model, tok = models["llama"]
    words = "one two three four five six seven eight nine ten " * 6
    ids = _ids(tok, words, True)[:60]  # context 64: positions 60 .. 63 remain
    paraphrase = tok.decode(ids[1:])
    assert _ids(tok, paraphrase, True) == ids
    with torch.no_grad():
        ref = model.generate(torch.tensor([ids]), max_length=64, do_sample=False, pad_token_id=1)
    got = hf.generate(model, tok, [paraphrase], suffix="", mode="single", max_new_tokens=50, backend="sdpa")
    assert got.token_ids == ref[0, 60:].tolist() and len(got.token_ids) <= 4


@pytest.mark.timeout(120)
def test_average_is_the_mean_of_full_recomputations(models):
    model, tok = models["qwen2"]
    prefix, suffix = _ids(tok, PREFIX, True), _ids(tok, SUFFIX)
    seqs = [prefix + _ids(tok, p) + suffix for p in PARAPHRASES]
    chosen, logprobs = [], []
    with torch.no_grad():
        for _ in range(6):  # no cache: every step reruns each whole sequence
            rows = [torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, -1], -1) for s in seqs]
            mean = torch.log_softmax(torch.stack(rows).mean(0), -1)
            token = int(mean.argmax())
            chosen.append(token)
            logprobs.append(float(mean[token]))
            if token == tok.eos_token_id:
                break
            seqs = [s + [token] for s in seqs]
    got = hf.generate(model, tok, PARAPHRASES, PREFIX, SUFFIX, "average", 6, "sdpa")
    assert got.token_ids == chosen
    assert got.logprobs == pytest.approx(logprobs, abs=1e-4)
    lengths = [len(prefix) + len(_ids(tok, p)) + len(suffix) for p in PARAPHRASES]
    assert got.runs == 3 and got.prompt_tokens == sum(lengths)
    assert got.attention_cells == sum(n * (n + 1) // 2 for n in lengths)  # k causal prefills


@pytest.mark.timeout(120)
def test_fused_cells_and_positions_by_brute_force(models):
    model, tok = models["llama"]
    prefix, suffix = _ids(tok, PREFIX, True), _ids(tok, SUFFIX)
    paras = [_ids(tok, p) for p in PARAPHRASES]
    prompt = hf.fused_prompt(prefix, paras, suffix)
    # Segment of each token: -1 prefix, i paraphrase i, k suffix (sees everything).
    seg = [-1] * len(prefix) + [i for i, p in enumerate(paras) for _ in p] + [len(paras)] * len(suffix)
    cells = sum(
        1
        for q in range(len(seg))
        for kv in range(q + 1)
        if seg[kv] == -1 or seg[q] == len(paras) or seg[q] == seg[kv]
    )
    assert prompt.cells == cells
    positions = list(range(len(prefix)))
    for p in paras:
        positions += range(len(prefix), len(prefix) + len(p))
    longest = len(prefix) + max(map(len, paras))
    positions += range(longest, longest + len(suffix))
    assert prompt.position_ids[0].tolist() == positions
    assert prompt.next_position == longest + len(suffix)
    got = hf.generate(model, tok, PARAPHRASES, PREFIX, SUFFIX, "fused", 2, "sdpa")
    assert got.attention_cells == cells and got.prompt_tokens == len(seg)


@pytest.mark.timeout(280)
@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_flex_block_mask_gives_the_sdpa_tokens(tmp_path, family):
    folder = save_tiny_model(tmp_path, family, seed=2)
    model, tok = hf.load(folder, backend="flex")
    assert model.config._attn_implementation == "flex_attention"
    prefix, paras = _ids(tok, PREFIX, True), [_ids(tok, p) for p in PARAPHRASES]
    prompt = hf.fused_prompt(prefix, paras, _ids(tok, SUFFIX))
    flex_logits, flex_cache = hf.prefill(model, prompt, backend="flex")
    sdpa_logits, sdpa_cache = hf.prefill(model, prompt, backend="sdpa")
    torch.testing.assert_close(flex_logits, sdpa_logits, atol=1e-4, rtol=1e-4)
    for a, b in zip(flex_cache.layers, sdpa_cache.layers, strict=True):
        torch.testing.assert_close(a.values, b.values, atol=1e-5, rtol=1e-4)
    flex = hf.generate(model, tok, PARAPHRASES, PREFIX, SUFFIX, "fused", 8, "flex")
    sdpa = hf.generate(model, tok, PARAPHRASES, PREFIX, SUFFIX, "fused", 8, "sdpa")
    assert flex.token_ids == sdpa.token_ids
    assert model.config._attn_implementation == "flex_attention"  # restored after SDPA decoding


@pytest.mark.timeout(120)
def test_compare_runs_every_mode(models):
    model, tok = models["llama"]
    table = hf.compare(
        model, tok, PARAPHRASES, prefix=PREFIX, suffix=SUFFIX, max_new_tokens=3, backend="sdpa"
    )
    assert list(table) == list(hf.MODES)
    for mode, run in table.items():
        assert run.mode == mode and 1 <= len(run.token_ids) <= 3 and len(run.logprobs) == len(run.token_ids)
        assert all(lp <= 0 for lp in run.logprobs) and 0 < run.prefill_seconds <= run.seconds
    assert table["fused"].prompt_tokens == table["concat"].prompt_tokens
    assert table["fused"].attention_cells < table["concat"].attention_cells
    with pytest.raises(ValueError, match="repeat"):
        hf.compare(model, tok, PARAPHRASES, repeat=0, suffix=SUFFIX, backend="sdpa")


@pytest.mark.timeout(120)
def test_bad_input_is_a_value_error(models, tmp_path):
    model, tok = models["llama"]
    with pytest.raises(ValueError, match="paraphrase 2 is empty"):
        hf.generate(model, tok, ["the cat", " "], backend="sdpa")
    with pytest.raises(ValueError, match="at least one"):
        hf.generate(model, tok, [], backend="sdpa")
    with pytest.raises(ValueError, match="suffix must hold at least one token"):
        hf.generate(model, tok, ["the cat", "a dog"], suffix="", backend="sdpa")
    with pytest.raises(ValueError, match="mode must be one of"):
        hf.generate(model, tok, ["the cat"], mode="vote", backend="sdpa")
    with pytest.raises(ValueError, match="max_new_tokens"):
        hf.generate(model, tok, ["the cat"], max_new_tokens=0, backend="sdpa")
    with pytest.raises(ValueError, match="longer than the model's context of 64"):
        hf.generate(model, tok, ["the cat " * 40], backend="sdpa")
    with pytest.raises(ValueError, match="no such directory"):
        hf.load(tmp_path / "missing")
    with pytest.raises(ValueError, match="holds no model"):
        hf.load(tmp_path)
    windowed, tok = hf.load(save_tiny_model(tmp_path / "windowed", "mistral", sliding_window=16), "sdpa")
    with pytest.raises(ValueError, match="sliding attention window of 16"):
        hf.generate(windowed, tok, ["the cat sat on the mat"], "question :", max_new_tokens=8, backend="sdpa")
    hf.generate(windowed, tok, ["the cat sat"], max_new_tokens=8, backend="sdpa")  # 1 + 3 + 8 <= 16 tokens


@pytest.mark.timeout(280)
def test_flex_prefill_reads_the_block_tables(tmp_path):
    # Eager CPU flex_attention ignores the tile tables; the compiled one used here must not.
    from sparsekit.torch import block_mask

    model, tok = hf.load(save_tiny_model(tmp_path, "llama", seed=2), backend="flex")
    prompt = hf.fused_prompt(_ids(tok, PREFIX, True), [_ids(tok, p) for p in PARAPHRASES], _ids(tok, SUFFIX))
    kept, _ = hf.prefill(model, prompt, backend="flex")
    no_tiles = hf.emptied(block_mask(prompt.pattern, prompt.length))
    assert int(no_tiles.kv_num_blocks.sum()) == 0 and no_tiles.full_kv_num_blocks is None
    emptied, _ = hf.prefill(model, prompt, backend="flex", mask=no_tiles)
    assert (kept - emptied).abs().max() > 0.1


def test_eager_flex_attention_ignores_the_block_tables():
    from torch.nn.attention.flex_attention import flex_attention

    from sparsekit.torch import block_mask

    pattern = hf.fused_prompt([1, 2], [[3] * 150, [4] * 100], [5]).pattern
    n = pattern.length
    mask = block_mask(pattern, n)
    q, k, v = torch.randn(3, 1, 2, n, 8, generator=torch.Generator().manual_seed(0))
    dense = torch.from_numpy(pattern.dense(n))
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense)
    eager = flex_attention(q, k, v, block_mask=mask)
    torch.testing.assert_close(eager, ref, atol=1e-5, rtol=1e-5)
    assert torch.equal(flex_attention(q, k, v, block_mask=hf.emptied(mask)), eager)


def _segments(prefix, paras, extra):
    """Segment of each token: -1 prefix, i paraphrase i, k everything after (sees all)."""
    return [-1] * len(prefix) + [i for i, p in enumerate(paras) for _ in p] + [len(paras)] * extra


@pytest.mark.timeout(120)
def test_extend_reproduces_cached_decoding_in_one_pass(models):
    model, tok = models["llama"]
    prefix, suffix = _ids(tok, PREFIX, True), _ids(tok, SUFFIX)
    paras = [_ids(tok, p) for p in PARAPHRASES]
    assert hf.encode(tok, PREFIX, PARAPHRASES, SUFFIX) == (prefix, paras, suffix)
    prompt = hf.fused_prompt(prefix, paras, suffix)
    got = hf.generate(model, tok, PARAPHRASES, PREFIX, SUFFIX, "fused", 6, "sdpa")
    whole = hf.extend(prompt, got.token_ids)
    n = prompt.length + len(got.token_ids)
    assert whole.ids[0].tolist() == prefix + sum(paras, []) + suffix + got.token_ids
    longest = len(prefix) + max(map(len, paras))
    after = list(range(longest, longest + len(suffix) + len(got.token_ids)))
    assert whole.position_ids[0].tolist() == prompt.position_ids[0].tolist()[: -len(suffix)] + after
    assert whole.next_position == after[-1] + 1
    seg = _segments(prefix, paras, len(suffix) + len(got.token_ids))
    dense = torch.tensor(
        [
            [kv <= q and (seg[kv] == -1 or seg[q] == len(paras) or seg[q] == seg[kv]) for kv in range(n)]
            for q in range(n)
        ]
    )
    assert torch.equal(torch.from_numpy(whole.pattern.dense(n)), dense)
    assert dense[prompt.length :].sum() == sum(range(prompt.length + 1, n + 1))  # decoding rows: causal
    with torch.no_grad():
        logits = model(
            input_ids=whole.ids, position_ids=whole.position_ids, attention_mask=dense[None, None]
        ).logits
    rows = torch.log_softmax(logits[0, prompt.length - 1 : n - 1].float(), -1)
    chosen = rows[torch.arange(len(got.token_ids)), torch.tensor(got.token_ids)]
    assert chosen.tolist() == pytest.approx(got.logprobs, abs=1e-4)


@pytest.mark.timeout(120)
def test_isolation_gaps_vanish_with_per_segment_positions_only(models):
    model, tok = models["qwen2"]
    prompt = hf.fused_prompt(*hf.encode(tok, PREFIX, PARAPHRASES, SUFFIX))
    gaps = hf.isolation_gaps(model, prompt)
    assert len(gaps) == len(PARAPHRASES) and max(gaps) < 1e-4
    running = prompt._replace(position_ids=torch.arange(prompt.length)[None])
    wrong = hf.isolation_gaps(model, running)
    assert wrong[0] < 1e-4 and min(wrong[1:]) > 0.1  # paraphrase 1 starts where the prefix ends anyway
    with pytest.raises(ValueError, match="fused prompt"):
        hf.isolation_gaps(model, hf._causal_prompt([1, 2, 3]))


@compiles("compiles the flex prefill of a tiny Llama twice in a fresh inductor cache (about 15-30 s)")
@pytest.mark.timeout(280)
def test_compile_timing_is_cold_then_warm(tmp_path):
    model, tok = hf.load(save_tiny_model(tmp_path, "llama", seed=2), backend="flex")
    timing = hf.compile_timing(model, tok, PARAPHRASES, PREFIX, SUFFIX, repeat=1)
    assert timing["cold_misses"] > 0 and timing["cold_hits"] == 0
    assert timing["warm_hits"] > 0 and timing["warm_misses"] == 0
    assert timing["cold_seconds"] > 0 and timing["warm_seconds"] > 0 and timing["run_seconds"] > 0
    assert timing["prompt_tokens"] == hf.fused_prompt(*hf.encode(tok, PREFIX, PARAPHRASES, SUFFIX)).length

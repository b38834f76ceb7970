"""Paraphrase-fusion views: config dicts, smart sampling, phase pictures and numbers, the flowchart."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import sparsekit as sk  # noqa: E402
from sparsekit import flowchart as fc  # noqa: E402
from sparsekit import segment_views as sv  # noqa: E402


@pytest.mark.parametrize("name", sorted(sv.PRESETS))
def test_presets_build_the_seed_layouts(name):
    cfg = sv.PRESETS[name]
    p = sv.pattern_from_config(cfg)
    expected = (
        cfg["num_paraphrases"] * cfg["tokens_per_paraphrase"]
        + (cfg["num_paraphrases"] - 1) * cfg["separator_tokens"]
        + cfg["num_generated_tokens"]
    )
    assert p.length == expected
    assert len(p.spans("paraphrase")) == cfg["num_paraphrases"]


def test_config_errors_name_the_key():
    cfg = dict(sv.PRESETS["small"])
    with pytest.raises(ValueError, match="unknown config keys.*colour"):
        sv.pattern_from_config({**cfg, "colour": "red"})
    with pytest.raises(ValueError, match="missing.*separator_tokens"):
        sv.pattern_from_config({k: v for k, v in cfg.items() if k != "separator_tokens"})
    with pytest.raises(ValueError, match="display_mode must be one of"):
        sv.pattern_from_config({**cfg, "display_mode": "zoomed"})
    with pytest.raises(ValueError, match="max_display_positions"):
        sv.pattern_from_config({**cfg, "display_mode": "sampled", "max_display_positions": None})
    with pytest.raises(ValueError, match="tokens_per_paraphrase"):
        sv.pattern_from_config({**cfg, "tokens_per_paraphrase": 0})


@given(
    lengths=st.lists(st.integers(1, 40), min_size=1, max_size=6),
    separator=st.integers(0, 3),
    prefix=st.integers(0, 10),
    generated=st.integers(0, 12),
    budget=st.integers(2, 80),
)
def test_smart_sampling_keeps_every_boundary_within_budget(lengths, separator, prefix, generated, budget):
    p = sk.paraphrase_fusion(
        lengths=lengths, separator_tokens=separator, prefix_tokens=prefix, num_generated_tokens=generated
    )
    ends = sorted({t for s in p.layout for t in (s.start, s.stop - 1)})
    if len(ends) > budget and p.length > budget:
        with pytest.raises(ValueError, match=f"at least {len(ends)}"):
            sv.sample_positions(p, budget)
        return
    pos = sv.sample_positions(p, budget)
    assert np.all(np.diff(pos) > 0) and pos[0] >= 0 and pos[-1] < p.length
    if p.length <= budget:
        np.testing.assert_array_equal(pos, np.arange(p.length))
    else:
        assert len(pos) == budget  # the whole budget is used: interiors are large enough here or full
        assert set(ends) <= set(pos.tolist())


def test_sampling_a_phase_stays_inside_it():
    p = sk.paraphrase_fusion(5, 50, separator_tokens=2, num_generated_tokens=20)
    pos = sv.sample_positions(p, 30, range(p.generation_start))
    assert pos.max() < p.generation_start and len(pos) == 30


@pytest.mark.parametrize("phase", sv.PHASES)
@pytest.mark.parametrize("mode", sv.DISPLAY_MODES)
def test_fusion_picture_shows_exact_cells_and_boundaries(phase, mode):
    p = sk.paraphrase_fusion(4, 30, separator_tokens=3, prefix_tokens=5, num_generated_tokens=10)
    fig = sv.plot_fusion_mask(p, phase, mode, 40 if mode == "sampled" else None)
    ax = fig.axes[0]
    rows, cols = sv._phase_ranges(p, phase)
    if mode == "sampled":
        r, c = sv.sample_positions(p, 40, rows), sv.sample_positions(p, 40, cols)
    else:
        r, c = np.arange(rows.start, rows.stop), np.arange(cols.start, cols.stop)
    dense = p.dense(p.length)
    np.testing.assert_array_equal(ax.images[0].get_array(), dense[np.ix_(r, c)])
    colours = [line.get_color() for line in ax.lines]
    assert "tab:red" in colours
    assert ("tab:blue" in colours) == (phase != "encoding")
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert {"Q", "P1", "P4"} <= set(labels)
    plt.close(fig)


def test_fusion_picture_errors():
    p = sk.paraphrase_fusion(2, 5)
    with pytest.raises(ValueError, match="no generation phase"):
        sv.plot_fusion_mask(p, "generation")
    with pytest.raises(ValueError, match="phase must be one of"):
        sv.plot_fusion_mask(p, "decoding")
    with pytest.raises(ValueError, match="paraphrase_fusion pattern"):
        sv.sample_positions(sk.causal(), 10)


def test_phase_summary_counts_match_the_dense_mask():
    p = sk.paraphrase_fusion(lengths=[7, 12, 5], separator_tokens=2, prefix_tokens=4, num_generated_tokens=6)
    dense = p.dense(p.length)
    s, g = p.generation_start, p.length
    summary = sv.phase_summary(p, block_size=8)
    assert summary["encoding"]["allowed"] == dense[:s, :s].sum()
    assert summary["generation"]["allowed"] == dense[s:].sum() == summary["generation"]["causal_allowed"]
    assert summary["full"]["allowed"] == dense.sum()
    assert summary["encoding"]["causal_allowed"] == np.tril(np.ones((s, s), bool)).sum()
    assert summary["encoding"]["sparsity"] == pytest.approx(1 - dense[:s, :s].mean())
    assert summary["generation"]["sparsity"] == pytest.approx(1 - dense[s:].mean())
    tiles = -(-s // 8)
    padded = np.zeros((tiles * 8, tiles * 8), bool)
    padded[:s, :s] = dense[:s, :s]
    empty = ~padded.reshape(tiles, 8, tiles, 8).any(axis=(1, 3))
    assert summary["encoding"]["block_sparsity"] == pytest.approx(empty.mean())
    assert g == summary["full"]["rows"]


def test_flowchart_draws_one_box_per_stage_with_configured_colours():
    fig = fc.plot_flowchart({"color_attention": "#123456", "box_width": 5.0})
    ax = fig.axes[0]
    boxes = [p for p in ax.patches if type(p).__name__ == "FancyBboxPatch"]
    assert len(boxes) == len(fc.FUSION_STAGES) == 7
    attention = [b for b, s in zip(boxes, fc.FUSION_STAGES, strict=True) if s.category == "attention"]
    assert all(matplotlib.colors.to_hex(b.get_facecolor()) == "#123456" for b in attention)
    assert all(b.get_width() == pytest.approx(5.0) for b in boxes)
    texts = {t.get_text() for t in ax.texts}
    assert {s.title for s in fc.FUSION_STAGES} <= texts
    plt.close(fig)


def test_flowchart_config_errors():
    with pytest.raises(ValueError, match="unknown flowchart config key 'colour_input'"):
        fc.flowchart_config({"colour_input": "red"})
    with pytest.raises(ValueError, match="box_height must be a number > 0"):
        fc.flowchart_config({"box_height": 0})
    with pytest.raises(ValueError, match="color_output must be a matplotlib colour"):
        fc.flowchart_config({"color_output": "not-a-colour"})
    with pytest.raises(ValueError, match="vertical_spacing"):
        fc.flowchart_config({"box_height": 2.0, "vertical_spacing": 1.0})
    with pytest.raises(ValueError, match="loop_stage"):
        fc.plot_flowchart(loop_stage=9)
    with pytest.raises(ValueError, match="stage category"):
        fc.plot_flowchart(stages=[fc.Stage("a", "b", "magic")])


def test_plot_positions_draws_each_token_at_its_position_id():
    p = sk.paraphrase_fusion(lengths=[3, 5, 2], prefix_tokens=2, num_generated_tokens=4)
    ids = np.array([0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 2, 3, 7, 8, 9, 10])  # written from the layout by hand
    fig = sv.plot_positions(p, ids, cue_tokens=1)
    ax = fig.axes[0]
    drawn = {}
    for collection in ax.collections:  # filled and hollow dots
        for x, y in collection.get_offsets():
            drawn[int(x)] = int(y)
    assert drawn == dict(enumerate(ids.tolist()))
    white = [c for c in ax.collections if len(c.get_offsets()) and list(c.get_facecolor()[0][:3]) == [1] * 3]
    assert [int(x) for c in white for x, _ in c.get_offsets()] == [12]  # the one cue token
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Q", "P1", "P2", "P3", "Gen"]
    assert {round(line.get_ydata()[0]) for line in ax.lines if line.get_linestyle() == ":"} == {2, 7}
    plt.close(fig)
    with pytest.raises(ValueError, match="one id per token"):
        sv.plot_positions(p, ids[:-1])
    with pytest.raises(ValueError, match="cue_tokens"):
        sv.plot_positions(p, ids, cue_tokens=5)

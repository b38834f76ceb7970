"""The training script of the shipped model: a few steps write a loadable model whole, a failure writes
nothing, bad arguments exit 2, and training examples are laid out as the rule of paraphrase fusion says
(checked cell by cell against the rule, not against sparsekit's pattern)."""

import json
import os

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sparsekit import fusion_task as ft  # noqa: E402
from sparsekit import hf  # noqa: E402
from sparsekit.torch import train_fusion  # noqa: E402


def _state(model):
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.mark.timeout(240)
def test_a_few_steps_write_a_loadable_model_and_are_deterministic(tmp_path):
    out = tmp_path / "model"
    assert train_fusion.main(["--out", str(out), "--steps", "2", "--seed", "3"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left behind
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "training.json"} <= names
    record = json.loads((out / "training.json").read_text())
    assert record["seed"] == 3 and record["steps"] == 2 and record["stopped_by_time"] is False
    assert np.isfinite(record["final_loss"]) and record["seconds"] > 0
    model, tokenizer = hf.load(out, backend="sdpa")
    assert model.config.model_type == "llama"
    ids = tokenizer("which code ? a b c d", add_special_tokens=True)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids[1:]) == "which code ? a b c d"
    # The same seed and steps give the same weights (saved ones against a fresh in-process run).
    again, _, _ = train_fusion.train(seed=3, steps=2)
    for name, tensor in again.state_dict().items():
        torch.testing.assert_close(tensor, model.state_dict()[name], rtol=0, atol=0)


@pytest.mark.timeout(120)
def test_a_failure_writes_nothing_and_keeps_the_old_folder(tmp_path, monkeypatch):
    model, tokenizer, record = train_fusion.train(seed=0, steps=1)
    out = tmp_path / "model"
    out.mkdir()
    (out / "old.txt").write_text("kept")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(type(tokenizer), "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        train_fusion.save(model, tokenizer, record, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with pytest.raises(OSError, match="disk full"):
        train_fusion.save(model, tokenizer, record, tmp_path / "new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize(
    "argv",
    [["--steps", "2"], ["--out", "x", "--steps", "0"], ["--out", "x", "--max-seconds", "-1"],
     ["--out", "x", "--seed", "-2"]],
)  # fmt: skip
def test_bad_arguments_exit_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        train_fusion.main(argv)
    assert stop.value.code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_training_layouts_follow_the_rule_cell_by_cell():
    tokenizer = train_fusion.build_tokenizer()
    (example,) = ft.make_examples(1, 3, seed=2)
    prefix = 1 + len(example.prefix.split())  # BOS and the prefix words
    lengths = [len(text.split()) for text in example.paraphrases]
    tail = len(example.suffix.split()) + len(example.answer.split()) + 1  # suffix, answer, EOS
    n = prefix + sum(lengths) + tail
    # Segment of every token: -1 prefix, i paraphrase i, len(lengths) the suffix and the answer.
    segment = [-1] * prefix + [i for i, m in enumerate(lengths) for _ in range(m)] + [len(lengths)] * tail
    ids, positions, mask, answer = train_fusion.training_sequence(tokenizer, example, fused=True)
    assert len(ids) == n and answer == len(example.answer.split()) + 1
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids[-answer:-1]) == example.answer
    for q in range(n):
        for kv in range(n):
            see = kv <= q and (segment[q] == len(lengths) or segment[kv] in (-1, segment[q]))
            assert mask[q, kv] == see, (q, kv)
    expected = list(range(prefix))
    for m in lengths:
        expected += range(prefix, prefix + m)
    expected += range(prefix + max(lengths), prefix + max(lengths) + tail)
    assert positions == expected
    ids_c, positions_c, mask_c, answer_c = train_fusion.training_sequence(tokenizer, example, fused=False)
    assert ids_c == ids and answer_c == answer and positions_c == list(range(n))
    assert np.array_equal(mask_c, np.tril(np.ones((n, n), dtype=bool)))


def test_collate_pads_without_leaking():
    tokenizer = train_fusion.build_tokenizer()
    examples = ft.make_examples(2, 1, seed=0) + ft.make_examples(1, 4, seed=1)
    sequences = [train_fusion.training_sequence(tokenizer, e, fused=True) for e in examples]
    batch = train_fusion.collate(sequences, tokenizer.pad_token_id)
    width = max(len(s[0]) for s in sequences)
    assert batch["attention_mask"].shape == (3, 1, width, width)
    for row, (ids, _, dense, answer) in enumerate(sequences):
        n = len(ids)
        block = batch["attention_mask"][row, 0]
        assert torch.equal(block[:n, :n], torch.from_numpy(dense))
        assert not block[:n, n:].any()  # no real token sees padding
        assert torch.equal(block[n:, n:], torch.eye(width - n, dtype=torch.bool))  # padding sees itself
        labels = batch["labels"][row]
        assert labels[: n - answer].eq(-100).all() and labels[n:].eq(-100).all()
        assert labels[n - answer : n].tolist() == ids[n - answer :]

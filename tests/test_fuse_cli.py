"""``python -m sparsekit fuse`` in subprocesses on tiny saved Llama and Qwen2 models (offline)."""

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
os.environ["HF_HUB_OFFLINE"] = "1"

from hf_models import build_tokenizer, save_tiny_model  # noqa: E402

PARAPHRASES = ("which animal sat on the mat near the door ?", "the cat sat on the mat")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return {f: save_tiny_model(tmp_path_factory.mktemp(f), f, seed=3) for f in ("llama", "qwen2")}


def fuse(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sparsekit", "fuse", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


def _paraphrase_args(paraphrases=PARAPHRASES) -> list[str]:
    return [a for p in paraphrases for a in ("--paraphrase", p)]


@pytest.mark.timeout(200)
@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_json_output_matches_the_library(saved, family):
    import torch

    from sparsekit import hf

    args = ["--model", str(saved[family]), *_paraphrase_args(), "--prefix", "question :"]
    done = fuse(*args, "--suffix", "answer :", "--max-new-tokens", "5", "--backend", "sdpa", "--json")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert {"mode", "text", "token_ids", "logprobs", "prompt_tokens", "seconds"} <= set(record)
    assert record["mode"] == "fused" and record["seconds"] > 0
    model, tok = hf.load(saved[family], backend="sdpa")
    with torch.no_grad():
        ref = hf.generate(model, tok, PARAPHRASES, "question :", "answer :", "fused", 5, "sdpa")
    assert record["token_ids"] == ref.token_ids and record["text"] == ref.text
    assert record["logprobs"] == pytest.approx(ref.logprobs, abs=1e-5)
    assert record["prompt_tokens"] == ref.prompt_tokens


@pytest.mark.timeout(280)
def test_every_mode_and_the_flex_default(saved):
    base = [
        "--model",
        str(saved["llama"]),
        *_paraphrase_args(),
        "--suffix",
        "answer :",
        "--max-new-tokens",
        "3",
    ]
    records = {}
    for mode in ("single", "concat", "fused", "average"):
        done = fuse(*base, "--mode", mode, "--backend", "sdpa", "--json")
        assert done.returncode == 0, done.stderr
        records[mode] = json.loads(done.stdout)
        assert records[mode]["mode"] == mode and len(records[mode]["token_ids"]) <= 3
    assert records["average"]["runs"] == 2
    flex = fuse(*base, "--json", timeout=260)  # default backend: compiled flex_attention with the BlockMask
    assert flex.returncode == 0, flex.stderr
    assert json.loads(flex.stdout)["token_ids"] == records["fused"]["token_ids"]
    plain = fuse(*base, "--backend", "sdpa")
    assert plain.returncode == 0 and plain.stdout == records["fused"]["text"] + "\n"


def _refused(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert words in lines[0], lines[0]


@pytest.mark.timeout(200)
def test_bad_input_exits_2_with_one_line(saved, tmp_path):
    llama = str(saved["llama"])
    _refused(fuse("--model", str(tmp_path / "nowhere"), *_paraphrase_args()), "no such directory")
    _refused(fuse("--model", str(tmp_path), *_paraphrase_args()), "holds no model")
    no_tokenizer = tmp_path / "weights_only"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((saved["llama"] / "config.json").read_text())
    _refused(fuse("--model", str(no_tokenizer), *_paraphrase_args()), "no tokenizer")
    tokenizer_only = tmp_path / "tokenizer_only"
    build_tokenizer(True).save_pretrained(tokenizer_only)
    (tokenizer_only / "config.json").write_text((saved["llama"] / "config.json").read_text())
    _refused(fuse("--model", str(tokenizer_only), *_paraphrase_args()), "no causal LM")
    _refused(fuse("--model", llama), "no paraphrase")
    _refused(fuse("--model", llama, "--paraphrase", "the cat", "--paraphrase", "  "), "is empty")
    _refused(
        fuse("--model", llama, "--paraphrase", "the cat " * 40, "--backend", "sdpa"),
        "longer than the model's context",
    )
    _refused(fuse("--model", llama, *_paraphrase_args(), "--max-new-tokens", "0"), "--max-new-tokens")
    _refused(fuse("--model", llama, *_paraphrase_args(), "--mode", "vote"), "--mode")


def test_cli_modes_are_the_library_modes():
    pytest.importorskip("transformers")
    from sparsekit import fuse_cli, hf

    assert set(fuse_cli.MODES) == set(hf.MODES)

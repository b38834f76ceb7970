"""``python -m sparsekit fuse`` in subprocesses on tiny saved Llama and Qwen2 models (offline)."""

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
from marks import compiles

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


def fuse_all(*calls: list[str]) -> list[subprocess.CompletedProcess]:
    """Several ``fuse`` commands at once (each mostly imports torch and transformers)."""
    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(lambda args: fuse(*args), calls))


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


BASE = ["--suffix", "answer :", "--max-new-tokens", "3", *_paraphrase_args()]
MODES = ("single", "concat", "fused", "average")


@pytest.mark.timeout(280)
def test_every_mode(saved):
    base = ["--model", str(saved["llama"]), *BASE]
    *done, plain = fuse_all(
        *[[*base, "--mode", mode, "--backend", "sdpa", "--json"] for mode in MODES],
        [*base, "--backend", "sdpa"],
    )
    records = {}
    for mode, result in zip(MODES, done, strict=True):
        assert result.returncode == 0, result.stderr
        records[mode] = json.loads(result.stdout)
        assert records[mode]["mode"] == mode and len(records[mode]["token_ids"]) <= 3
    assert records["average"]["runs"] == 2
    assert plain.returncode == 0 and plain.stdout == records["fused"]["text"] + "\n"


@compiles("compiles flex_attention's C++ kernel (about 20 s)")
@pytest.mark.timeout(280)
def test_the_flex_default_gives_the_sdpa_tokens(saved):
    base = ["--model", str(saved["llama"]), *BASE]
    # Default backend: compiled flex_attention with sparsekit's BlockMask.
    flex, sdpa = fuse(*base, "--json", timeout=260), fuse(*base, "--backend", "sdpa", "--json")
    assert flex.returncode == 0, flex.stderr
    assert sdpa.returncode == 0, sdpa.stderr
    assert json.loads(flex.stdout)["token_ids"] == json.loads(sdpa.stdout)["token_ids"]


def _refused(done: subprocess.CompletedProcess, words: str) -> None:
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert words in lines[0], lines[0]


@pytest.mark.timeout(200)
def test_bad_input_exits_2_with_one_line(saved, tmp_path):
    llama = str(saved["llama"])
    no_tokenizer = tmp_path / "weights_only"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((saved["llama"] / "config.json").read_text())
    tokenizer_only = tmp_path / "tokenizer_only"
    build_tokenizer(True).save_pretrained(tokenizer_only)
    (tokenizer_only / "config.json").write_text((saved["llama"] / "config.json").read_text())
    cases = [
        (["--model", str(tmp_path / "nowhere"), *_paraphrase_args()], "no such directory"),
        (["--model", str(tmp_path), *_paraphrase_args()], "holds no model"),
        (["--model", str(no_tokenizer), *_paraphrase_args()], "no tokenizer"),
        (["--model", str(tokenizer_only), *_paraphrase_args()], "no causal LM"),
        (["--model", llama], "no paraphrase"),
        (["--model", llama, "--paraphrase", "the cat", "--paraphrase", "  "], "is empty"),
        (
            ["--model", llama, "--paraphrase", "the cat " * 40, "--backend", "sdpa"],
            "longer than the model's context",
        ),
        (["--model", llama, *_paraphrase_args(), "--max-new-tokens", "0"], "--max-new-tokens"),
        (["--model", llama, *_paraphrase_args(), "--mode", "vote"], "--mode"),
    ]
    results = fuse_all(*[args for args, _ in cases])
    for (_, words), done in zip(cases, results, strict=True):
        _refused(done, words)


def test_cli_modes_are_the_library_modes():
    pytest.importorskip("transformers")
    from sparsekit import fuse_cli, hf

    assert set(fuse_cli.MODES) == set(hf.MODES)

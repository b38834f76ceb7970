"""``python -m sparsekit fuse`` on tiny saved Llama and Qwen2 models (offline).

A few runs go through real subprocesses (output, exit status 2 and one clean line on stderr, each
kind of failure once); the other modes and error branches call the same ``sparsekit.cli.main`` in
this process, which saves a torch + transformers start-up (seconds) per case.
"""

import functools
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

from sparsekit.cli import main  # noqa: E402

PARAPHRASES = ("which animal sat on the mat near the door ?", "the cat sat on the mat")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _paraphrase_args(paraphrases=PARAPHRASES) -> list[str]:
    return [a for p in paraphrases for a in ("--paraphrase", p)]


BASE = ["--suffix", "answer :", "--max-new-tokens", "3", *_paraphrase_args()]
MODES = ("single", "concat", "fused", "average")
JSON_RUN = [*_paraphrase_args(), "--prefix", "question :", "--suffix", "answer :", "--max-new-tokens", "5"]


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Tiny models, plus a directory with weights but no tokenizer and one with a tokenizer only."""
    models = {f: save_tiny_model(tmp_path_factory.mktemp(f), f, seed=3) for f in ("llama", "qwen2")}
    config = (models["llama"] / "config.json").read_text()
    models["no_tokenizer"] = tmp_path_factory.mktemp("weights_only")
    (models["no_tokenizer"] / "config.json").write_text(config)
    models["tokenizer_only"] = tmp_path_factory.mktemp("tokenizer_only")
    build_tokenizer(True).save_pretrained(models["tokenizer_only"])
    (models["tokenizer_only"] / "config.json").write_text(config)
    return models


def fuse(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "sparsekit", "fuse", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=ENV)


@pytest.fixture(scope="module")
def processes(saved):
    """The end-to-end runs, two at a time: ``name -> CompletedProcess``.

    Two start torch and transformers (an answer in JSON, a directory that holds no causal LM); the
    others fail before that import, so they cost a fraction of a second each.
    """
    llama = str(saved["llama"])
    calls = {
        "json llama": ["--model", llama, *JSON_RUN, "--backend", "sdpa", "--json"],
        "no causal LM": ["--model", str(saved["tokenizer_only"]), *_paraphrase_args()],
        "no paraphrase": ["--model", llama],
        "max new tokens": ["--model", llama, *_paraphrase_args(), "--max-new-tokens", "0"],
        "mode": ["--model", llama, *_paraphrase_args(), "--mode", "vote"],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        return dict(zip(calls, pool.map(lambda args: fuse(*args), calls.values()), strict=True))


@pytest.fixture
def hf_logging():
    """``fuse`` quiets transformers' logging and progress bars; put them back for the other tests."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    yield
    logging.set_verbosity(verbosity)
    (logging.enable_progress_bar if bars else logging.disable_progress_bar)()


def fuse_here(capsys, *args: str) -> tuple[int, str, str]:
    """``sparsekit fuse ARGS`` through ``cli.main`` in this process: exit status, stdout, stderr."""
    try:
        code = main(["fuse", *args])
    except SystemExit as stop:  # argparse's errors
        code = stop.code
    out, err = capsys.readouterr()
    return code, out, err


@functools.cache
def _loaded(model_dir):
    from sparsekit import hf

    return hf.load(model_dir, backend="sdpa")


def library(model_dir, mode="fused", prefix="", max_new_tokens=3):
    """The same answer computed by ``sparsekit.hf`` directly."""
    import torch

    from sparsekit import hf

    model, tok = _loaded(model_dir)
    with torch.no_grad():
        return hf.generate(model, tok, PARAPHRASES, prefix, "answer :", mode, max_new_tokens, "sdpa")


@pytest.mark.timeout(200)
def test_json_output_matches_the_library(saved, processes):
    done = processes["json llama"]
    assert done.returncode == 0 and done.stderr == "", done.stderr
    record = json.loads(done.stdout)
    assert {"mode", "text", "token_ids", "logprobs", "prompt_tokens", "seconds"} <= set(record)
    assert record["mode"] == "fused" and record["seconds"] > 0
    ref = library(saved["llama"], prefix="question :", max_new_tokens=5)
    assert record["token_ids"] == ref.token_ids and record["text"] == ref.text
    assert record["logprobs"] == pytest.approx(ref.logprobs, abs=1e-5)
    assert record["prompt_tokens"] == ref.prompt_tokens


@pytest.mark.timeout(200)
@pytest.mark.parametrize("family", ("llama", "qwen2"))
def test_every_mode(saved, family, capsys, hf_logging):
    base = ["--model", str(saved[family]), *BASE, "--backend", "sdpa"]
    records = {}
    for mode in MODES:
        code, out, err = fuse_here(capsys, *base, "--mode", mode, "--json")
        assert code == 0 and err == "", err
        records[mode] = json.loads(out)
        ref = library(saved[family], mode)
        assert records[mode]["mode"] == mode and records[mode]["token_ids"] == ref.token_ids
        assert len(ref.token_ids) <= 3 and records[mode]["text"] == ref.text
    assert records["average"]["runs"] == 2
    code, out, err = fuse_here(capsys, *base)
    assert code == 0 and out == records["fused"]["text"] + "\n"


@compiles("compiles flex_attention's C++ kernel (about 20 s)")
@pytest.mark.timeout(280)
def test_the_flex_default_gives_the_sdpa_tokens(saved):
    base = ["--model", str(saved["llama"]), *BASE]
    # Default backend: compiled flex_attention with sparsekit's BlockMask.
    flex, sdpa = fuse(*base, "--json", timeout=260), fuse(*base, "--backend", "sdpa", "--json")
    assert flex.returncode == 0, flex.stderr
    assert sdpa.returncode == 0, sdpa.stderr
    assert json.loads(flex.stdout)["token_ids"] == json.loads(sdpa.stdout)["token_ids"]


def _refused(code: int, err: str, words: str) -> None:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and err.endswith("\n") and "Traceback" not in err, err
    assert lines[0].startswith("sparsekit") and words in lines[0], lines[0]


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("no causal LM", "no causal LM"),
        ("no paraphrase", "no paraphrase"),
        ("max new tokens", "--max-new-tokens"),
        ("mode", "--mode"),
    ],
)
def test_bad_input_exits_2_with_one_line(processes, name, words):
    done = processes[name]
    _refused(done.returncode, done.stderr, words)
    assert done.stdout == ""


BAD_INPUT = [  # (model directory, other arguments, words of the one line on stderr)
    ("{tmp}/nowhere", _paraphrase_args(), "no such directory"),
    ("{tmp}", _paraphrase_args(), "holds no model"),
    ("no_tokenizer", _paraphrase_args(), "no tokenizer"),
    ("tokenizer_only", _paraphrase_args(), "no causal LM"),
    ("llama", [], "no paraphrase"),
    ("llama", ["--paraphrase", "the cat", "--paraphrase", "  "], "is empty"),
    ("llama", ["--paraphrase", "the cat " * 40, "--backend", "sdpa"], "longer than the model's context"),
    ("llama", [*_paraphrase_args(), "--max-new-tokens", "0"], "--max-new-tokens"),
    ("llama", [*_paraphrase_args(), "--mode", "vote"], "--mode"),
]


@pytest.mark.parametrize(("model", "args", "words"), BAD_INPUT, ids=[case[2] for case in BAD_INPUT])
def test_every_bad_input_is_refused_in_one_line(saved, tmp_path, capsys, hf_logging, model, args, words):
    path = saved[model] if model in saved else model.replace("{tmp}", str(tmp_path))
    code, out, err = fuse_here(capsys, "--model", str(path), *args)
    _refused(code, err, words)
    assert out == ""


def test_cli_modes_are_the_library_modes():
    from sparsekit import fuse_cli, hf

    assert set(fuse_cli.MODES) == set(hf.MODES)

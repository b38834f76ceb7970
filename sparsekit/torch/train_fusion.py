"""Train the small Llama model of :mod:`sparsekit.fusion_task` (the model shipped in ``SHIPPED_MODEL``).

::

    python -m sparsekit.torch.train_fusion --out DIR \\
        [--seed S] [--steps N] [--max-seconds T]

A ``LlamaForCausalLM`` with random initial weights and a word-level tokenizer built offline with
``tokenizers`` learn to answer the task's code from ``k = 1 .. 5`` corrupted views. Every training
example is laid out as one of the ensembles lays it out at inference, half of each:

* **causal**: ``prefix + view 1 + ... + view k + suffix + answer + EOS``, causal mask, ordinary positions
  (what ``single``, ``concat`` and each run of ``average`` see);
* **fused**: the same tokens laid out by :func:`sparsekit.hf.fused_prompt` with the suffix, answer and
  EOS as its generated part: each view attends to the prefix and itself only, positions restart after the
  prefix, and the answer tokens attend to everything (what ``fused`` sees), given to SDPA as the dense
  boolean mask ``pattern.dense(n)``.

The loss is the cross-entropy of the answer tokens and EOS only. Training is deterministic given the seed
and the step count on one machine and torch build (two threads, a fixed learning-rate schedule over
``--steps``); ``--max-seconds`` stops it earlier if the machine is slow, and ``training.json`` says how
many steps ran. ``DIR`` receives the model (``config.json``, ``model.safetensors``), the tokenizer and
``training.json``, written whole or not at all: everything goes to a temporary folder beside ``DIR``
that is renamed onto it at the end.

Run as a command, it restarts itself with ``OMP_WAIT_POLICY=PASSIVE`` unless that variable is set:
on a machine busier than its cores, OpenMP threads that spin while they wait made each step 20 to 30
times slower on the shared 2-core machine (5 steps: 39.6 s instead of 1.3 s, the same weights).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .. import hf
from .._validate import int_arg
from ..cli import OneLineParser
from ..fusion_task import CORRUPTION, Example, sample_examples, vocabulary
from ..masks.causal import causal

#: Views per training example: each k in 1 .. MAX_VIEWS equally often.
MAX_VIEWS = 5
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>")
#: Model size (a LlamaConfig's arguments besides the vocabulary and special tokens).
ARCHITECTURE = dict(
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=64,
    tie_word_embeddings=True,
)
#: Optimiser settings.
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
WARMUP_STEPS = 50
STEPS = 1000


def build_tokenizer():
    """A word-level ``PreTrainedTokenizerFast`` over the task's words that prepends ``<s>``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate((*SPECIALS, *vocabulary()))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        model_max_length=ARCHITECTURE["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def build_model(tokenizer, seed: int):
    """A ``LlamaForCausalLM`` of :data:`ARCHITECTURE` with seeded random weights, on SDPA."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
        **ARCHITECTURE,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def training_sequence(
    tokenizer, example: Example, fused: bool
) -> tuple[list[int], list[int], np.ndarray, int]:
    """One example as the model trains on it: ``(ids, position ids, boolean mask, answer tokens)``.

    The prompt is tokenized and laid out exactly as :func:`sparsekit.hf.generate` does it (``fused`` as
    its ``fused`` mode, otherwise one causal sequence); the answer and EOS follow as generated tokens.
    """
    prefix, paras, suffix = hf.encode(tokenizer, example.prefix, example.paraphrases, example.suffix)
    answer = tokenizer(example.answer, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    if fused:
        prompt = hf.fused_prompt(prefix, paras, suffix + answer)
    else:
        prompt = hf._causal_prompt(prefix + [t for para in paras for t in para] + suffix + answer)
    mask = (prompt.pattern or causal()).dense(prompt.length)
    return prompt.ids[0].tolist(), prompt.position_ids[0].tolist(), mask, len(answer)


def collate(sequences: Sequence[tuple[list[int], list[int], np.ndarray, int]], pad_id: int) -> dict:
    """Right-padded batch: ids, position ids, a ``(B, 1, N, N)`` boolean mask (padding rows see only
    themselves, no real row sees padding) and labels (``-100`` except the answer tokens)."""
    width = max(len(ids) for ids, *_ in sequences)
    batch = len(sequences)
    ids = torch.full((batch, width), pad_id, dtype=torch.int64)
    positions = torch.zeros((batch, width), dtype=torch.int64)
    labels = torch.full((batch, width), -100, dtype=torch.int64)
    mask = torch.eye(width, dtype=torch.bool).repeat(batch, 1, 1, 1)
    for row, (seq, pos, dense, answer) in enumerate(sequences):
        n = len(seq)
        ids[row, :n] = torch.tensor(seq)
        positions[row, :n] = torch.tensor(pos)
        labels[row, n - answer : n] = ids[row, n - answer : n]
        mask[row, 0, :n, :n] = torch.from_numpy(dense)
    return {"input_ids": ids, "position_ids": positions, "attention_mask": mask, "labels": labels}


def _batches(tokenizer, rng: np.random.Generator, batch_size: int) -> list[dict]:
    """One optimiser step's examples: half causal, half fused, views ``1 .. MAX_VIEWS`` equally often;
    collated into one batch per number of views, so that short sequences are not padded to long ones."""
    by_views: dict[int, list] = {}
    for row in range(batch_size):
        k = 1 + row % MAX_VIEWS
        (example,) = sample_examples(rng, 1, k, CORRUPTION)
        by_views.setdefault(k, []).append(training_sequence(tokenizer, example, fused=row % 2 == 1))
    return [collate(sequences, tokenizer.pad_token_id) for _, sequences in sorted(by_views.items())]


def _loss(model, batches: list[dict]) -> torch.Tensor:
    """Mean cross-entropy of every answer token of the step (the batches weighted by their tokens)."""
    total, count = 0.0, 0
    for batch in batches:
        labels = batch.pop("labels")[:, 1:]
        logits = model(**batch).logits[:, :-1]
        total = total + torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        count += int((labels != -100).sum())
    return total / count


def _learning_rate(step: int, steps: int) -> float:
    """Linear warm-up, then cosine decay to a tenth."""
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    return LEARNING_RATE * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))


def train(seed: int = 0, steps: int = STEPS, max_seconds: float = 600.0, log=None):
    """Train from seed; returns ``(model, tokenizer, record)`` where ``record`` is what ``training.json``
    holds. Stops after ``steps`` steps or once ``max_seconds`` have passed, whichever comes first."""
    torch.set_num_threads(2)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, seed)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.98), weight_decay=0.01)
    rng = np.random.default_rng([seed, 1])  # held-out examples come from default_rng(seed)
    start = time.perf_counter()
    losses: list[float] = []
    step = 0
    while step < steps and time.perf_counter() - start < max_seconds:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps)
        loss = _loss(model, _batches(tokenizer, rng, BATCH_SIZE))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
        if log is not None and (step % 50 == 0 or step == steps):
            log(f"step {step}/{steps}  loss {np.mean(losses[-50:]):.4f}  {time.perf_counter() - start:.0f} s")
    model.eval()
    record = {
        "seed": seed,
        "steps": step,
        "steps_planned": steps,
        "stopped_by_time": step < steps,
        "seconds": round(time.perf_counter() - start, 1),
        "threads": torch.get_num_threads(),
        "final_loss": round(float(np.mean(losses[-20:])), 4),
        "batch_size": BATCH_SIZE,
        "learning_rate": LEARNING_RATE,
        "views": f"1..{MAX_VIEWS}",
        "corruption": CORRUPTION,
        "layouts": "half causal (ordinary positions), half fused (sparsekit.hf.fused_prompt, dense mask)",
        "parameters": sum(p.numel() for p in model.parameters()),
        "config": {**ARCHITECTURE, "vocab_size": len(tokenizer), "model_type": "llama"},
        "torch": torch.__version__,
    }
    return model, tokenizer, record


def save(model, tokenizer, record: dict, out: str | os.PathLike) -> Path:
    """Write model (safetensors), tokenizer and ``training.json`` to ``out``, whole or not at all."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    old = None
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        for path in tmp.iterdir():  # some writers make private files; these are package data
            path.chmod(0o644)
        tmp.chmod(0o755)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0, got {text}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; returns the exit status (2 with one line on stderr for bad input)."""
    parser = OneLineParser(prog="python -m sparsekit.torch.train_fusion", description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the model into (replaced whole)")
    parser.add_argument("--seed", type=int_arg(0), default=0, help="seed of weights and data (default: 0)")
    parser.add_argument("--steps", type=int_arg(1), default=STEPS, help=f"optimiser steps (default: {STEPS})")
    parser.add_argument(
        "--max-seconds", type=_seconds, default=600.0, help="stop earlier after this long (default: 600)"
    )
    args = parser.parse_args(argv)
    model, tokenizer, record = train(args.seed, args.steps, args.max_seconds, log=print)
    out = save(model, tokenizer, record, args.out)
    print(f"wrote {out}: {record['steps']} steps in {record['seconds']} s, final loss {record['final_loss']}")
    return 0


if __name__ == "__main__":
    if "OMP_WAIT_POLICY" not in os.environ:
        # Read by OpenMP when torch loads, which has already happened: start again with it set. The
        # weights are the same either way (checked byte for byte); only the waiting threads differ.
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-m", "sparsekit.torch.train_fusion", *sys.argv[1:]])
    sys.exit(main())

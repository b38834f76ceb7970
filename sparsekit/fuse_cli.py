"""``python -m sparsekit fuse``: paraphrase fusion on a Hugging Face causal LM from the command line.

::

    python -m sparsekit fuse --model PATH_OR_NAME --paraphrase TEXT [--paraphrase TEXT ...]
        [--prefix TEXT] [--suffix TEXT] [--mode fused|single|concat|average] [--max-new-tokens N]
        [--backend flex|sdpa] [--json]

Prints the generated text, or with ``--json`` one JSON object: ``mode``, ``text``, ``token_ids``,
``logprobs``, ``prompt_tokens``, ``attention_cells``, ``runs``, ``seconds``, ``backend`` and ``model``.
Bad input (a missing model directory, a directory without a model or a tokenizer, no paraphrase, an
empty paraphrase, a prompt longer than the model's context) exits with status 2 and one line on stderr.
torch and transformers are imported only when the subcommand runs (``pip install sparsekit[hf]``).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ._validate import int_arg

MODES = ("fused", "single", "concat", "average")
_DESCRIPTION = (
    "Answer from k paraphrases of one question with a Hugging Face causal LM: the paraphrases are "
    "prefilled side by side in one pass (sparsekit's paraphrase-fusion mask, per-paraphrase positions) "
    "and every generated token attends to all of them; or one of the other ensembles (--mode)."
)


def run_fuse(args: argparse.Namespace) -> int:
    """The ``fuse`` subcommand; returns the exit code (bad input raises ``ValueError``)."""
    if not args.paraphrase:
        raise ValueError("no paraphrase: give at least one --paraphrase TEXT")
    for k, text in enumerate(args.paraphrase):
        if not text.strip():
            raise ValueError(f"--paraphrase number {k + 1} is empty: every paraphrase needs some text")
    try:
        from transformers.utils import logging as hf_logging

        from . import hf
    except ImportError as error:
        raise ValueError(f"fuse needs torch and transformers (pip install sparsekit[hf]): {error}") from None
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model, tokenizer = hf.load(args.model, backend=args.backend)
    result = hf.generate(
        model,
        tokenizer,
        args.paraphrase,
        prefix=args.prefix,
        suffix=args.suffix,
        mode=args.mode,
        max_new_tokens=args.max_new_tokens,
        backend=args.backend,
    )
    if args.json:
        record = {**result.as_dict(), "backend": args.backend, "model": args.model}
        sys.stdout.write(json.dumps(record) + "\n")
    else:
        sys.stdout.write(result.text + "\n")
    return 0


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``fuse`` subcommand on an ``argparse`` subparsers object."""
    parser = subparsers.add_parser(
        "fuse", help="paraphrase fusion on a Hugging Face model", description=_DESCRIPTION
    )
    parser.add_argument("--model", required=True, help="local model directory, or a hub name")
    parser.add_argument(
        "--paraphrase", action="append", default=[], metavar="TEXT", help="one paraphrase (repeat for more)"
    )
    parser.add_argument("--prefix", default="", help="shared text before the paraphrases (default: none)")
    parser.add_argument(
        "--suffix",
        default="\n",
        help="answer cue after the paraphrases, seen by every generated token (default: a newline)",
    )
    parser.add_argument("--mode", choices=MODES, default="fused", help="ensemble (default: fused)")
    parser.add_argument(
        "--max-new-tokens", type=int_arg(1), default=32, help="token budget (default: 32); stops at EOS"
    )
    parser.add_argument(
        "--backend",
        choices=("flex", "sdpa"),
        default="flex",
        help="prefill attention: sparsekit's BlockMask with flex_attention (compiled, default) or SDPA",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(func=run_fuse)
    return parser

"""Tiny Hugging Face causal LMs built offline: random weights from a config, a word-level tokenizer
trained by the ``tokenizers`` library on a few sentences, both saved with ``save_pretrained`` so that
tests load them through the real ``from_pretrained`` code."""

from __future__ import annotations

from pathlib import Path

SENTENCES = (
    "the cat sat on the mat and looked at the red door",
    "a dog ran across the green field to find the old ball",
    "which animal sat on the mat near the door ?",
    "what did the dog find in the field after the rain ?",
    "answer : the cat . the dog . a ball . a mat .",
    "where is the blue box that the small bird left behind",
    "one two three four five six seven eight nine ten",
    "question : tell me the colour of the door , please",
)
SPECIALS = ("<unk>", "<pad>", "<s>", "</s>")

#: Architecture name -> (config class name, model class name, adds a BOS token).
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", True),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", False),
    "mistral": ("MistralConfig", "MistralForCausalLM", True),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", False),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", True),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", True),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", True),
    "granite": ("GraniteConfig", "GraniteForCausalLM", True),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", True),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", True),
}


def build_tokenizer(add_bos: bool):
    """A word-level ``PreTrainedTokenizerFast`` over :data:`SENTENCES` (``<s>`` prepended if ``add_bos``)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    tok.train_from_iterator(SENTENCES, trainers.WordLevelTrainer(special_tokens=list(SPECIALS)))
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )


def save_tiny_model(
    folder: Path, family: str = "llama", seed: int = 0, context: int = 64, **config_options
) -> Path:
    """Save a 2-layer, hidden-size-64 model of ``family`` with random weights and its tokenizer.

    ``context`` is ``max_position_embeddings``; ``config_options`` go to the config. Weights are drawn
    with a larger spread than the default (``initializer_range=0.3``) so that greedy choices are
    decisive, never near-ties.
    """
    import torch
    import transformers

    config_name, model_name, add_bos = FAMILIES[family]
    tokenizer = build_tokenizer(add_bos)
    config = getattr(transformers, config_name)(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        **config_options,
    )
    torch.manual_seed(seed)
    model = getattr(transformers, model_name)(config).eval()
    folder = Path(folder)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder

"""Build a random-weight Llama checkpoint + a locally trained tokenizer: real compute cost, no download.

Used by the GPU experiment (`experiments/gpu_h100.yaml`) so `transformers serve` has a model to load on a
machine that cannot reach a model hub. Needs the `transformers` extra (torch, transformers, tokenizers).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

# Llama shapes by name. "1b" is TinyLlama-1.1B's config (hidden 2048, 22 layers, 32 heads, 4 KV heads,
# MLP 5632, vocab 32000) — the shape of the H100 reference figures; "tiny" is for CPU tests.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=2000, max_position_embeddings=2048),
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
               num_key_value_heads=4, vocab_size=32000, max_position_embeddings=4096),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=32000, max_position_embeddings=4096),
}  # fmt: skip

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _training_text(n: int) -> list[str]:
    """Text for the tokenizer: the project's own labelled corpus (no dataset download)."""
    from system.workload import load_prompts

    return [p.text for p in load_prompts({"kind": "labelled", "n": n, "seed": 0})]


def make_random_llama(
    out_dir: str | Path, shape: str = "tiny", seed: int = 0, dtype: str = "bfloat16"
) -> Path:
    """Write config, random weights (seeded) and a BPE tokenizer trained on the labelled corpus to out_dir."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if shape not in SHAPES:
        raise click.UsageError(f"unknown shape {shape!r}; choose from {sorted(SHAPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(SHAPES[shape])
    vocab = cfg["vocab_size"]

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_training_text(2000), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)

    torch.manual_seed(seed)
    config = LlamaConfig(**cfg, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False, torch_dtype=dtype)
    model = LlamaForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    (out / "random_model.json").write_text(
        json.dumps({"shape": shape, "seed": seed, "dtype": dtype, "params": n_params, **cfg}, indent=2)
    )
    return out


@click.command("make-random-model")
@click.option("--shape", type=click.Choice(sorted(SHAPES)), default="tiny", show_default=True)
@click.option("--out", "out_dir", type=click.Path(file_okay=False), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--dtype", default="bfloat16", show_default=True)
def make_random_model(shape: str, out_dir: str, seed: int, dtype: str) -> None:
    """Write a random-weight Llama of SHAPE with a locally trained tokenizer into OUT."""
    path = make_random_llama(out_dir, shape, seed, dtype)
    click.echo(str(path))


if __name__ == "__main__":
    make_random_model()

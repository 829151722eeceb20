"""The tiny model an emulated SGLang server really loads: one Llama layer, one KV head, random weights.

SGLang needs a real checkpoint to build its model, memory pools and tokenizer. The stand-in keeps what the
control plane sees (the tokenizer and its vocabulary, the emulated model's context length) and shrinks what
costs memory: one layer, one KV head of `HEAD_DIM` dims, so a KV token is 256 bytes (bf16, K and V) instead
of Llama-2 13B's 800 KiB, and a 60,497-token pool (A100-80GB, 13B) takes 15 MiB. Its forward never runs in
an emulated server (the timed stand-in replaces it, sglang_ext/emulate_hooks.py); the weights are random
and seeded.

Cached per machine (`support.smollm2.cache_root()`, like the SmolLM2 checkpoint) under a name that
encodes every shape, written to a temporary folder and renamed into place. The tokenizer comes from a
checkpoint folder (default: the bundled SmolLM2-135M's, converted on first use).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from adrenaline_sgl.scheduler.specs import get_model

NUM_LAYERS, NUM_HEADS, HEAD_DIM, INTERMEDIATE = 1, 1, 64, 128
VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json", "tokenizer.model")  # fmt: skip
_DONE = ".adrenaline-standin"


def standin_config(vocab_size: int, context_tokens: int, bos_id: int, eos_id: int) -> dict:
    """The stand-in's HF config.json (LlamaForCausalLM)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
        "hidden_size": NUM_HEADS * HEAD_DIM, "intermediate_size": INTERMEDIATE, "num_hidden_layers": NUM_LAYERS,
        "num_attention_heads": NUM_HEADS, "num_key_value_heads": NUM_HEADS, "head_dim": HEAD_DIM,
        "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": context_tokens,
        "vocab_size": vocab_size, "tie_word_embeddings": True, "bos_token_id": bos_id, "eos_token_id": eos_id,
        "attention_bias": False, "mlp_bias": False,
    }  # fmt: skip


def kv_bytes_per_token() -> int:
    """The stand-in's real KV footprint per token (all layers, K and V, bf16)."""
    return 2 * NUM_LAYERS * NUM_HEADS * HEAD_DIM * 2


def checkpoint_dir(model: str, tokenizer_dir: str | os.PathLike,
                   cache_root_dir: str | os.PathLike | None = None) -> Path:
    """The stand-in checkpoint for emulating `model` (specs name) with the tokenizer of `tokenizer_dir`."""
    from adrenaline_sgl.support.smollm2 import cache_root

    spec = get_model(model)
    tok = Path(tokenizer_dir)
    if not (tok / "tokenizer_config.json").is_file():
        raise FileNotFoundError(f"emulate: no tokenizer in {tok} (tokenizer_config.json missing)")
    root = Path(cache_root_dir).expanduser() if cache_root_dir else cache_root()
    target = root / f"emulate-standin-v{VERSION}-{tok.name}-ctx{spec.max_context_tokens}"
    if (target / _DONE).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=root))
    try:
        _write(tmp, tok, spec.max_context_tokens)
        (tmp / _DONE).write_text(f"stand-in for emulating {model} with the tokenizer of {tok.name}\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _DONE).exists():  # a half-written target from a killed run
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _write(out: Path, tokenizer_dir: Path, context_tokens: int) -> None:
    import torch
    from safetensors.torch import save_file

    for name in TOKENIZER_FILES:
        if (tokenizer_dir / name).is_file():
            shutil.copy(tokenizer_dir / name, out / name)
    src = json.loads((tokenizer_dir / "config.json").read_text()) if (tokenizer_dir / "config.json").is_file() else {}
    vocab = int(src.get("vocab_size") or _vocab_size(tokenizer_dir))
    cfg = standin_config(vocab, context_tokens, int(src.get("bos_token_id", 1)), int(src.get("eos_token_id", 2)))
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    g = torch.Generator().manual_seed(0)
    h, d, f = cfg["hidden_size"], HEAD_DIM, INTERMEDIATE

    def w(*shape):
        return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)

    tensors = {"model.embed_tokens.weight": w(vocab, h), "model.norm.weight": torch.ones(h, dtype=torch.bfloat16)}
    for i in range(NUM_LAYERS):
        p = f"model.layers.{i}."
        tensors.update({
            p + "self_attn.q_proj.weight": w(NUM_HEADS * d, h), p + "self_attn.k_proj.weight": w(NUM_HEADS * d, h),
            p + "self_attn.v_proj.weight": w(NUM_HEADS * d, h), p + "self_attn.o_proj.weight": w(h, NUM_HEADS * d),
            p + "mlp.gate_proj.weight": w(f, h), p + "mlp.up_proj.weight": w(f, h), p + "mlp.down_proj.weight": w(h, f),
            p + "input_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
            p + "post_attention_layernorm.weight": torch.ones(h, dtype=torch.bfloat16),
        })  # fmt: skip
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


def _vocab_size(tokenizer_dir: Path) -> int:
    from transformers import AutoTokenizer

    return len(AutoTokenizer.from_pretrained(str(tokenizer_dir)))

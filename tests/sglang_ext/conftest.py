"""Shared set-up for tests that run SGLang's real scheduler-side classes on CPU."""

from __future__ import annotations

import pytest


def _tiny_llama_context(tmp_path_factory, mode: str, num_kv_heads: int, num_layers: int):
    """A published-like SGLang runtime context (`--disaggregation-mode mode`) from a weightless tiny Llama
    config; returns a callable giving the `use_context` context manager."""
    from sglang.srt.runtime_context import SpawnRanks, create_context, use_context
    from sglang.srt.server_args import prepare_server_args
    from transformers import LlamaConfig

    model_dir = tmp_path_factory.mktemp(f"tiny_llama_{mode}")
    LlamaConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=num_kv_heads,
                num_hidden_layers=num_layers, vocab_size=128, max_position_embeddings=64,
                architectures=["LlamaForCausalLM"]).save_pretrained(model_dir)  # fmt: skip
    server_args = prepare_server_args(["--model-path", str(model_dir), "--device", "cpu",
                                       "--disaggregation-mode", mode])  # fmt: skip
    ctx = create_context(server_args, role="scheduler", ranks=SpawnRanks(world_rank=0))
    return lambda: use_context(ctx)


@pytest.fixture(scope="session")
def tiny_llama_context():
    """`tiny_llama_context(tmp_path_factory, mode, num_kv_heads, num_layers)` -> a `use_context` factory."""
    return _tiny_llama_context

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


def _prefill_scheduler(args, slots: int, num_layers: int, num_kv_heads: int, head_dim: int):
    """The attributes `host_executor` and the prefill hooks read off SGLang's scheduler; the KV pool and its
    allocator are SGLang's own (CPU, fp32, page size 1)."""
    import types

    import torch
    from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
    from sglang.srt.mem_cache.memory_pool import MHATokenToKVPool

    kv = MHATokenToKVPool(slots, page_size=1, dtype=torch.float32, head_num=num_kv_heads, head_dim=head_dim,
                          layer_num=num_layers, device="cpu", enable_memory_saver=False)  # fmt: skip
    return types.SimpleNamespace(
        server_args=types.SimpleNamespace(_adrenaline=args),
        chunked_prefill_size=2048,  # SGLang's effective values live on the scheduler (None: chunking off)
        max_prefill_tokens=16384,
        token_to_kv_pool_allocator=TokenToKVPoolAllocator(slots, torch.float32, "cpu", kv, need_sort=False),
        disagg_prefill_inflight_queue=[],
    )


@pytest.fixture(scope="session")
def prefill_scheduler():
    """`prefill_scheduler(args, slots, num_layers, num_kv_heads, head_dim)` -> a scheduler stand-in over SGLang's
    real KV pool and allocator."""
    return _prefill_scheduler


class ReleasingClient:
    """An executor client that only records the releases decode sends it."""

    def __init__(self):
        self.released: list[str] = []

    def release(self, rid):
        self.released.append(rid)


@pytest.fixture
def releasing_offload():
    """(DecodeOffload installed as this process's, its one `ReleasingClient`); uninstalled afterwards."""
    from adrenaline_sgl.offload import decode_state

    client = ReleasingClient()
    state = decode_state.DecodeOffload(connect=lambda addr: client)
    decode_state.install(state)
    yield state, client
    decode_state.install(None)

"""The emulated KV pool in tokens, as the emulated GPU would hold it, and the SGLang flags it implies."""

import pytest

from adrenaline_sgl.emulate import pool
from adrenaline_sgl.emulate.config import EmulateConfig
from adrenaline_sgl.scheduler.specs import get_model


def test_a100_80g_llama2_13b_pool_is_the_spec_arithmetic():
    # Llama-2 13B: 40 layers x 40 KV heads x 128 dims x (K, V) x 2 bytes = 819,200 bytes per token.
    m = get_model("llama2-13b")
    assert m.kv_bytes_per_token == 40 * 40 * 128 * 2 * 2 == 819_200
    hbm = 80 * 1024**3
    expected = int((0.88 * hbm - m.weight_bytes) // 819_200)
    assert pool.kv_pool_tokens(EmulateConfig(gpu="a100-80g", model="llama2-13b")) == expected == 60_497


def test_pool_follows_the_memory_fraction_and_model():
    small = pool.kv_pool_tokens(EmulateConfig(gpu="a100-80g", model="llama2-13b", mem_fraction=0.6))
    assert small < 60_497
    assert pool.kv_pool_tokens(EmulateConfig(gpu="a100-80g", model="llama2-7b")) > 60_497  # smaller model


def test_chunked_prefill_size_is_sglangs_default_for_that_gpu():
    assert pool.chunked_prefill_size(EmulateConfig(gpu="a100-80g")) == 8192
    assert pool.chunked_prefill_size(EmulateConfig(gpu="h200", model="llama2-13b")) == 8192


def test_server_args_carry_pool_chunk_and_context():
    args = pool.server_args(EmulateConfig())
    assert args == ["--max-total-tokens", "60497", "--chunked-prefill-size", "8192", "--context-length", "4096"]
    assert set(args[::2]) <= set(pool.RESERVED_FLAGS)


def test_a_model_that_does_not_fit_is_refused():
    with pytest.raises(ValueError, match="KV tokens"):
        EmulateConfig(gpu="a100-80g", model="llama3-70b")


def test_an_explicit_pool_size_wins():
    assert pool.kv_pool_tokens(EmulateConfig(model="smollm2-135m", max_total_tokens=16384)) == 16384
    with pytest.raises(ValueError, match="max_total_tokens"):
        EmulateConfig(max_total_tokens=0)


def test_prefill_may_have_its_own_pool_and_a_given_pool_may_hold_less_than_a_context():
    """The real CPU experiment's pair: decode capped at 320 tokens, prefill 8192 (SGLang serves both)."""
    cfg = EmulateConfig(model="smollm2-135m", max_total_tokens=320, prefill_max_total_tokens=8192)
    assert (pool.kv_pool_tokens(cfg, "decode"), pool.kv_pool_tokens(cfg, "prefill")) == (320, 8192)
    assert pool.server_args(cfg, "prefill")[:2] == ["--max-total-tokens", "8192"]
    assert pool.server_args(cfg, "decode")[:2] == ["--max-total-tokens", "320"]
    assert pool.kv_pool_tokens(EmulateConfig(prefill_max_total_tokens=9000), "decode") == 60_497
    with pytest.raises(ValueError, match="prefill_max_total_tokens"):
        EmulateConfig(prefill_max_total_tokens=True)


def test_the_prefill_instance_is_sized_on_its_own_device():
    """`prefill_gpu`: prefill's pool and chunked prefill size come from its device, decode's from `gpu`."""
    cfg = EmulateConfig(gpu="a100-80g", prefill_gpu="h200", model="llama2-13b")
    assert pool.kv_pool_tokens(cfg, "decode") == 60_497 < pool.kv_pool_tokens(cfg, "prefill")
    assert pool.kv_pool_tokens(cfg, "prefill") == pool.kv_pool_tokens(EmulateConfig(gpu="h200"), "decode")
    cpu = EmulateConfig(gpu="cpu-epyc-1core-sgl", prefill_gpu="a100-80g", model="smollm2-135m", max_total_tokens=320)
    assert (pool.chunked_prefill_size(cpu, "decode"), pool.chunked_prefill_size(cpu, "prefill")) == (4096, 8192)

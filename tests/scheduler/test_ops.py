"""Operator work: FLOP and byte counts against hand-computed values."""

import pytest

from adrenaline_sgl.scheduler.ops import op_work
from adrenaline_sgl.scheduler.specs import get_model

M7 = get_model("llama2-7b")


def test_qkv_gemm_counts():
    w = op_work(M7, "qkv", "decode", 16)
    assert w.flops == 2 * 16 * 4096 * 3 * 4096
    assert w.min_bytes == 2 * (4096 * 12288 + 16 * (4096 + 12288))
    assert w.reread_bytes == 2 * 4096 * 12288


def test_ffn_counts_three_gemms_and_the_activation():
    w = op_work(M7, "ffn", "prefill", 10)
    assert w.flops == pytest.approx(2 * 10 * 4096 * 11008 * 3 + 4 * 10 * 11008)
    assert w.reread_bytes == 2 * 3 * 4096 * 11008


def test_prefill_attention_counts_the_causal_half():
    w = op_work(M7, "attn", "prefill", 1000)
    assert w.flops == pytest.approx(4 * 4096 * 1000 * 1000 / 2)
    two = op_work(M7, "attn", "prefill", 2000, num_seqs=2)
    assert two.flops == pytest.approx(2 * w.flops)


def test_decode_attention_reads_every_kv_token_once():
    w = op_work(M7, "attn", "decode", 4, context_tokens=4000, num_seqs=4)
    assert w.flops == 4 * 4096 * 4000
    kv_read = 4000 * 2 * 4096 * 2
    assert kv_read < w.min_bytes < kv_read * 1.01


def test_zero_tokens_is_no_work_and_bad_arguments_fail():
    assert op_work(M7, "ffn", "decode", 0).flops == 0.0
    with pytest.raises(ValueError, match="op must be one of"):
        op_work(M7, "lora", "decode", 1)
    with pytest.raises(ValueError, match="phase must be one of"):
        op_work(M7, "qkv", "verify", 1)
    with pytest.raises(ValueError, match="num_tokens"):
        op_work(M7, "qkv", "decode", -1)

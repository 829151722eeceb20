"""Native (compiled) kernels on an NVIDIA GPU: bf16 included, larger shapes, and SGLang's kernel if present."""

from __future__ import annotations

import pytest
import torch
from adrenaline_kernels import DecodeAttentionWrapper, append_kv, decode_attention_ref, merge_state, merge_state_ref
from adrenaline_kernels.inputs import make_decode_batch

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-4, torch.float16: 4e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("hq,hkv,d", [(32, 32, 128), (40, 40, 128), (32, 8, 128), (9, 3, 64), (64, 8, 128)])
def test_native_matches_reference(dtype, hq, hkv, d):
    batch = make_decode_batch([1, 511, 2048, 3000, 0, 77], hq, hkv, d, dtype, device="cuda", seed=1)
    wrapper = DecodeAttentionWrapper()
    wrapper.plan(batch.kv_indptr, batch.kv_indices, hq, hkv, d, dtype)
    o, lse = wrapper.run(batch.q, batch.k_buffer, batch.v_buffer)
    ref_o, ref_lse = decode_attention_ref(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices)
    finite = ~torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), ~finite)
    assert (o.float() - ref_o.float()).abs().max().item() <= TOL[dtype]
    assert (lse[finite] - ref_lse[finite]).abs().max().item() <= TOL[dtype]


@pytest.mark.parametrize("num_sms", [8, 32, 132])
def test_split_counts_do_not_change_results(num_sms):
    batch = make_decode_batch([4096, 100], 32, 8, 128, torch.float16, device="cuda", seed=2)
    wrapper = DecodeAttentionWrapper()
    wrapper.plan(batch.kv_indptr, batch.kv_indices, 32, 8, 128, torch.float16, num_sms=num_sms)
    o, lse = wrapper.run(batch.q, batch.k_buffer, batch.v_buffer)
    ref_o, ref_lse = decode_attention_ref(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices)
    assert (o.float() - ref_o.float()).abs().max().item() <= TOL[torch.float16]
    assert (lse - ref_lse).abs().max().item() <= TOL[torch.float16]


def test_merge_and_append_native():
    o_a, o_b = torch.randn(64, 32, 128, device="cuda").half(), torch.randn(64, 32, 128, device="cuda").half()
    lse_a, lse_b = torch.randn(64, 32, device="cuda"), torch.randn(64, 32, device="cuda")
    lse_a[0] = float("-inf")
    o, lse = merge_state(o_a, lse_a, o_b, lse_b)
    ref_o, ref_lse = merge_state_ref(o_a, lse_a, o_b, lse_b)
    torch.testing.assert_close(o, ref_o, atol=2e-3, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=1e-5, rtol=0)
    k_buf = torch.zeros(1000, 8, 128, device="cuda", dtype=torch.bfloat16)
    v_buf = torch.zeros_like(k_buf)
    slots = torch.randperm(1000, device="cuda")[:64].int()
    k_new = torch.randn(64, 8, 128, device="cuda", dtype=torch.bfloat16)
    append_kv(k_buf, v_buf, slots, k_new, -k_new)
    assert torch.equal(k_buf[slots.long()], k_new) and torch.equal(v_buf[slots.long()], -k_new)

"""decode_attention (Triton; the interpreter on CPU) against the torch reference on a grid of named cases."""

from __future__ import annotations

import zlib

import pytest
import torch
from adrenaline_kernels import DecodeAttentionWrapper, decode_attention, decode_attention_ref
from adrenaline_kernels.inputs import make_decode_batch

# Max abs error allowed on o (inputs ~ N(0, 1), so |o| <= ~3) and on lse (natural log), per dtype.
# fp16 o is rounded to fp16 (ulp 2^-10 near 1) and the P.V dot takes p in fp16; bf16 has an 8-bit mantissa.
TOL = {
    torch.float32: dict(o=2e-5, lse=2e-5),
    torch.float16: dict(o=4e-3, lse=2e-3),
    torch.bfloat16: dict(o=3e-2, lse=2e-2),
}

# name: (seq_lens, Hq, Hkv, head_dim, plan kwargs)
CASES = {
    "length_1": ([1], 4, 4, 64, {}),
    "mha_group_1": ([17, 64], 4, 4, 64, {}),
    "group_3_not_block_multiple": ([65, 130, 7], 9, 3, 64, {}),
    "group_4": ([33, 100], 8, 2, 64, {}),
    "group_8_mqa_like": ([50], 8, 1, 64, {}),
    "head_dim_128": ([70, 3], 8, 2, 128, {}),
    "head_dim_80_not_pow2": ([20], 4, 2, 80, {}),
    "empty_request_in_batch": ([0, 20, 0], 4, 2, 64, {}),
    "more_splits_than_tokens": ([3, 5], 4, 2, 64, dict(num_splits=8)),
    "forced_splits_uneven": ([200, 9], 6, 2, 64, dict(num_splits=3)),
    "auto_splits_many_sms": ([300, 40], 4, 2, 64, dict(num_sms=64)),
    "custom_sm_scale": ([31], 6, 3, 64, dict(sm_scale=0.3)),
}


def _check(batch, dtype, o, lse, sm_scale=None):
    ref_o, ref_lse = decode_attention_ref(
        batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices, sm_scale=sm_scale
    )
    assert o.dtype == dtype and o.shape == batch.q.shape
    assert lse.dtype == torch.float32 and lse.shape == batch.q.shape[:2]
    assert not o.isnan().any() and not lse.isnan().any()
    empty = torch.isneginf(ref_lse)
    assert torch.equal(torch.isneginf(lse), empty), "lse must be -inf exactly for requests without KV"
    assert (o[empty[:, 0]] == 0).all(), "a request without KV must give o = 0"
    tol = TOL[dtype]
    err_o = (o.float() - ref_o.float()).abs().max().item() if o.numel() else 0.0
    err_lse = (lse[~empty] - ref_lse[~empty]).abs().max().item() if (~empty).any() else 0.0
    assert err_o <= tol["o"], f"max |o - ref| = {err_o:.3g} > {tol['o']}"
    assert err_lse <= tol["lse"], f"max |lse - ref| = {err_lse:.3g} > {tol['lse']}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", list(CASES))
def test_decode_attention_matches_reference(case, dtype):
    seq_lens, hq, hkv, d, kwargs = CASES[case]
    batch = make_decode_batch(seq_lens, hq, hkv, d, dtype, seed=zlib.crc32(case.encode()) % 1000)
    wrapper = DecodeAttentionWrapper()
    plan = wrapper.plan(batch.kv_indptr, batch.kv_indices, hq, hkv, d, dtype, **kwargs)
    if "num_splits" in kwargs:
        assert plan.splits_per_request == (kwargs["num_splits"],) * len(seq_lens)
    o, lse = wrapper.run(batch.q, batch.k_buffer, batch.v_buffer)
    _check(batch, dtype, o, lse, sm_scale=kwargs.get("sm_scale"))


def test_auto_splits_really_split():
    """The many-SM case above must exercise stage 2 with several splits, or it tests nothing new."""
    batch = make_decode_batch(*CASES["auto_splits_many_sms"][:4])
    plan = DecodeAttentionWrapper().plan(batch.kv_indptr, batch.kv_indices, 4, 2, 64, torch.float32, num_sms=64)
    assert plan.splits_per_request[0] >= 2


@pytest.mark.parametrize("case", ["group_3_not_block_multiple", "more_splits_than_tokens"])
def test_bf16_interpreter_upcast(case):
    """bf16 takes the fp32-dot path under the interpreter (its bf16 tl.dot is wrong); natively on GPUs."""
    seq_lens, hq, hkv, d, kwargs = CASES[case]
    batch = make_decode_batch(seq_lens, hq, hkv, d, torch.bfloat16, seed=7)
    wrapper = DecodeAttentionWrapper()
    wrapper.plan(batch.kv_indptr, batch.kv_indices, hq, hkv, d, torch.bfloat16, **kwargs)
    o, lse = wrapper.run(batch.q, batch.k_buffer, batch.v_buffer)
    _check(batch, torch.bfloat16, o, lse)


def test_empty_batch():
    batch = make_decode_batch([], 4, 2, 64)
    o, lse = decode_attention(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices)
    assert o.shape == (0, 4, 64) and lse.shape == (0, 4)


def test_slots_at_pool_edges_and_reversed():
    """Slot 0, the last slot and a descending order: no assumption of contiguity or order."""
    batch = make_decode_batch([5, 4], 6, 3, 64, num_slots=40)
    indices = torch.tensor([39, 0, 20, 1, 38, 37, 36, 35, 34], dtype=torch.int32)
    o, lse = decode_attention(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, indices, num_sms=8)
    ref_o, ref_lse = decode_attention_ref(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, indices)
    torch.testing.assert_close(o, ref_o, atol=TOL[torch.float32]["o"], rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=TOL[torch.float32]["lse"], rtol=0)


def test_plan_reused_across_layers_and_strided_pool():
    """One plan, two layers; each layer's pool is a strided view of a [L, num_slots, Hkv, D] tensor like a
    per-layer slice of a bigger buffer, and out=/lse_out= are written in place."""
    batch = make_decode_batch([40, 9], 8, 2, 64, torch.float16, seed=3)
    pool = torch.randn(2, batch.k_buffer.shape[0], 2, 2, 64, dtype=torch.float16)  # [L, slots, k|v, Hkv, D]
    wrapper = DecodeAttentionWrapper()
    wrapper.plan(batch.kv_indptr, batch.kv_indices, 8, 2, 64, torch.float16, num_splits=2)
    out = torch.empty_like(batch.q)
    lse_out = torch.empty(2, 8)
    for layer in range(2):
        k, v = pool[layer, :, 0], pool[layer, :, 1]  # [slots, Hkv, D], slot stride 2 * Hkv * D
        assert not k.is_contiguous()
        o, lse = wrapper.run(batch.q, k, v, out=out, lse_out=lse_out)
        assert o.data_ptr() == out.data_ptr() and lse.data_ptr() == lse_out.data_ptr()
        ref_o, ref_lse = decode_attention_ref(batch.q, k, v, batch.kv_indptr, batch.kv_indices)
        torch.testing.assert_close(o.float(), ref_o.float(), atol=TOL[torch.float16]["o"], rtol=0)
        torch.testing.assert_close(lse, ref_lse, atol=TOL[torch.float16]["lse"], rtol=0)


def test_host_seq_lens_plan_matches_and_q_as_fused_qkv_view():
    """The executor's path: lengths known on the host (no device read-back), q a strided slice of a fused
    qkv projection `[B, (Hq + 2 Hkv) * D]`."""
    batch = make_decode_batch([37, 0, 90], 6, 2, 64, torch.float16, seed=9)
    qkv = torch.randn(3, (6 + 2 * 2) * 64, dtype=torch.float16)
    qkv[:, : 6 * 64] = batch.q.reshape(3, -1)
    q = qkv[:, : 6 * 64].view(3, 6, 64)  # row stride (6 + 4) * 64: not contiguous
    assert not q.is_contiguous()
    wrapper = DecodeAttentionWrapper()
    plan = wrapper.plan(batch.kv_indptr, batch.kv_indices, 6, 2, 64, torch.float16, seq_lens=[37, 0, 90])
    assert plan.max_slot == -1  # unchecked: the caller vouched for the slots
    o, lse = wrapper.run(q, batch.k_buffer, batch.v_buffer)
    _check(batch, torch.float16, o, lse)

"""append_kv writes one step's k, v into the pool; attention then sees the new token."""

from __future__ import annotations

import pytest
import torch
from adrenaline_kernels import append_kv, append_kv_ref, decode_attention, decode_attention_ref
from adrenaline_kernels.inputs import make_decode_batch


@pytest.mark.parametrize("slot_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_matches_reference_and_touches_nothing_else(dtype, slot_dtype):
    gen = torch.Generator().manual_seed(0)
    k_buf = torch.randn(30, 3, 96, generator=gen).to(dtype)  # head_dim 96: masked tail in the kernel
    v_buf = torch.randn(30, 3, 96, generator=gen).to(dtype)
    slots = torch.tensor([29, 0, 13, 7], dtype=slot_dtype)
    k_new = torch.randn(4, 3, 96, generator=gen).to(dtype)
    v_new = torch.randn(4, 3, 96, generator=gen).to(dtype)
    k_ref, v_ref = k_buf.clone(), v_buf.clone()
    append_kv(k_buf, v_buf, slots, k_new, v_new)
    append_kv_ref(k_ref, v_ref, slots, k_new, v_new)
    assert torch.equal(k_buf, k_ref) and torch.equal(v_buf, v_ref)
    assert torch.equal(k_buf[slots.long()], k_new)


def test_append_then_attend_sees_the_new_token():
    """A decode step as the executor runs it: append at fresh slots, extend indices, attend."""
    batch = make_decode_batch([10, 4], 6, 2, 64, num_slots=20, seed=2)
    free = sorted(set(range(20)) - set(batch.kv_indices.tolist()))  # 6 of the 20 slots are unused
    new_slots = torch.tensor(free[:2], dtype=torch.int32)
    k_new, v_new = torch.randn(2, 2, 64) * 3, torch.randn(2, 2, 64)
    append_kv(batch.k_buffer, batch.v_buffer, new_slots, k_new, v_new)
    idx = batch.kv_indices
    indices = torch.cat([idx[:10], new_slots[:1], idx[10:], new_slots[1:]])
    indptr = torch.tensor([0, 11, 16], dtype=torch.int32)
    o, lse = decode_attention(batch.q, batch.k_buffer, batch.v_buffer, indptr, indices)
    ref_o, ref_lse = decode_attention_ref(batch.q, batch.k_buffer, batch.v_buffer, indptr, indices)
    torch.testing.assert_close(o, ref_o, atol=2e-5, rtol=0)
    torch.testing.assert_close(lse, ref_lse, atol=2e-5, rtol=0)
    old_o, _ = decode_attention_ref(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices)
    assert (o - old_o).abs().max() > 1e-3, "the appended token must change the output"


def test_new_kv_as_views_of_a_fused_projection():
    """k_new, v_new sliced out of one `[N, (Hq + 2 Hkv) * D]` qkv tensor, as the executor receives them."""
    qkv = torch.randn(3, (4 + 2 * 2) * 64)
    k_new = qkv[:, 4 * 64 : 6 * 64].view(3, 2, 64)
    v_new = qkv[:, 6 * 64 :].view(3, 2, 64)
    k_buf, v_buf = torch.zeros(10, 2, 64), torch.zeros(10, 2, 64)
    slots = torch.tensor([9, 2, 5])
    append_kv(k_buf, v_buf, slots, k_new, v_new)
    assert torch.equal(k_buf[slots], k_new) and torch.equal(v_buf[slots], v_new)
    assert (k_buf[[0, 1, 3, 4, 6, 7, 8]] == 0).all()


def test_zero_rows_is_a_no_op():
    k_buf, v_buf = torch.zeros(4, 1, 64), torch.zeros(4, 1, 64)
    append_kv(k_buf, v_buf, torch.empty(0, dtype=torch.int32), torch.empty(0, 1, 64), torch.empty(0, 1, 64))
    assert (k_buf == 0).all() and (v_buf == 0).all()

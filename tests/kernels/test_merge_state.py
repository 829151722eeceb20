"""merge_state: exactness of the LSE merge, the empty-side contract, and agreement with SGLang's merge."""

from __future__ import annotations

import pytest
import torch
from adrenaline_kernels import decode_attention, merge_state, merge_state_ref
from adrenaline_kernels.inputs import make_decode_batch

NEG_INF = float("-inf")


def _split_batch(batch, cut: list[int]):
    """Two index sets over the same pool: request b's first cut[b] tokens, and the rest."""
    ptr = batch.kv_indptr.tolist()
    firsts, rests = [], []
    for b, c in enumerate(cut):
        slots = batch.kv_indices[ptr[b] : ptr[b + 1]]
        firsts.append(slots[:c])
        rests.append(slots[c:])

    def pack(parts):
        lens = torch.tensor([0] + [len(p) for p in parts])
        return torch.cumsum(lens, 0).to(torch.int32), torch.cat(parts).to(torch.int32)

    return pack(firsts), pack(rests)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float16, 4e-3)], ids=["fp32", "fp16"])
def test_merging_two_halves_equals_whole(dtype, tol):
    """Request 0 split in the middle, request 1 wholly on side a, request 2 wholly on side b (empty a)."""
    batch = make_decode_batch([50, 33, 20], 8, 2, 64, dtype, seed=5)
    (ptr_a, idx_a), (ptr_b, idx_b) = _split_batch(batch, cut=[25, 33, 0])
    args = (batch.q, batch.k_buffer, batch.v_buffer)
    o_a, lse_a = decode_attention(*args, ptr_a, idx_a)
    o_b, lse_b = decode_attention(*args, ptr_b, idx_b)
    assert torch.isneginf(lse_b[1]).all() and torch.isneginf(lse_a[2]).all()
    o, lse = merge_state(o_a, lse_a, o_b, lse_b)
    whole_o, whole_lse = decode_attention(*args, batch.kv_indptr, batch.kv_indices)
    assert (o.float() - whole_o.float()).abs().max().item() <= tol
    assert (lse - whole_lse).abs().max().item() <= tol


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
def test_matches_reference_with_empty_sides(dtype):
    gen = torch.Generator().manual_seed(0)
    t, h, d = 6, 3, 80  # head_dim not a power of two
    o_a, o_b = (torch.randn(t, h, d, generator=gen).to(dtype) for _ in range(2))
    lse_a, lse_b = (torch.randn(t, h, generator=gen) * 4 for _ in range(2))
    lse_a[0] = NEG_INF  # a empty
    lse_b[1] = NEG_INF  # b empty
    lse_a[2] = lse_b[2] = NEG_INF  # both empty
    o_a[0] = float("nan")  # the o of an empty side is never read into the result
    lse_b[3] = float("inf")  # +inf also means empty (SGLang's convention)
    o, lse = merge_state(o_a, lse_a, o_b, lse_b)
    ref_o, ref_lse = merge_state_ref(o_a, lse_a, o_b, lse_b)
    assert not o.isnan().any() and not lse.isnan().any()
    assert o.dtype == dtype and lse.dtype == torch.float32
    torch.testing.assert_close(o[0], o_b[0], atol=0, rtol=0)
    torch.testing.assert_close(o[1], o_a[1], atol=0, rtol=0)
    assert (o[2] == 0).all() and torch.isneginf(lse[2]).all()
    torch.testing.assert_close(lse[3], lse_a[3])
    # Both round the same fp32 value to the output dtype: allow 2 ulps of it (relative), 1e-6 absolute.
    rtol = {torch.float32: 1e-6, torch.float16: 2**-9, torch.bfloat16: 2**-6}[dtype]
    torch.testing.assert_close(o.float(), ref_o.float(), atol=1e-6, rtol=rtol)
    torch.testing.assert_close(lse, ref_lse, atol=1e-6, rtol=0)


def test_empty_tokens():
    o, lse = merge_state(torch.empty(0, 2, 64), torch.empty(0, 2), torch.empty(0, 2, 64), torch.empty(0, 2))
    assert o.shape == (0, 2, 64) and lse.shape == (0, 2)


def test_matches_sglang_merge_state_triton():
    sglang_merge = pytest.importorskip("sglang.kernels.ops.attention.merge_state", reason="sglang not installed")
    gen = torch.Generator().manual_seed(1)
    o_a, o_b = (torch.randn(5, 4, 64, generator=gen) for _ in range(2))
    lse_a, lse_b = (torch.randn(5, 4, generator=gen) for _ in range(2))
    o, lse = merge_state(o_a, lse_a, o_b, lse_b)
    sg_o, sg_lse = sglang_merge.merge_state_triton(o_a, lse_a, o_b, lse_b)
    torch.testing.assert_close(o, sg_o, atol=1e-6, rtol=0)
    torch.testing.assert_close(lse, sg_lse, atol=1e-6, rtol=0)

"""Raw Triton kernels for split-KV (flash-decoding) decode attention. No checks here: see `decode.py`.

Stage 1, grid (B, Hkv * HEAD_TILES, max_splits): one program reads one split of one request's KV for one
KV head and the BLOCK_H query heads of its group that fall in its head tile, and writes the split's
partial output (already normalized) and its LSE. Stage 2, grid (B, Hq): LSE-merges the non-empty splits.

Split s of a request of length L with S splits covers tokens [s * P, min((s + 1) * P, L)) where
P = cdiv(cdiv(L, S), BLOCK_N) * BLOCK_N; splits past the end are empty and skipped by both stages.
All softmax math is float32 and natural log (exp, not exp2), so the LSE needs no conversion.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _split_bounds(seq_len, n_splits, split_id, BLOCK_N: tl.constexpr):
    """Token range [lo, hi) of split `split_id` (empty when hi <= lo)."""
    split_len = tl.cdiv(tl.cdiv(seq_len, n_splits), BLOCK_N) * BLOCK_N
    lo = split_id * split_len
    hi = tl.minimum(lo + split_len, seq_len)
    return lo, hi


@triton.jit
def split_kv_stage1_kernel(
    Q,  # [B, Hq, D]
    K_Buffer,  # [num_slots, Hkv, D]
    V_Buffer,  # [num_slots, Hkv, D]
    kv_indptr,  # [B + 1] int32
    kv_indices,  # [nnz] int32 token slots
    num_splits,  # [B] int32, >= 1
    Mid_O,  # [B, Hq, max_splits, D] float32
    Mid_Lse,  # [B, Hq, max_splits] float32
    sm_scale,
    stride_qb,
    stride_qh,
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_mob,
    stride_moh,
    stride_mos,
    stride_mlb,
    stride_mlh,
    GROUP: tl.constexpr,  # Hq // Hkv
    HEAD_TILES: tl.constexpr,  # cdiv(GROUP, BLOCK_H) programs per KV head
    HEAD_DIM: tl.constexpr,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
    DOT_FP32: tl.constexpr,  # upcast both dots to fp32 (fp32 KV; bf16 under the interpreter)
):
    b = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    split_id = tl.program_id(2)

    n_splits = tl.load(num_splits + b)
    kv_start = tl.load(kv_indptr + b)
    seq_len = tl.load(kv_indptr + b + 1) - kv_start
    lo, hi = _split_bounds(seq_len, n_splits, split_id, BLOCK_N)
    if (split_id < n_splits) & (hi > lo):
        kv_head = tile // HEAD_TILES
        h_in_group = (tile % HEAD_TILES) * BLOCK_H + tl.arange(0, BLOCK_H)  # [BLOCK_H]
        mask_h = h_in_group < GROUP
        heads = kv_head * GROUP + h_in_group  # [BLOCK_H] query heads
        offs_d = tl.arange(0, BLOCK_D)
        mask_d = offs_d < HEAD_DIM

        q = tl.load(
            Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :],
            mask=mask_h[:, None] & mask_d[None, :],
            other=0.0,
        )  # [BLOCK_H, BLOCK_D]
        if DOT_FP32:
            q = q.to(tl.float32)

        m_i = tl.zeros([BLOCK_H], dtype=tl.float32) - float("inf")
        l_i = tl.zeros([BLOCK_H], dtype=tl.float32)
        acc = tl.zeros([BLOCK_H, BLOCK_D], dtype=tl.float32)
        k_base = K_Buffer + kv_head * stride_kh
        v_base = V_Buffer + kv_head * stride_vh
        for start_n in tl.range(lo, hi, BLOCK_N):
            offs_n = start_n + tl.arange(0, BLOCK_N)
            mask_n = offs_n < hi
            # NOTE: int64 slots so slot * stride cannot overflow on pools over 2**31 elements.
            slot = tl.load(kv_indices + kv_start + offs_n, mask=mask_n, other=0).to(tl.int64)  # [BLOCK_N]
            k = tl.load(
                k_base + slot[None, :] * stride_kn + offs_d[:, None],
                mask=mask_n[None, :] & mask_d[:, None],
                other=0.0,
            )  # [BLOCK_D, BLOCK_N]
            v = tl.load(
                v_base + slot[:, None] * stride_vn + offs_d[None, :],
                mask=mask_n[:, None] & mask_d[None, :],
                other=0.0,
            )  # [BLOCK_N, BLOCK_D]
            if DOT_FP32:
                qk = tl.dot(q, k.to(tl.float32), input_precision="ieee")
            else:
                qk = tl.dot(q, k)
            qk = qk * sm_scale  # [BLOCK_H, BLOCK_N] float32
            qk = tl.where(mask_n[None, :], qk, float("-inf"))
            # Every block holds at least one valid token (start_n < hi), so m_new is finite.
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(qk - m_new[:, None])  # [BLOCK_H, BLOCK_N]
            if DOT_FP32:
                pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            l_i = l_i * alpha + tl.sum(p, 1)
            m_i = m_new

        tl.store(
            Mid_O + b * stride_mob + heads[:, None] * stride_moh + split_id * stride_mos + offs_d[None, :],
            acc / l_i[:, None],
            mask=mask_h[:, None] & mask_d[None, :],
        )
        tl.store(Mid_Lse + b * stride_mlb + heads * stride_mlh + split_id, m_i + tl.log(l_i), mask=mask_h)


@triton.jit
def split_kv_stage2_kernel(
    Mid_O,  # [B, Hq, max_splits, D] float32
    Mid_Lse,  # [B, Hq, max_splits] float32
    kv_indptr,  # [B + 1] int32
    num_splits,  # [B] int32
    Out,  # [B, Hq, D] in q's dtype
    Out_Lse,  # [B, Hq] float32
    stride_mob,
    stride_moh,
    stride_mos,
    stride_mlb,
    stride_mlh,
    stride_ob,
    stride_oh,
    stride_lb,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    n_splits = tl.load(num_splits + b)
    seq_len = tl.load(kv_indptr + b + 1) - tl.load(kv_indptr + b)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM

    m_i = -float("inf")
    l_i = 0.0
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    for split_id in tl.range(0, n_splits):
        lo, hi = _split_bounds(seq_len, n_splits, split_id, BLOCK_N)
        if hi > lo:
            lse_s = tl.load(Mid_Lse + b * stride_mlb + h * stride_mlh + split_id)
            o_s = tl.load(
                Mid_O + b * stride_mob + h * stride_moh + split_id * stride_mos + offs_d, mask=mask_d, other=0.0
            )
            m_new = tl.maximum(m_i, lse_s)  # finite: lse_s is finite for a non-empty split
            alpha = tl.exp(m_i - m_new)
            w = tl.exp(lse_s - m_new)
            acc = acc * alpha + w * o_s
            l_i = l_i * alpha + w
            m_i = m_new

    # An empty request (seq_len 0) leaves l_i = 0: write the neutral state (o = 0, lse = -inf), not NaN.
    nonempty = l_i > 0
    o = tl.where(nonempty, acc / tl.where(nonempty, l_i, 1.0), 0.0)
    lse = tl.where(nonempty, m_i + tl.log(tl.where(nonempty, l_i, 1.0)), -float("inf"))
    tl.store(Out + b * stride_ob + h * stride_oh + offs_d, o, mask=mask_d)
    tl.store(Out_Lse + b * stride_lb + h, lse)

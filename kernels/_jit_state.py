"""Raw Triton kernels for attention-state merging and KV appends. No checks here: see merge.py, append.py."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def merge_state_kernel(
    O_A,  # [T, H, D]
    Lse_A,  # [T, H] float32, natural log
    O_B,  # [T, H, D]
    Lse_B,  # [T, H] float32
    Out,  # [T, H, D] in O_A's dtype
    Out_Lse,  # [T, H] float32
    stride_oat,
    stride_oah,
    stride_lat,
    stride_lah,
    stride_obt,
    stride_obh,
    stride_lbt,
    stride_lbh,
    stride_ot,
    stride_oh,
    stride_lt,
    stride_lh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    la = tl.load(Lse_A + t * stride_lat + h * stride_lah)
    lb = tl.load(Lse_B + t * stride_lbt + h * stride_lbh)
    # +inf marks an empty state in some kernels (SGLang's merge_state_triton maps it the same way).
    la = tl.where(la == float("inf"), -float("inf"), la)
    lb = tl.where(lb == float("inf"), -float("inf"), lb)
    m = tl.maximum(la, lb)
    # NOTE: an empty side has lse = -inf. Shift by 0 when both are empty so no exp(-inf - -inf) = NaN.
    m = tl.where(m == -float("inf"), 0.0, m)
    wa = tl.exp(la - m)
    wb = tl.exp(lb - m)
    s = wa + wb
    inv = tl.where(s > 0, 1.0 / tl.where(s > 0, s, 1.0), 0.0)
    oa = tl.load(O_A + t * stride_oat + h * stride_oah + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    ob = tl.load(O_B + t * stride_obt + h * stride_obh + offs_d, mask=mask_d, other=0.0).to(tl.float32)
    # Weights of an empty side are exactly 0; select instead of multiplying so an unset o (NaN) is ignored.
    o = tl.where(wa > 0, oa * (wa * inv), 0.0) + tl.where(wb > 0, ob * (wb * inv), 0.0)
    tl.store(Out + t * stride_ot + h * stride_oh + offs_d, o, mask=mask_d)
    lse = tl.where(s > 0, m + tl.log(tl.where(s > 0, s, 1.0)), -float("inf"))  # no log(0) warning
    tl.store(Out_Lse + t * stride_lt + h * stride_lh, lse)


@triton.jit
def append_kv_kernel(
    K_Buffer,  # [num_slots, Hkv, D]
    V_Buffer,  # [num_slots, Hkv, D]
    slots,  # [N] int32 or int64
    K_New,  # [N, Hkv, D]
    V_New,  # [N, Hkv, D]
    stride_kn,
    stride_kh,
    stride_vn,
    stride_vh,
    stride_knn,
    stride_knh,
    stride_vnn,
    stride_vnh,
    HEAD_DIM: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    i = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    slot = tl.load(slots + i).to(tl.int64)
    k = tl.load(K_New + i * stride_knn + h * stride_knh + offs_d, mask=mask_d)
    v = tl.load(V_New + i * stride_vnn + h * stride_vnh + offs_d, mask=mask_d)
    tl.store(K_Buffer + slot * stride_kn + h * stride_kh + offs_d, k, mask=mask_d)
    tl.store(V_Buffer + slot * stride_vn + h * stride_vh + offs_d, v, mask=mask_d)

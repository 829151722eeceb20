"""Plain-torch references for the kernels: the ground truth the tests compare against.

Attention-state contract (shared with the offload runtime and SGLang's `merge_state_triton`):
o `[T, H, D]` in the query dtype, lse `[T, H]` float32, **natural log**. A state over zero KV tokens is
(o = 0, lse = -inf); merging it with any state gives that state back. FlashInfer LSEs are base 2: convert
at the boundary (`lse_e = lse_2 * ln 2`), never here.

Everything is computed in float32 and cast back, so these are slow but exact up to fp32 rounding.
"""

from __future__ import annotations

import math

import torch


def decode_attention_ref(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    sm_scale: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode attention of one query token per request over its KV token slots.

    q `[B, Hq, D]`; k_buffer, v_buffer `[num_slots, Hkv, D]`; kv_indptr `[B+1]`; kv_indices
    `[kv_indptr[-1]]` token slots, request b owns `kv_indices[kv_indptr[b]:kv_indptr[b+1]]` in order.
    Query head h reads KV head `h // (Hq // Hkv)` (SGLang's GQA layout).
    Returns o `[B, Hq, D]` in q.dtype and lse `[B, Hq]` float32 (natural log; -inf for an empty request).
    """
    batch, num_qo_heads, head_dim = q.shape
    num_kv_heads = k_buffer.shape[1]
    group = num_qo_heads // num_kv_heads
    scale = 1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale)
    o = torch.zeros(batch, num_qo_heads, head_dim, dtype=torch.float32, device=q.device)
    lse = torch.full((batch, num_qo_heads), float("-inf"), dtype=torch.float32, device=q.device)
    indptr = kv_indptr.tolist()
    for b in range(batch):
        slots = kv_indices[indptr[b] : indptr[b + 1]].long()
        if slots.numel() == 0:
            continue
        k = k_buffer[slots].float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        v = v_buffer[slots].float().repeat_interleave(group, dim=1)  # [L, Hq, D]
        logits = torch.einsum("hd,lhd->hl", q[b].float(), k) * scale  # [Hq, L]
        lse[b] = torch.logsumexp(logits, dim=-1)
        o[b] = torch.einsum("hl,lhd->hd", torch.softmax(logits, dim=-1), v)
    return o.to(q.dtype), lse


def merge_state_ref(
    o_a: torch.Tensor, lse_a: torch.Tensor, o_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine two attention states over disjoint KV sets: o `[T, H, D]`, lse `[T, H]` natural log.

    Returns (o `[T, H, D]` in o_a.dtype, lse `[T, H]` float32). Empty sides (lse = -inf, or +inf as some
    kernels write it) get weight 0, whatever their o holds; both empty gives (0, -inf), never NaN.
    """
    la, lb = lse_a.float(), lse_b.float()
    # +inf marks an empty state in some kernels (SGLang's merge_state_triton maps it the same way).
    la = torch.where(torch.isposinf(la), torch.full_like(la, float("-inf")), la)
    lb = torch.where(torch.isposinf(lb), torch.full_like(lb, float("-inf")), lb)
    m = torch.maximum(la, lb)  # [T, H]
    m_safe = torch.where(torch.isneginf(m), torch.zeros_like(m), m)
    wa, wb = torch.exp(la - m_safe), torch.exp(lb - m_safe)  # [T, H], 0 where the side is empty
    s = wa + wb
    s_safe = torch.where(s > 0, s, torch.ones_like(s))
    part_a = torch.where((wa > 0)[..., None], o_a.float() * (wa / s_safe)[..., None], 0.0)
    part_b = torch.where((wb > 0)[..., None], o_b.float() * (wb / s_safe)[..., None], 0.0)
    o = (part_a + part_b).to(o_a.dtype)
    lse = m_safe + torch.log(s)  # log(0) = -inf for two empty sides
    return o, lse


def append_kv_ref(
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
) -> None:
    """Write one decode step's new k, v `[N, Hkv, D]` into pool rows `slots` `[N]` in place."""
    idx = slots.long()
    k_buffer[idx] = k_new.to(k_buffer.dtype)
    v_buffer[idx] = v_new.to(v_buffer.dtype)

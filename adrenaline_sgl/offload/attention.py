"""Which decode-attention implementation the executor runs, picked by name (`reference` | `triton` | `auto`).

Both come from `adrenaline_kernels` (never a copy here) and are used the same way:
    append_kv(k_buffer, v_buffer, slots [N], k_new [N, Hkv, D], v_new [N, Hkv, D]) -> None   (in place)
    plan(kv_indptr [B+1] int32, kv_indices [nnz] int32, num_q_heads, num_kv_heads, head_dim, dtype,
         sm_scale, num_sms) -> plan                                once per decode step (may sync the host)
    run(plan, q [B, Hq, D], k_buffer, v_buffer) -> (o [B, Hq, D] q.dtype, lse [B, Hq] float32, natural log)
                                                                   once per layer (no sync, no allocation)

`auto` is the Triton kernel where a GPU is present and the torch reference elsewhere: on CPU the Triton
interpreter needs about 0.5 s per call, far too slow for a 30-layer model decoding 32 tokens (about 2,000
calls). Creators import lazily so that choosing one never imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

ATTENTION_CHOICES = ("auto", "reference", "triton")


@dataclass(frozen=True)
class AttentionOps:
    name: str
    append_kv: Callable[..., None]
    plan: Callable[..., Any]
    run: Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _reference() -> AttentionOps:
    from adrenaline_kernels.reference import append_kv_ref, decode_attention_ref

    def plan(kv_indptr, kv_indices, num_q_heads, num_kv_heads, head_dim, dtype, sm_scale, num_sms):
        return kv_indptr, kv_indices, sm_scale

    def run(plan, q, k_buffer, v_buffer):
        kv_indptr, kv_indices, sm_scale = plan
        return decode_attention_ref(q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale=sm_scale)

    return AttentionOps("reference", append_kv_ref, plan, run)


def _triton() -> AttentionOps:
    from adrenaline_kernels import append_kv, plan_decode_attention, run_decode_attention

    def append(k_buffer, v_buffer, slots, k_new, v_new):
        # NOTE: slots come from our allocator, always in range: skip the kernel's host-side bounds check.
        append_kv(k_buffer, v_buffer, slots, k_new, v_new, check_bounds=False)

    def plan(kv_indptr, kv_indices, num_q_heads, num_kv_heads, head_dim, dtype, sm_scale, num_sms):
        return plan_decode_attention(kv_indptr, kv_indices, num_q_heads, num_kv_heads, head_dim, dtype,
                                     num_sms=num_sms, sm_scale=sm_scale)

    return AttentionOps("triton", append, plan, run_decode_attention)


_CREATORS: dict[str, Callable[[], AttentionOps]] = {"reference": _reference, "triton": _triton}


def resolve_attention(name: str) -> AttentionOps:
    """The ops for `name`; `auto` becomes `triton` with a GPU and `reference` without."""
    if name not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {name!r}")
    if name == "auto":
        name = "triton" if torch.cuda.is_available() else "reference"
    return _CREATORS[name]()

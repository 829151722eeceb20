"""Which decode-attention implementation the executor runs, picked by name (`reference` | `triton` | `auto`).

Both come from `adrenaline_kernels` (never a copy here) and share one contract:
    append_kv(k_buffer, v_buffer, slots [N], k_new [N, Hkv, D], v_new [N, Hkv, D]) -> None   (in place)
    decode_attention(q [B, Hq, D], k_buffer, v_buffer, kv_indptr [B+1], kv_indices [nnz], sm_scale)
        -> (o [B, Hq, D] in q.dtype, lse [B, Hq] float32, natural log)

`auto` is the Triton kernel where a GPU is present and the torch reference elsewhere: on CPU the Triton
interpreter needs about 0.5 s per call, far too slow for a 30-layer model decoding 32 tokens (about 2,000
calls). Creators import lazily so that choosing one never imports the other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

ATTENTION_CHOICES = ("auto", "reference", "triton")


@dataclass(frozen=True)
class AttentionOps:
    name: str
    append_kv: Callable[..., None]
    decode_attention: Callable[..., tuple[torch.Tensor, torch.Tensor]]


def _reference() -> AttentionOps:
    from adrenaline_kernels.reference import append_kv_ref, decode_attention_ref

    def decode(q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale):
        return decode_attention_ref(q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale=sm_scale)

    return AttentionOps("reference", append_kv_ref, decode)


def _triton() -> AttentionOps:
    import adrenaline_kernels as ak

    if not hasattr(ak, "decode_attention") or not hasattr(ak, "append_kv"):
        raise ImportError("adrenaline_kernels has no Triton decode_attention/append_kv yet; use attention='reference'")

    def decode(q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale):
        return ak.decode_attention(q, k_buffer, v_buffer, kv_indptr, kv_indices, sm_scale=sm_scale)

    return AttentionOps("triton", ak.append_kv, decode)


_CREATORS: dict[str, Callable[[], AttentionOps]] = {"reference": _reference, "triton": _triton}


def resolve_attention(name: str) -> AttentionOps:
    """The ops for `name`; `auto` becomes `triton` with a GPU and `reference` without."""
    if name not in ATTENTION_CHOICES:
        raise ValueError(f"attention must be one of {ATTENTION_CHOICES}, got {name!r}")
    if name == "auto":
        name = "triton" if torch.cuda.is_available() else "reference"
    return _CREATORS[name]()

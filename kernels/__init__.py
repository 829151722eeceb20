"""Triton split-KV decode attention kernels for offloaded requests (installed as adrenaline_kernels).

NOTE: importing this package sets `TRITON_INTERPRET=1` (with `setdefault`, so an explicit value wins) when
`torch.cuda.is_available()` is False. Triton reads that variable when a module defining `@triton.jit`
kernels is imported, so on a CPU machine import `adrenaline_kernels` before any other module that defines
Triton kernels (SGLang's included), or set the variable yourself. The offload runtime and CLIs rely on it.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .reference import append_kv_ref, decode_attention_ref, merge_state_ref  # noqa: E402

__all__ = ["append_kv_ref", "decode_attention_ref", "merge_state_ref"]

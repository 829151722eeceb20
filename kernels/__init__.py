"""Triton split-KV decode attention kernels for offloaded requests (installed as adrenaline_kernels).

NOTE: importing this package sets `TRITON_INTERPRET=1` (with `setdefault`, so an explicit value wins) when
`torch.cuda.is_available()` is False. Triton reads that variable when a module defining `@triton.jit`
kernels is imported, so on a CPU machine import `adrenaline_kernels` before any other module that defines
Triton kernels (SGLang's included), or set the variable yourself. The offload runtime and CLIs rely on it.

Layers (house style): `_jit_*.py` raw `@triton.jit` kernels; `decode.py`, `merge.py`, `append.py` checked
wrappers (ValueError with the expected shape/dtype before any launch; `plan()` once per batch, `run()` per
layer); `reference.py` plain-torch ground truth; `splits.py` the split heuristic; `bench.py` the benchmark.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from .append import append_kv  # noqa: E402
from .decode import (  # noqa: E402
    DecodeAttentionPlan,
    DecodeAttentionWrapper,
    decode_attention,
    plan_decode_attention,
    run_decode_attention,
)
from .merge import merge_state  # noqa: E402
from .reference import append_kv_ref, decode_attention_ref, merge_state_ref  # noqa: E402
from .splits import KernelConfig  # noqa: E402

__all__ = [
    "DecodeAttentionPlan",
    "DecodeAttentionWrapper",
    "KernelConfig",
    "append_kv",
    "append_kv_ref",
    "decode_attention",
    "decode_attention_ref",
    "merge_state",
    "merge_state_ref",
    "plan_decode_attention",
    "run_decode_attention",
]

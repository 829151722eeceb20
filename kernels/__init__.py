"""Triton split-KV decode attention kernels for offloaded requests (installed as adrenaline_kernels).

NOTE: importing this package sets `TRITON_INTERPRET=1` (with `setdefault`, so an explicit value wins) when
`torch.cuda.is_available()` is False. Triton decides interpreted or compiled for each `@triton.jit` function
when it is defined, triton's own helpers (`tl.cdiv`, `tl.max`) included at `import triton`; so on a CPU
machine import `adrenaline_kernels` before triton or sglang, or set the variable in the environment. A
process that got the order wrong gets a clear RuntimeError at its first launch (`mode.py`). The offload
runtime and CLIs rely on this.

Layers (house style): `_jit_*.py` raw `@triton.jit` kernels; `decode.py`, `merge.py`, `append.py` checked
wrappers (ValueError with the expected shape/dtype before any launch; `plan()` once per batch, `run()` per
layer); `reference.py` plain-torch ground truth; `splits.py` the split heuristic; `bench.py` the benchmark;
`aot.py` compiles for a GPU architecture without one and reports registers, spills and shared memory.
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

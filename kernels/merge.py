"""Checked `merge_state`: combine two attention states over disjoint KV sets (see reference.py for the
contract: o `[T, H, D]`, lse `[T, H]` float32 natural log, empty side = -inf)."""

from __future__ import annotations

import torch

from ._jit_state import merge_state_kernel
from .checks import SUPPORTED_DTYPES, check_same_dtype, check_tensor, require
from .mode import check_triton_mode
from .splits import next_power_of_2

_FN = "merge_state"


def merge_state(
    o_a: torch.Tensor,
    lse_a: torch.Tensor,
    o_b: torch.Tensor,
    lse_b: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    lse_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (o `[T, H, D]` in o_a.dtype, lse `[T, H]` float32). Never NaN for empty sides."""
    check_tensor(_FN, "o_a", o_a, shape=(None, None, None), dtypes=SUPPORTED_DTYPES)
    t, h, d = o_a.shape
    dev = o_a.device
    check_tensor(_FN, "o_b", o_b, shape=(t, h, d), dtypes=SUPPORTED_DTYPES, device=dev)
    check_same_dtype(_FN, o_a=o_a, o_b=o_b)
    check_tensor(_FN, "lse_a", lse_a, shape=(t, h), dtypes=(torch.float32,), device=dev, last_dim_contiguous=False)
    check_tensor(_FN, "lse_b", lse_b, shape=(t, h), dtypes=(torch.float32,), device=dev, last_dim_contiguous=False)
    require(d <= 1024, f"{_FN}: head_dim must be in [1, 1024], got {d}")
    if out is None:
        out = torch.empty_like(o_a)
    else:
        check_tensor(_FN, "out", out, shape=(t, h, d), dtypes=(o_a.dtype,), device=dev)
    if lse_out is None:
        lse_out = torch.empty(t, h, dtype=torch.float32, device=dev)
    else:
        check_tensor(_FN, "lse_out", lse_out, shape=(t, h), dtypes=(torch.float32,), device=dev,
                     last_dim_contiguous=False)  # fmt: skip
    if t * h == 0 or d == 0:
        return out, lse_out
    check_triton_mode(_FN)
    merge_state_kernel[(t, h)](
        o_a, lse_a, o_b, lse_b, out, lse_out,
        o_a.stride(0), o_a.stride(1), lse_a.stride(0), lse_a.stride(1),
        o_b.stride(0), o_b.stride(1), lse_b.stride(0), lse_b.stride(1),
        out.stride(0), out.stride(1), lse_out.stride(0), lse_out.stride(1),
        HEAD_DIM=d, BLOCK_D=next_power_of_2(d), num_warps=1,
    )  # fmt: skip
    return out, lse_out

"""Checked `append_kv`: write one decode step's new k, v into SGLang's token-slot pool (one layer)."""

from __future__ import annotations

import torch

from ._jit_state import append_kv_kernel
from .checks import SUPPORTED_DTYPES, check_tensor, require
from .mode import check_triton_mode
from .splits import next_power_of_2

_FN = "append_kv"


def append_kv(
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    slots: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    *,
    check_bounds: bool = True,
) -> None:
    """k_buffer, v_buffer `[num_slots, Hkv, D]`; slots `[N]` int32/int64; k_new, v_new `[N, Hkv, D]` in the
    pool's dtype. In place. `check_bounds` reads slots' min/max on the host (one sync): pass False on the hot
    path once the slots are known to be valid. Duplicate slots in one call: which write wins is undefined."""
    check_tensor(_FN, "k_buffer", k_buffer, shape=(None, None, None), dtypes=SUPPORTED_DTYPES)
    num_slots, hkv, d = k_buffer.shape
    dev, dtype = k_buffer.device, k_buffer.dtype
    check_tensor(_FN, "v_buffer", v_buffer, shape=(num_slots, hkv, d), dtypes=(dtype,), device=dev)
    check_tensor(_FN, "slots", slots, shape=(None,), dtypes=(torch.int32, torch.int64), device=dev)
    n = slots.shape[0]
    check_tensor(_FN, "k_new", k_new, shape=(n, hkv, d), dtypes=(dtype,), device=dev)
    check_tensor(_FN, "v_new", v_new, shape=(n, hkv, d), dtypes=(dtype,), device=dev)
    if n == 0 or hkv == 0 or d == 0:
        return
    if check_bounds:
        lo, hi = torch.stack([slots.min(), slots.max()]).tolist()
        require(0 <= lo and hi < num_slots, f"{_FN}: slots must be in [0, {num_slots}), got range [{lo}, {hi}]")
    check_triton_mode(_FN)
    append_kv_kernel[(n, hkv)](
        k_buffer, v_buffer, slots, k_new, v_new,
        k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        HEAD_DIM=d, BLOCK_D=next_power_of_2(d), num_warps=1,
    )  # fmt: skip

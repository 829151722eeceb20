"""Checked split-KV decode attention: `plan()` once per batch, `run()` once per layer.

    wrapper = DecodeAttentionWrapper()
    wrapper.plan(kv_indptr, kv_indices, num_qo_heads=32, num_kv_heads=8, head_dim=128, dtype=torch.float16,
                 num_sms=executor_sms, seq_lens=host_seq_lens)  # seq_lens: optional, avoids the host sync
    for layer in layers:
        o, lse = wrapper.run(q[layer], k_buffer[layer], v_buffer[layer])  # [B, Hq, D], [B, Hq] fp32 ln

`plan()` validates the batch metadata (host syncs: it reads kv_indptr and the slot range, unless the caller
passes `seq_lens`), picks the split counts and allocates the stage-1 workspace; `run()` does no host sync
and no allocation beyond the outputs (pass `out=` / `lse_out=` to avoid those too). Runs on one stream:
the workspace is reused by every layer, so do not run two layers of one plan concurrently. The plan keeps
references to kv_indptr and kv_indices (no copy): plan again whenever they change.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import triton

from ._jit_decode import split_kv_stage1_kernel, split_kv_stage2_kernel
from .checks import SUPPORTED_DTYPES, check_tensor, require
from .mode import check_triton_mode, interpreting
from .splits import (
    MAX_HEAD_DIM,
    KernelConfig,
    block_h_for,
    cdiv,
    default_config,
    default_num_sms,
    next_power_of_2,
    plan_num_splits,
)

_FN = "decode_attention"
MAX_FORCED_SPLITS = 256


@dataclass(frozen=True, eq=False)
class DecodeAttentionPlan:
    """Per-batch metadata shared by every layer's `run()`. Build with `plan_decode_attention`."""

    batch_size: int
    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device
    sm_scale: float
    num_sms: int
    config: KernelConfig
    splits_per_request: tuple[int, ...]  # host copy of num_splits
    max_slot: int  # largest token slot any request reads; -1 when no request has KV or seq_lens was given
    kv_indptr: torch.Tensor = field(repr=False)  # [B + 1] int32
    kv_indices: torch.Tensor = field(repr=False)  # [nnz] int32
    num_splits: torch.Tensor = field(repr=False)  # [B] int32
    mid_o: torch.Tensor = field(repr=False)  # [B, Hq, max_splits, D] float32 stage-1 partial outputs
    mid_lse: torch.Tensor = field(repr=False)  # [B, Hq, max_splits] float32 stage-1 partial LSEs

    @property
    def group_size(self) -> int:
        return self.num_qo_heads // self.num_kv_heads

    @property
    def block_h(self) -> int:
        return block_h_for(self.group_size)

    @property
    def head_tiles(self) -> int:
        return cdiv(self.group_size, self.block_h)

    @property
    def max_splits(self) -> int:
        return max(self.splits_per_request, default=1)


def _as_int(v):
    """Integral scalars (Python, numpy, 0-dim integer tensors) as int; anything else unchanged for the checks."""
    if isinstance(v, bool) or v is None:
        return v
    if isinstance(v, numbers.Integral):
        return int(v)
    if isinstance(v, torch.Tensor) and v.dim() == 0 and not v.is_floating_point():
        return int(v)
    return v


def _read_and_check_batch(kv_indptr: torch.Tensor, kv_indices: torch.Tensor) -> tuple[list[int], int]:
    """Host copies of the lengths and the largest slot, with the value checks (two device->host syncs)."""
    indptr = kv_indptr.tolist()
    seq_lens = [b - a for a, b in zip(indptr[:-1], indptr[1:])]
    require(indptr[0] >= 0, f"{_FN}: kv_indptr[0] must be >= 0, got {indptr[0]}")
    bad = next((i for i, n in enumerate(seq_lens) if n < 0), None)
    require(bad is None, f"{_FN}: kv_indptr must be non-decreasing, but kv_indptr[{bad}] > kv_indptr[{bad}+1]")
    require(
        indptr[-1] <= kv_indices.numel(),
        f"{_FN}: kv_indptr[-1] ({indptr[-1]}) must be <= len(kv_indices) ({kv_indices.numel()})",
    )
    used = kv_indices[indptr[0] : indptr[-1]]
    max_slot = -1
    if used.numel():
        lo_slot, max_slot = torch.stack([used.min(), used.max()]).tolist()
        require(lo_slot >= 0, f"{_FN}: kv_indices must be token slots >= 0, got {lo_slot}")
    return seq_lens, max_slot


def plan_decode_attention(
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    num_qo_heads: int,
    num_kv_heads: int,
    head_dim: int,
    dtype: torch.dtype,
    *,
    num_sms: int | None = None,
    sm_scale: float | None = None,
    num_splits: int | None = None,
    config: KernelConfig | None = None,
    seq_lens: Sequence[int] | None = None,
) -> DecodeAttentionPlan:
    """Validate the batch and choose splits. `num_splits` forces one split count on every request
    (tests, tuning); by default it comes from batch x heads, the lengths and `num_sms` (see splits.py).

    `seq_lens`: host copy of the per-request lengths (kv_indptr's differences) when the caller has it, as
    the executor does. Then plan reads nothing back from the device (no sync), and the values of
    kv_indptr/kv_indices are trusted, not checked (a wrong slot reads or faults out of bounds)."""
    # numpy and torch integer scalars are fine too (the colocation manager's SM counts may be numpy ints)
    num_qo_heads, num_kv_heads, head_dim = (_as_int(v) for v in (num_qo_heads, num_kv_heads, head_dim))
    num_sms, num_splits = _as_int(num_sms), _as_int(num_splits)
    for name, val in (("num_qo_heads", num_qo_heads), ("num_kv_heads", num_kv_heads)):
        require(isinstance(val, int) and val >= 1, f"{_FN}: {name} must be an int >= 1, got {val}")
    require(
        num_qo_heads % num_kv_heads == 0,
        f"{_FN}: num_qo_heads ({num_qo_heads}) must be a multiple of num_kv_heads ({num_kv_heads})",
    )
    require(
        isinstance(head_dim, int) and 1 <= head_dim <= MAX_HEAD_DIM,
        f"{_FN}: head_dim must be in [1, {MAX_HEAD_DIM}], got {head_dim}",
    )
    require(dtype in SUPPORTED_DTYPES, f"{_FN}: dtype must be float16, bfloat16 or float32, got {dtype}")
    check_tensor(_FN, "kv_indptr", kv_indptr, shape=(None,), dtypes=(torch.int32,))
    device = kv_indptr.device
    check_tensor(_FN, "kv_indices", kv_indices, shape=(None,), dtypes=(torch.int32,), device=device)
    require(kv_indptr.numel() >= 1, f"{_FN}: kv_indptr must have B + 1 >= 1 entries, got 0")
    if num_sms is None:
        num_sms = default_num_sms(device)
    require(isinstance(num_sms, int) and num_sms >= 1, f"{_FN}: num_sms must be an int >= 1, got {num_sms}")
    if num_splits is not None:
        require(
            isinstance(num_splits, int) and 1 <= num_splits <= MAX_FORCED_SPLITS,
            f"{_FN}: num_splits must be in [1, {MAX_FORCED_SPLITS}], got {num_splits}",
        )
    if sm_scale is not None:
        ok = isinstance(sm_scale, int | float) and math.isfinite(sm_scale) and sm_scale > 0
        require(ok, f"{_FN}: sm_scale must be a finite float > 0 (default 1/sqrt(head_dim)), got {sm_scale}")
    config = config or default_config(head_dim)

    if seq_lens is None:
        seq_lens, max_slot = _read_and_check_batch(kv_indptr, kv_indices)  # the host syncs of a batch
    else:
        seq_lens = [int(n) for n in seq_lens]
        b_expected = kv_indptr.numel() - 1
        require(len(seq_lens) == b_expected, f"{_FN}: seq_lens must have B = {b_expected} entries, got {len(seq_lens)}")
        require(min(seq_lens, default=0) >= 0, f"{_FN}: seq_lens must be >= 0, got {min(seq_lens)}")
        require(
            sum(seq_lens) <= kv_indices.numel(),
            f"{_FN}: sum(seq_lens) ({sum(seq_lens)}) must be <= len(kv_indices) ({kv_indices.numel()})",
        )
        max_slot = -1  # unchecked: the caller vouches for kv_indptr and kv_indices

    group = num_qo_heads // num_kv_heads
    if num_splits is None:
        head_tiles = cdiv(group, block_h_for(group))
        splits = plan_num_splits(seq_lens, num_kv_heads, head_tiles, num_sms, config.block_n)
    else:
        splits = [num_splits] * len(seq_lens)
    batch = len(seq_lens)
    max_splits = max(splits, default=1)
    return DecodeAttentionPlan(
        batch_size=batch,
        num_qo_heads=num_qo_heads,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        dtype=dtype,
        device=device,
        sm_scale=1.0 / math.sqrt(head_dim) if sm_scale is None else float(sm_scale),
        num_sms=num_sms,
        config=config,
        splits_per_request=tuple(splits),
        max_slot=max_slot,
        kv_indptr=kv_indptr,
        kv_indices=kv_indices,
        num_splits=_to_device(splits, device),
        mid_o=torch.empty(batch, num_qo_heads, max_splits, head_dim, dtype=torch.float32, device=device),
        mid_lse=torch.empty(batch, num_qo_heads, max_splits, dtype=torch.float32, device=device),
    )


def _to_device(values: list[int], device: torch.device) -> torch.Tensor:
    host = torch.tensor(values, dtype=torch.int32)
    if device.type == "cuda":  # pinned + non_blocking: the copy is queued, the host does not wait for it
        return host.pin_memory().to(device, non_blocking=True)
    return host.to(device)


def run_decode_attention(
    plan: DecodeAttentionPlan,
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    *,
    out: torch.Tensor | None = None,
    lse_out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer: q `[B, Hq, D]`, k/v_buffer `[num_slots, Hkv, D]` -> (o `[B, Hq, D]` q.dtype, lse `[B, Hq]` fp32)."""
    p = plan
    check_tensor(_FN, "q", q, shape=(p.batch_size, p.num_qo_heads, p.head_dim), dtypes=(p.dtype,), device=p.device)
    kv_shape = (None, p.num_kv_heads, p.head_dim)
    check_tensor(_FN, "k_buffer", k_buffer, shape=kv_shape, dtypes=(p.dtype,), device=p.device)
    check_tensor(_FN, "v_buffer", v_buffer, shape=kv_shape, dtypes=(p.dtype,), device=p.device)
    require(
        v_buffer.shape[0] == k_buffer.shape[0],
        f"{_FN}: k_buffer and v_buffer must have the same num_slots, got {k_buffer.shape[0]} and {v_buffer.shape[0]}",
    )
    require(
        p.max_slot < k_buffer.shape[0],
        f"{_FN}: kv_indices reach slot {p.max_slot} but the pool has num_slots={k_buffer.shape[0]}",
    )
    if out is None:
        out = torch.empty_like(q)
    else:
        check_tensor(_FN, "out", out, shape=tuple(q.shape), dtypes=(q.dtype,), device=p.device)
    if lse_out is None:
        lse_out = torch.empty(p.batch_size, p.num_qo_heads, dtype=torch.float32, device=p.device)
    else:
        check_tensor(
            _FN, "lse_out", lse_out, shape=(p.batch_size, p.num_qo_heads), dtypes=(torch.float32,), device=p.device
        )
    if p.batch_size == 0:
        return out, lse_out
    check_triton_mode(_FN)

    cfg = p.config
    block_d = max(16, next_power_of_2(p.head_dim))
    # NOTE: the interpreter's tl.dot is wrong on bf16, so bf16 is upcast there; fp32 always uses exact fp32
    # dots (input_precision="ieee", not TF32). fp16 and, on GPUs, bf16 use the native tensor-core dot.
    dot_fp32 = p.dtype == torch.float32 or (p.dtype == torch.bfloat16 and interpreting())
    grid1 = (p.batch_size, p.num_kv_heads * p.head_tiles, p.max_splits)
    split_kv_stage1_kernel[grid1](
        q, k_buffer, v_buffer, p.kv_indptr, p.kv_indices, p.num_splits, p.mid_o, p.mid_lse, p.sm_scale,
        q.stride(0), q.stride(1), k_buffer.stride(0), k_buffer.stride(1), v_buffer.stride(0), v_buffer.stride(1),
        p.mid_o.stride(0), p.mid_o.stride(1), p.mid_o.stride(2), p.mid_lse.stride(0), p.mid_lse.stride(1),
        GROUP=p.group_size, HEAD_TILES=p.head_tiles, HEAD_DIM=p.head_dim, BLOCK_H=p.block_h, BLOCK_D=block_d,
        BLOCK_N=cfg.block_n, DOT_FP32=dot_fp32, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )  # fmt: skip
    grid2 = (p.batch_size, p.num_qo_heads)
    split_kv_stage2_kernel[grid2](
        p.mid_o, p.mid_lse, p.kv_indptr, p.num_splits, out, lse_out,
        p.mid_o.stride(0), p.mid_o.stride(1), p.mid_o.stride(2), p.mid_lse.stride(0), p.mid_lse.stride(1),
        out.stride(0), out.stride(1), lse_out.stride(0),
        HEAD_DIM=p.head_dim, BLOCK_D=triton.next_power_of_2(p.head_dim), BLOCK_N=cfg.block_n, num_warps=1,
    )  # fmt: skip
    return out, lse_out


class DecodeAttentionWrapper:
    """FlashInfer-style holder: `plan()` per batch, `run()` per layer (see the module docstring)."""

    def __init__(self) -> None:
        self._plan: DecodeAttentionPlan | None = None

    @property
    def plan_info(self) -> DecodeAttentionPlan:
        require(self._plan is not None, f"{_FN}: call DecodeAttentionWrapper.plan() before run()")
        assert self._plan is not None
        return self._plan

    def plan(
        self,
        kv_indptr: torch.Tensor,
        kv_indices: torch.Tensor,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype,
        num_sms: int | None = None,
        *,
        sm_scale: float | None = None,
        num_splits: int | None = None,
        config: KernelConfig | None = None,
        seq_lens: Sequence[int] | None = None,
    ) -> DecodeAttentionPlan:
        """See `plan_decode_attention`."""
        self._plan = plan_decode_attention(
            kv_indptr, kv_indices, num_qo_heads, num_kv_heads, head_dim, dtype,
            num_sms=num_sms, sm_scale=sm_scale, num_splits=num_splits, config=config, seq_lens=seq_lens,
        )  # fmt: skip
        return self._plan

    def run(
        self,
        q: torch.Tensor,
        k_buffer: torch.Tensor,
        v_buffer: torch.Tensor,
        *,
        out: torch.Tensor | None = None,
        lse_out: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return run_decode_attention(self.plan_info, q, k_buffer, v_buffer, out=out, lse_out=lse_out)


def decode_attention(
    q: torch.Tensor,
    k_buffer: torch.Tensor,
    v_buffer: torch.Tensor,
    kv_indptr: torch.Tensor,
    kv_indices: torch.Tensor,
    *,
    sm_scale: float | None = None,
    num_sms: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One-shot plan + run. q `[B, Hq, D]`; k/v_buffer `[num_slots, Hkv, D]`; kv_indptr `[B+1]` int32;
    kv_indices int32 slots. Returns o `[B, Hq, D]` in q.dtype and lse `[B, Hq]` float32, natural log."""
    check_tensor(_FN, "q", q, shape=(None, None, None), dtypes=SUPPORTED_DTYPES)
    check_tensor(_FN, "k_buffer", k_buffer, shape=(None, None, None), dtypes=SUPPORTED_DTYPES)
    check_tensor(_FN, "kv_indptr", kv_indptr, shape=(q.shape[0] + 1,), dtypes=(torch.int32,), device=q.device)
    plan = plan_decode_attention(
        kv_indptr, kv_indices, q.shape[1], k_buffer.shape[1], q.shape[2], q.dtype, num_sms=num_sms, sm_scale=sm_scale
    )
    return run_decode_attention(plan, q, k_buffer, v_buffer)

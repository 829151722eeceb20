"""Strict plain-torch stand-in for the native `sgl_kernel` CPU library (development and test support).

Served to SGLang server processes as the module `sgl_kernel` through a generated shim on their
PYTHONPATH (`server_env.py`); never installed into site-packages, never put where a real `sgl_kernel`
exists. Pinned to sglang 0.5.23 (`SGLANG_VERSION`): the names below are exactly the ones that version
imports *unconditionally* on the CPU-engine path (`SGLANG_USE_CPU_ENGINE=1`); see docs/sglang.md.

Strict means: the module defines these names and nothing else, so every other `from sgl_kernel import X`
still raises ImportError and SGLang's try-import fallbacks keep choosing their plain-torch paths. (A
permissive stub that answered every name would switch those fallbacks onto fake ops.)

- `copy_all_layer_kv_cache_cpu`, `assign_req_to_token_pool_cpu`: implemented exactly (tested against
  SGLang's own Triton kernels in tests/cpu_support/).
- The seven speculative-decoding names: imported at start-up by SGLang, never called without speculative
  decoding; calling one raises NotImplementedError naming it.

No `torch.ops.sgl_kernel.*` op is registered: on this path SGLang calls native CPU ops only when the CPU
has AMX *and* the native library registered `torch.ops.sgl_kernel.convert_weight_packed`; neither holds,
so norms, RoPE, activations, linear layers, the KV store and attention take SGLang's plain-torch paths.
"""

from __future__ import annotations

import ctypes

import torch

SGLANG_VERSION = "0.5.23"

__all__ = [
    "copy_all_layer_kv_cache_cpu",
    "assign_req_to_token_pool_cpu",
    "build_tree_kernel_efficient_cpu",
    "verify_tree_greedy_cpu",
    "assign_draft_cache_locs_contiguous_cpu",
    "assign_extend_cache_locs_cpu",
    "fill_accept_out_cache_loc_cpu",
    "fill_bonus_tokens_cpu",
    "rotate_input_ids_cpu",
]

_INDEX_DTYPES = (torch.int32, torch.int64)


def _check_index(name: str, t: torch.Tensor) -> None:
    if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.dtype not in _INDEX_DTYPES or t.device.type != "cpu":
        got = f"{t.dtype} {tuple(t.shape)} on {t.device}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must be a 1-D int32/int64 CPU tensor, got {got}")


def _bytes_at(address: int, n_bytes: int) -> torch.Tensor:
    """A writable uint8 tensor `[n_bytes]` aliasing host memory at `address` (no copy)."""
    return torch.frombuffer((ctypes.c_uint8 * n_bytes).from_address(address), dtype=torch.uint8)


def copy_all_layer_kv_cache_cpu(
    data_ptrs: torch.Tensor, strides: torch.Tensor, tgt_loc: torch.Tensor, src_loc: torch.Tensor
) -> None:
    """For every buffer b: rows tgt_loc <- rows src_loc, all sources gathered before any is written.

    data_ptrs: [num_buffers] int64, base address of each buffer (e.g. every layer's K and V pool).
    strides:   [num_buffers] int64, row stride of each buffer in bytes (also the copy width per row).
    tgt_loc, src_loc: [num_locs] int, row indices. Matches SGLang's `copy_all_layer_kv_cache_tiled`
    (kernels/ops/kvcache/cache_move.py), which is "safe for in-place copy": overlapping src/tgt read the
    old values.
    """
    _check_index("data_ptrs", data_ptrs)
    _check_index("strides", strides)
    _check_index("tgt_loc", tgt_loc)
    _check_index("src_loc", src_loc)
    if data_ptrs.numel() != strides.numel():
        raise ValueError(f"data_ptrs and strides must have equal length, got {data_ptrs.numel()} and {strides.numel()}")
    if tgt_loc.numel() != src_loc.numel():
        raise ValueError(f"tgt_loc and src_loc must have equal length, got {tgt_loc.numel()} and {src_loc.numel()}")
    if src_loc.numel() == 0:
        return
    tgt, src = tgt_loc.long(), src_loc.long()
    if int(torch.minimum(tgt.min(), src.min())) < 0:
        raise ValueError("tgt_loc and src_loc must be non-negative row indices")
    n_rows = int(torch.maximum(tgt.max(), src.max())) + 1
    for address, stride_bytes in zip(data_ptrs.tolist(), strides.tolist(), strict=True):
        if stride_bytes <= 0 or address == 0:
            raise ValueError(f"buffer at address {address:#x} has invalid stride {stride_bytes} bytes")
        rows = _bytes_at(address, n_rows * stride_bytes).view(n_rows, stride_bytes)  # [n_rows, stride_bytes]
        rows[tgt] = rows[src].clone()  # NOTE: clone = gather all before scattering (in-place safe)


def assign_req_to_token_pool_cpu(
    req_pool_indices: torch.Tensor,
    req_to_token: torch.Tensor,
    start_offset: torch.Tensor,
    end_offset: torch.Tensor,
    out_cache_loc: torch.Tensor,
    pool_len: int,
) -> None:
    """For each request i: req_to_token[req_pool_indices[i], start[i]:end[i]] = the next chunk of out_cache_loc.

    req_pool_indices, start_offset, end_offset: [batch]. req_to_token: [pool_rows, pool_len] (int32).
    out_cache_loc: [>= sum(end - start)] token slots, consumed in request order. Matches SGLang's
    `assign_req_to_token_pool` Triton kernel (srt/mem_cache/allocation.py).
    """
    for name, t in (("req_pool_indices", req_pool_indices), ("start_offset", start_offset),
                    ("end_offset", end_offset), ("out_cache_loc", out_cache_loc)):
        _check_index(name, t)
    if req_to_token.dim() != 2 or req_to_token.shape[1] != pool_len:
        raise ValueError(f"req_to_token must be [rows, pool_len={pool_len}], got {tuple(req_to_token.shape)}")
    batch = req_pool_indices.numel()
    if start_offset.numel() != batch or end_offset.numel() != batch:
        raise ValueError(
            f"start_offset and end_offset must have batch={batch} entries, "
            f"got {start_offset.numel()} and {end_offset.numel()}"
        )
    lengths = (end_offset - start_offset).long()  # [batch]
    if batch == 0 or int(lengths.sum()) == 0:
        return
    if int(lengths.min()) < 0 or int(start_offset.min()) < 0 or int(end_offset.max()) > pool_len:
        raise ValueError(f"need 0 <= start_offset <= end_offset <= pool_len={pool_len} for every request")
    total = int(lengths.sum())
    if out_cache_loc.numel() < total:
        raise ValueError(f"out_cache_loc has {out_cache_loc.numel()} slots, the requests need {total}")
    rows = torch.repeat_interleave(req_pool_indices.long(), lengths)  # [total]
    chunk_start = torch.cumsum(lengths, 0) - lengths  # [batch], first out_cache_loc index of each request
    within = torch.arange(total) - torch.repeat_interleave(chunk_start, lengths)  # [total]
    cols = torch.repeat_interleave(start_offset.long(), lengths) + within  # [total]
    req_to_token[rows, cols] = out_cache_loc[:total].to(req_to_token.dtype)


def _speculative_only(name: str):
    def unavailable(*args, **kwargs):
        raise NotImplementedError(
            f"sgl_kernel.{name}: not provided by adrenaline_sgl's CPU stand-in (speculative decoding is not "
            "supported on the CPU test stack; install the native sgl_kernel CPU library for it)"
        )

    unavailable.__name__ = unavailable.__qualname__ = name
    return unavailable


build_tree_kernel_efficient_cpu = _speculative_only("build_tree_kernel_efficient_cpu")
verify_tree_greedy_cpu = _speculative_only("verify_tree_greedy_cpu")
assign_draft_cache_locs_contiguous_cpu = _speculative_only("assign_draft_cache_locs_contiguous_cpu")
assign_extend_cache_locs_cpu = _speculative_only("assign_extend_cache_locs_cpu")
fill_accept_out_cache_loc_cpu = _speculative_only("fill_accept_out_cache_loc_cpu")
fill_bonus_tokens_cpu = _speculative_only("fill_bonus_tokens_cpu")
rotate_input_ids_cpu = _speculative_only("rotate_input_ids_cpu")

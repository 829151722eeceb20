"""Decode-attention implementations the benchmark can time: ours and the baselines that import here.

Each entry is a lazy creator: `prepare(batch, num_sms)` does the per-batch work (plans, split counts,
workspaces; untimed, as a serving engine does it once per step) and returns a closure that runs one layer
and returns (o `[B, Hq, D]`, lse) with lse float32 natural log, `[B, Hq]`, or `[B, Hq, splits]` per-split
LSEs for SGLang's kernel (it writes no final LSE; their logsumexp is the final one).
`unavailable(device)` says why an entry cannot run here, or None. Creators import their library only when
called, so nothing optional is needed to import this module.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .inputs import DecodeBatch

Run = Callable[[], tuple[torch.Tensor, torch.Tensor]]

SGLANG_MAX_KV_SPLITS = 8  # SGLang's --triton-attention-num-kv-splits default


@dataclass(frozen=True)
class Impl:
    name: str
    note: str
    unavailable: Callable[[torch.device], str | None]
    prepare: Callable[[DecodeBatch, int], Run]


def _always(_device: torch.device) -> str | None:
    return None


def _prepare_adrenaline(batch: DecodeBatch, num_sms: int, config=None) -> Run:
    from .decode import DecodeAttentionWrapper

    b, hq, d = batch.q.shape
    wrapper = DecodeAttentionWrapper()
    plan = wrapper.plan(
        batch.kv_indptr, batch.kv_indices, hq, batch.k_buffer.shape[1], d, batch.q.dtype, num_sms, config=config
    )
    out, lse = torch.empty_like(batch.q), torch.empty(b, hq, dtype=torch.float32, device=batch.q.device)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        return wrapper.run(batch.q, batch.k_buffer, batch.v_buffer, out=out, lse_out=lse)

    run.plan = plan  # type: ignore[attr-defined]  # the bench reports its split counts
    return run


def _prepare_torch_ref(batch: DecodeBatch, num_sms: int) -> Run:
    from .reference import decode_attention_ref

    return lambda: decode_attention_ref(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices)


def _sglang_unavailable(device: torch.device) -> str | None:
    from . import sglang_loader

    try:
        sglang_loader.load_default()
    except ImportError as exc:
        return str(exc)
    return None


def _prepare_sglang(batch: DecodeBatch, num_sms: int) -> Run:
    """SGLang's Triton backend as it runs decode: its own split heuristic (max 8 splits, the server
    default) over the SM count, then `decode_attention_fwd`; the final LSE is the logsumexp of its splits."""
    from . import sglang_loader

    kern = sglang_loader.load_default()
    q, dev = batch.q, batch.q.device
    b, hq, d = q.shape
    hkv = batch.k_buffer.shape[1]
    seq_lens = (batch.kv_indptr[1:] - batch.kv_indptr[:-1]).to(torch.int32)
    num_kv_splits = torch.empty(b, dtype=torch.int32, device=dev)
    if b:
        kern.get_num_kv_splits_triton[(1,)](
            num_kv_splits, seq_lens, b, 1, hq, hkv, SGLANG_MAX_KV_SPLITS, num_sms,
            MAX_NUM_SEQ=max(256, 1 << (b - 1).bit_length()),
        )  # fmt: skip
    o = torch.empty_like(q)
    attn_logits = torch.empty(b, hq, SGLANG_MAX_KV_SPLITS, d, dtype=torch.float32, device=dev)
    # Splits SGLang leaves empty are never written: -inf keeps their logsumexp exact.
    attn_lse = torch.full((b, hq, SGLANG_MAX_KV_SPLITS), float("-inf"), dtype=torch.float32, device=dev)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        kern.decode_attention_fwd(
            q, batch.k_buffer, batch.v_buffer, o, batch.kv_indptr, batch.kv_indices, attn_logits, attn_lse,
            num_kv_splits, SGLANG_MAX_KV_SPLITS, 1.0 / math.sqrt(d), 1.0, 1.0,
        )  # fmt: skip
        return o, attn_lse  # per-split LSEs; the bench reduces them only for the accuracy column

    return run


def _flashinfer_unavailable(device: torch.device) -> str | None:
    if device.type != "cuda":
        return "flashinfer runs on CUDA only"
    try:
        import flashinfer  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"flashinfer not importable: {type(exc).__name__}: {exc}"
    return None


def _prepare_flashinfer(batch: DecodeBatch, num_sms: int) -> Run:
    """FlashInfer's paged decode with page_size 1 over the same pool; its base-2 LSE is converted to ln."""
    import flashinfer

    q = batch.q
    b, hq, d = q.shape
    hkv = batch.k_buffer.shape[1]
    workspace = torch.empty(128 << 20, dtype=torch.uint8, device=q.device)
    wrapper = flashinfer.BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD")
    last_page_len = torch.ones(b, dtype=torch.int32, device=q.device)
    wrapper.plan(
        batch.kv_indptr, batch.kv_indices, last_page_len, hq, hkv, d, 1,
        q_data_type=q.dtype, kv_data_type=batch.k_buffer.dtype,
    )  # fmt: skip
    cache = (batch.k_buffer.unsqueeze(1), batch.v_buffer.unsqueeze(1))  # [pages, page_size=1, Hkv, D]

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        o, lse2 = wrapper.run(q, cache, return_lse=True)
        return o, lse2 * math.log(2.0)

    return run


IMPLS: dict[str, Impl] = {
    "adrenaline": Impl("adrenaline", "ours: split-KV Triton, plan() untimed", _always, _prepare_adrenaline),
    "sglang_triton": Impl(
        "sglang_triton", "SGLang decode_attention_fwd, its split heuristic", _sglang_unavailable, _prepare_sglang
    ),
    "flashinfer": Impl(
        "flashinfer", "FlashInfer paged decode, page_size 1", _flashinfer_unavailable, _prepare_flashinfer
    ),
    "torch_ref": Impl("torch_ref", "plain-torch reference (per-request loop)", _always, _prepare_torch_ref),
}

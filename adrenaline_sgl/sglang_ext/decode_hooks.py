"""Decode hooks: admit an offloaded request without prompt KV; tell its executor when it ends. Its decode
steps take no local KV slot either (`decode_alloc`, registered from `hooks()` here).

AROUND hooks, inert unless the instance runs with `--adrenaline-role decode`, its attention backend is
`adrenaline` (which installs the process's `DecodeOffload`) and the request is offloaded.
"""

from __future__ import annotations

import logging

import torch

from adrenaline_sgl.offload import decode_state
from adrenaline_sgl.sglang_ext import decode_alloc, flags, marks

logger = logging.getLogger(__name__)

_QUEUE = "sglang.srt.disaggregation.decode.DecodePreallocQueue"
RUN_BATCH = "sglang.srt.managers.scheduler.Scheduler.run_batch"
PRE_ALLOC = f"{_QUEUE}._pre_alloc"
REQUIRED_TOKENS = f"{_QUEUE}._prealloc_required_tokens"


def _offload_for(queue, req):
    """(DecodeOffload, args) when `req` is offloaded on this decode instance, else None."""
    args = flags.of(queue.scheduler.server_args)
    if args.role != "decode" or not marks.is_offloaded(req, args):
        return None
    offload = decode_state.current()
    if offload is None:
        logger.warning("request %s is marked offloaded, but the attention backend is not 'adrenaline': "
                       "decoding it locally", req.rid)  # fmt: skip
        return None
    return offload, args


def pre_alloc_hook(original, self, req, prefix_indices=None, prefix_len=None, total_prefix_len=None):
    """Changes: an offloaded request gets a `req_to_token` row and sequence-length bookkeeping but no KV
    slots; its prompt range points at the padding slot 0 (never freed here: `before_release`); no transfer
    destination is returned. Why: its KV stays on the prefill instance, where the executor attends over it."""
    found = _offload_for(self, req)
    if found is None:
        return original(self, req, prefix_indices, prefix_len, total_prefix_len)
    offload, args = found
    rows = self.req_to_token_pool.alloc([req])
    assert rows is not None, "req_pool_indices is full! There is a bug in memory estimation."
    fill_len = self._pre_alloc_fill_len(req)
    kv = req.kv
    kv.kv_committed_len = kv.kv_allocated_len = fill_len
    self.req_to_token_pool.write((kv.req_pool_idx, slice(0, fill_len)), 0)  # slot 0: SGLang's padding slot
    req.full_untruncated_fill_ids = req.origin_input_ids + req.output_ids
    req.prefix_len = 0
    req.extend_end = fill_len
    offload.mark(kv.req_pool_idx, marks.offload_id(req), marks.executor_of(req, args), prompt_tokens=fill_len)
    logger.info("adrenaline: admitted %s offloaded to %s (%d prompt tokens, no local KV)", marks.offload_id(req),
                marks.executor_of(req, args), fill_len)  # fmt: skip
    return torch.empty(0, dtype=torch.int64)


def required_tokens_hook(original, self, req):
    """Changes: admission charges an offloaded request only the reserved decode tokens, not its prompt.
    Why: the decode pool holds none of its prompt KV (Adrenaline's point: more batch for the same HBM)."""
    full, swa = original(self, req)
    if _offload_for(self, req) is None:
        return full, swa
    return self.num_reserved_decode_tokens, swa


def before_release(req) -> None:
    """Called by the release hook before SGLang frees a request (finish, abort, retraction): for an offloaded
    one, the padding prefix of its row (the prompt, plus every decode step `decode_alloc` padded) is marked
    tree-protected (`cache_protected_len`) so SGLang frees only slots really allocated here. A row that is
    padding throughout also has its allocated length clamped to SGLang's owned length, so the
    "overallocated" tail `[owned_kv_len, kv_allocated_len)` that `release_kv_cache` frees (a stop before the
    last committed token) is empty too: slot 0 is never freed, nothing is freed twice.
    NOTE: set at release, not at admission: `pop_preallocated` resets `cache_protected_len` after `_pre_alloc`."""
    offload = decode_state.current()
    kv = req.kv
    if offload is None or kv.req_pool_idx is None:
        return
    found = offload.lookup(kv.req_pool_idx)
    if found is None or found.rid != marks.offload_id(req):
        return
    kv.cache_protected_len = max(kv.cache_protected_len, found.prompt_tokens)
    if kv.cache_protected_len >= kv.kv_allocated_len:  # no local slot in the row
        kv.kv_allocated_len = kv.cache_protected_len = min(kv.kv_allocated_len, req.owned_kv_len())


def after_release(row: int | None, rid: str) -> None:
    """Called by the release hook after SGLang freed a request: an offloaded one is released remotely.
    `rid` is the executor's id for it (`marks.offload_id`)."""
    offload = decode_state.current()
    if offload is None or row is None:
        return
    found = offload.lookup(row)
    if found is not None and found.rid == rid:
        offload.unmark(row, release=True)


def abort_failed(scheduler) -> list[str]:
    """Set SGLang's `to_finish` abort on running requests whose executor failed; returns their rids."""
    offload = decode_state.current()
    failed = offload.failed() if offload is not None else {}
    if not failed:
        return []
    from http import HTTPStatus

    from sglang.srt.managers.schedule_batch import FINISH_ABORT

    aborted = []
    for req in list(getattr(scheduler.running_batch, "reqs", None) or []):
        reason = failed.get(req.kv.req_pool_idx)
        if reason is not None and not req.finished() and req.to_finish is None:
            req.to_finish = FINISH_ABORT(reason, HTTPStatus.SERVICE_UNAVAILABLE)
            aborted.append(req.rid)
    return aborted


def run_batch_hook(original, self, *args, **kwargs):
    """Changes: after a batch, running requests whose executor failed are aborted (SGLang's `to_finish`,
    as its own abort of a running request), with the executor's error and HTTP 503.
    Why: the other requests of the batch keep decoding; those cannot without their KV."""
    result = original(self, *args, **kwargs)
    if flags.of(self.server_args).role == "decode":
        abort_failed(self)
    return result


def hooks(hook_type) -> list[tuple[str, object, object]]:
    """These hooks and the per-step allocation hooks (`decode_alloc`)."""
    around = hook_type.AROUND
    return [
        (PRE_ALLOC, pre_alloc_hook, around),
        (REQUIRED_TOKENS, required_tokens_hook, around),
        (RUN_BATCH, run_batch_hook, around),
        *decode_alloc.hooks(hook_type),
    ]

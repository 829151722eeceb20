"""Decode allocation hooks: an offloaded row takes no local KV slot per decode step, and admission charges
it none.

The new token's k, v of an offloaded request go to its executor on the prefill instance (the `adrenaline`
backend hands only local rows to the wrapped backend, `backend.sub_batch`), so a local slot for it would
never be written or read: HBM wasted, and under memory pressure SGLang would retract requests for nothing.

Invariant kept by these hooks (page size 1): positions `[0, cache_protected_len)` of an offloaded request's
`req_to_token` row point at SGLang's padding slot 0, and an offloaded row is "padded" while that range
covers its whole allocated length (`holds_no_local_kv`). SGLang reads `[cache_protected_len,
kv_allocated_len)` as the request's own KV (release, pool statistics, retraction backup), so a padded row
owns nothing locally and nothing of it is ever freed. Every hook is inert unless this process has a
`DecodeOffload` (the `adrenaline` attention backend on a `--adrenaline-role decode` instance) and the
batch has padded rows; otherwise SGLang's original runs unchanged.
"""

from __future__ import annotations

import torch

from adrenaline_sgl.offload import decode_state
from adrenaline_sgl.sglang_ext import flags, marks

_BATCH = "sglang.srt.managers.schedule_batch"
# NOTE: the name `ScheduleBatch.prepare_for_decode` looks up at call time (`from ...allocation import
# alloc_for_decode` binds it in schedule_batch); HookRegistry also re-points other stale bindings of it.
ALLOC_FOR_DECODE = f"{_BATCH}.alloc_for_decode"
NEW_TOKENS_NEXT_DECODE = f"{_BATCH}.ScheduleBatch.new_tokens_required_next_decode"
RETRACTION_ORDER = f"{_BATCH}.ScheduleBatch._get_decode_retraction_order"
_QUEUE = "sglang.srt.disaggregation.decode.DecodePreallocQueue"
ACTIVE_REQ_COUNT = f"{_QUEUE}._active_req_count"
# NOTE: `pop_preallocated` (and `allocate_host_staged`) price a request's admission with this method, not
# with `_prealloc_required_tokens` (which only the SWA path, retraction resume and the capacity check read).
ADMISSION_TOKENS = f"{_QUEUE}._required_admission_tokens"
POP_PREALLOCATED = f"{_QUEUE}.pop_preallocated"

PADDING_SLOT = 0  # SGLang's padding slot: never handed out by the allocator, never freed here


def holds_no_local_kv(req, offload) -> bool:
    """True for an offloaded request whose whole row is padding (`[0, kv_allocated_len)` -> slot 0)."""
    kv = req.kv
    if kv.req_pool_idx is None:
        return False
    found = offload.lookup(kv.req_pool_idx)
    if found is None or found.rid != marks.offload_id(req):
        return False
    return max(kv.cache_protected_len, found.prompt_tokens) >= kv.kv_allocated_len


def _pads(batch, token_per_req: int = 1):
    """This process's `DecodeOffload` when `batch` is a decode batch the padding path supports (page size
    1, one token per request, no speculative decoding, no beam rows, decoder-only, no SWA tree, no
    HiSparse, not NPU); else None, and the hooks leave SGLang's original alone."""
    offload = decode_state.current()
    if offload is None or token_per_req != 1 or batch.token_to_kv_pool_allocator.page_size != 1:
        return None
    from sglang.srt.mem_cache import allocation

    if (not batch.spec_algorithm.is_none() or allocation._is_npu or batch.model_config.is_encoder_decoder
            or batch.tree_cache.supports_swa() or batch.hisparse_coordinator is not None
            or len(batch.reqs) != int(batch.seq_lens.shape[0])):  # fmt: skip
        return None
    return offload


def alloc_for_decode_hook(original, batch, token_per_req):
    """Changes: in a decode step with offloaded rows, only local rows get a new KV slot; an offloaded row
    gets the padding slot 0 in `out_cache_loc` and in its `req_to_token` entry, its `kv_allocated_len` and
    `kv_committed_len` still advance by one (SGLang's sequence-length logic is unchanged), and its
    `cache_protected_len` moves to the end of the row (SGLang treats the row as owning no local KV).
    Why: that token's k, v go to the executor on the prefill instance; a local slot would never be
    written or read (the HBM Adrenaline exists to save)."""
    offload = _pads(batch, token_per_req)
    padded = [holds_no_local_kv(req, offload) for req in batch.reqs] if offload is not None else []
    if not any(padded):
        return original(batch, token_per_req)
    from sglang.srt.mem_cache.allocation import alloc_token_slots

    batch.maybe_evict_swa()  # as stock (a no-op here: SWA trees take the original path)
    allocator = batch.tree_cache.token_to_kv_pool_allocator
    local = [i for i, pad in enumerate(padded) if not pad]
    slots = alloc_token_slots(batch.tree_cache, len(local)) if local else None  # [M] int64, raises when full
    out_cache_loc = torch.full((len(padded),), PADDING_SLOT, dtype=torch.int64, device=batch.device)  # [B]
    if slots is not None:
        out_cache_loc[torch.tensor(local, dtype=torch.int64, device=batch.device)] = slots.to(torch.int64)
    batch.req_to_token_pool.write((batch.req_pool_indices, batch.seq_lens.clone()), out_cache_loc.to(torch.int32))
    try:
        batch.req_to_token_pool.alloc_aux_to_lengths(
            req_pool_indices_cpu=batch.req_pool_indices_cpu, target_seq_lens_cpu=batch.seq_lens_cpu + token_per_req
        )
    except Exception:
        if slots is not None:
            allocator.free(slots)
        raise
    for req, pad in zip(batch.reqs, padded, strict=True):
        req.kv.kv_allocated_len += token_per_req
        req.kv.kv_committed_len += token_per_req
        if pad:
            req.kv.cache_protected_len = req.kv.kv_allocated_len
    return out_cache_loc


def new_tokens_hook(original, self, selected_indices=None):
    """Changes: the next decode step's token demand (`check_decode_mem`, the retraction loop) leaves out
    padded offloaded rows. Why: they take no local slot (`alloc_for_decode_hook`), so they must neither
    trigger a retraction nor be counted while SGLang retracts to make room."""
    needed = original(self, selected_indices)
    offload = _pads(self)
    if offload is None:
        return needed
    reqs = self.reqs if selected_indices is None else [self.reqs[i] for i in selected_indices]
    return needed - sum(holds_no_local_kv(req, offload) for req in reqs)


def retraction_order_hook(original, reqs):
    """Changes: padded offloaded requests move to the front of SGLang's keep order, so decode retraction
    takes local requests first (it pops from the end). Why: retracting an offloaded request frees no local
    slot, and its release tells the executor to drop the KV the request would resume from."""
    order = original(reqs)
    offload = decode_state.current()
    if offload is None:
        return order
    keep = [i for i in order if holds_no_local_kv(reqs[i], offload)]
    if not keep:
        return order
    kept = set(keep)
    return keep + [i for i in order if i not in kept]


def active_req_count_hook(original, self, extra_reserved_reqs=0):
    """Changes: decode admission reserves `num_reserved_decode_tokens` only for requests that decode
    locally; padded offloaded requests (running, transferring or waiting) are not counted. Why: their
    decode tokens take no local slot, and the reserve would otherwise cap the batch that offloading
    exists to grow."""
    count = original(self, extra_reserved_reqs)
    offload = decode_state.current()
    if offload is None or self.token_to_kv_pool_allocator.page_size != 1:
        return count
    scheduler = self.scheduler
    reqs = [*scheduler.running_batch.reqs, *(d.req for d in self.transfer_queue.queue if not d.host_staged),
            *scheduler.waiting_queue]  # fmt: skip
    return count - sum(holds_no_local_kv(req, offload) for req in reqs)


def admission_tokens_hook(original, self, req, allocated_tokens, prefix_len, retractable_tokens):
    """Changes: an offloaded request's admission demand on decode's KV pool is 0 tokens (stock: its prompt
    plus `num_reserved_decode_tokens`, or prompt plus max_new_tokens minus what running requests could give
    back); it is admitted while the pool's budget for local requests is not overdrawn and a request slot is
    free. Why: it takes no local KV slot, neither for its prompt (`decode_hooks.pre_alloc_hook`) nor per
    decode step (`alloc_for_decode_hook`); stock pricing blocks it behind local requests near the cap, which
    caps the batch that offloading exists to grow at what the pool holds locally."""
    needed = original(self, req, allocated_tokens, prefix_len, retractable_tokens)
    args = flags.of(self.scheduler.server_args)
    if (decode_state.current() is None or args.role != "decode" or not marks.is_offloaded(req, args)
            or self.token_to_kv_pool_allocator.page_size != 1):  # fmt: skip
        return needed
    return 0


def offloaded_first_hook(original, self, rids_to_check=None, pp_good_rids=None, pp_bad_rids=None):
    """Changes: the pre-allocation queue is tried offloaded requests first, then local ones, each group in
    arrival order. Why: SGLang admits in FIFO order and stops at the first request that does not fit
    (`pop_preallocated`: "Pop the preallocated requests from the pending queue (FIFO)"); an offloaded request
    asks decode for no KV (`admission_tokens_hook`), so behind a local request waiting for memory it would
    wait for nothing, its prefill and first token held up, while the executor's memory it was sent for sits
    unused. Local requests keep their order among themselves and lose no KV to this (offloaded ones take a
    request slot, no tokens)."""
    args = flags.of(self.scheduler.server_args)
    if (decode_state.current() is not None and args.role == "decode" and self.pp_size == 1
            and self.token_to_kv_pool_allocator.page_size == 1):  # fmt: skip
        offloaded = [marks.is_offloaded(d.req, args) for d in self.queue]
        if any(offloaded) and offloaded != sorted(offloaded, reverse=True):  # a local request is ahead of one
            self.queue[:] = ([d for d, off in zip(self.queue, offloaded) if off]
                             + [d for d, off in zip(self.queue, offloaded) if not off])  # fmt: skip
    return original(self, rids_to_check, pp_good_rids, pp_bad_rids)


def hooks(hook_type) -> list[tuple[str, object, object]]:
    around = hook_type.AROUND
    return [
        (ALLOC_FOR_DECODE, alloc_for_decode_hook, around),
        (NEW_TOKENS_NEXT_DECODE, new_tokens_hook, around),
        (RETRACTION_ORDER, retraction_order_hook, around),
        (ACTIVE_REQ_COUNT, active_req_count_hook, around),
        (ADMISSION_TOKENS, admission_tokens_hook, around),
        (POP_PREALLOCATED, offloaded_first_hook, around),
    ]

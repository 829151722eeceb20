"""Prefill hooks: keep the KV of offloaded requests after prefill, release it at finish or abort.

All are AROUND hooks and do nothing unless the instance runs with `--adrenaline-role prefill` and the
request is offloaded (`marks.is_offloaded`). State lives on the scheduler object (`_adrenaline_kept`).
"""

from __future__ import annotations

import functools
import logging
import time

from adrenaline_sgl.sglang_ext import decode_hooks, flags, marks
from adrenaline_sgl.sglang_ext.prefill_colocation import COLOCATION_ATTR
from adrenaline_sgl.sglang_ext.prefill_kept import MAX_NEW_ATTR, KeptKV, held_by_adrenaline

_MIXIN = "sglang.srt.disaggregation.prefill.SchedulerDisaggregationPrefillMixin"
INFLIGHT = f"{_MIXIN}.process_disagg_prefill_inflight_queue"
TRANSFER_FAILURE = f"{_MIXIN}.handle_inflight_transfer_failure"
SEND_KV_CHUNK = f"{_MIXIN}._send_kv_chunk"
RELEASE_KV = "sglang.srt.mem_cache.common.release_kv_cache"
ABORT = "sglang.srt.managers.scheduler.Scheduler.abort_request"
_OBSERVER = "sglang.srt.managers.scheduler_components.pool_stats_observer.SchedulerPoolStatsObserver"
HELD_TOKENS = f"{_OBSERVER}.session_held_tokens"
HELD_REQS = f"{_OBSERVER}.session_held_req_count"
INIT_DISAGG = "sglang.srt.managers.scheduler.Scheduler.init_disaggregation"
ADD_TO_QUEUE = "sglang.srt.managers.scheduler.Scheduler._add_request_to_queue"
PROCESS_REQ = "sglang.srt.disaggregation.prefill.PrefillBootstrapQueue._process_req"
ON_IDLE = "sglang.srt.managers.scheduler.Scheduler.on_idle"
SERVER_ATTR = "_adrenaline_executor"
STORE_ATTR = "_adrenaline_kept"

logger = logging.getLogger(__name__)

# Requests whose next release_kv_cache is a "keep" (set only inside the inflight-queue call), by id(req).
_KEEP_NEXT_RELEASE: dict[int, KeptKV] = {}
# Requests credited with executor slots at the hand-off and not kept yet, by id(req): a release that is not a
# keep (transfer failed, aborted, requeued) gives the credit back.
_CREDITED: dict[int, KeptKV] = {}


def _bytes_per_token(pool) -> int:
    bufs = list(getattr(pool, "k_buffer", None) or []) + list(getattr(pool, "v_buffer", None) or [])
    return sum(b[0].numel() * b.element_size() for b in bufs)


def kept_store(scheduler) -> KeptKV | None:
    """This prefill scheduler's KeptKV (made on first use); None unless the role is `prefill`."""
    store = getattr(scheduler, STORE_ATTR, None)
    if store is None and flags.of(scheduler.server_args).role == "prefill":
        allocator = scheduler.token_to_kv_pool_allocator
        store = KeptKV(_bytes_per_token(allocator.get_kvcache()), allocator=allocator)
        setattr(scheduler, STORE_ATTR, store)
    return store


def init_disaggregation_hook(original, self):
    """Changes: a prefill instance also builds the attention executor over its KV pool (reserving the
    executor's decode-token slots) and serves it on `--adrenaline-executor-host/port`.
    Why: Adrenaline runs offloaded requests' decode attention on the prefill GPU, next to their KV."""
    result = original(self)
    args = flags.of(self.server_args)
    if args.role == "prefill":
        from adrenaline_sgl.sglang_ext.prefill_executor import host_executor

        kept, hosted = host_executor(self, args)
        setattr(self, STORE_ATTR, kept)
        setattr(self, SERVER_ATTR, hosted)
    return result


def inflight_hook(original, self, rids_to_check=None):
    """Changes: an offloaded request whose transfer (first token and metadata only) succeeded keeps its
    `req_to_token` row and KV slots instead of `release_kv_cache`; pending releases are applied first.
    Why: Adrenaline runs that request's decode attention here, on this KV (no KV transfer to decode)."""
    store = kept_store(self)
    if store is None:
        return original(self, rids_to_check)
    coloc = getattr(self, COLOCATION_ATTR, None)
    if coloc is not None:
        coloc.tick()  # every loop pass; re-plans the executor's SM share once per interval (O(1) otherwise)
    _drain(store)
    args = flags.of(self.server_args)
    marked = [req for req in self.disagg_prefill_inflight_queue if marks.is_offloaded(req, args)]
    for req in marked:
        _KEEP_NEXT_RELEASE[id(req)] = store
    try:
        return original(self, rids_to_check)
    finally:
        for req in marked:
            _KEEP_NEXT_RELEASE.pop(id(req), None)
        _drain(store)  # releases that arrived before this pass kept their requests (decode was faster)


def _drain(store: KeptKV) -> None:
    """`store.drain()`; an error there is logged, never raised into SGLang's scheduler loop."""
    try:
        store.drain()
    except Exception:
        logger.exception("adrenaline: freeing released offloaded requests failed")


def send_kv_chunk_hook(original, self, req, last_chunk=False, end_idx=None):
    """Changes: for an offloaded request the KV sender gets no KV pages: sends of earlier chunks are dropped,
    and the last one goes with no pages, marked as the sender's last chunk (`num_kv_indices = curr_idx`, the
    rule of SGLang's `CommonKVSender._prepare_send_indices`), so the first token, the metadata and the
    state indices still go as usual. Why: its KV stays here; decode preallocated none."""
    if getattr(self, STORE_ATTR, None) is None or not marks.is_offloaded(req, flags.of(self.server_args)):
        return original(self, req, last_chunk=last_chunk, end_idx=end_idx)
    sender = req.disagg_kv_sender
    if last_chunk:
        _admit(self, req, sender)
    real_send = sender.send

    def send_metadata_only(kv_indices, *args, **kwargs):
        if not last_chunk:
            return None
        if "num_kv_tokens" in kwargs:
            kwargs["num_kv_tokens"] = 0
        if hasattr(sender, "curr_idx") and hasattr(sender, "num_kv_indices"):
            sender.num_kv_indices = sender.curr_idx  # this empty send is the last chunk
        return real_send(kv_indices[:0], *args, **kwargs)

    sender.send = send_metadata_only
    try:
        return original(self, req, last_chunk=last_chunk, end_idx=end_idx)
    finally:
        del sender.send  # the sender's own method again


def _admit(scheduler, req, sender) -> None:
    """Capacity is admission: before decode hears of the offloaded `req`, credit its decode tokens against the
    executor's slots (`KeptKV.reserve`). Refused (no room, or its id already offloaded: n > 1), the transfer is
    failed through SGLang's own path: the failure recorded on the sender turns the metadata send's conclusion
    into `Failed` with this reason for decode, which aborts that request alone, and for this scheduler, whose
    inflight queue then releases it as a failed transfer. NOTE: no fallback to a stock KV hand-off is possible
    here: decode has admitted the request without prompt KV slots (the proxy's mark), so there is nowhere to send
    the KV to; the proxy's admission is what keeps these refusals rare."""
    store = getattr(scheduler, STORE_ATTR, None)
    if store is None:
        return
    try:
        why = store.reserve(req, marks.offload_id(req), getattr(scheduler, "tree_cache", None))
    except Exception:  # a bug here must not stop the scheduler: the request is kept, credited at keep if possible
        logger.exception("adrenaline: crediting the executor's slots for %s failed", req.rid)
        return
    if why is None:
        _CREDITED[id(req)] = store
        return
    logger.warning("%s; failing the request", why)
    record = getattr(getattr(sender, "kv_mgr", None), "record_failure", None)
    if record is not None and getattr(req, "bootstrap_room", None) is not None:
        record(req.bootstrap_room, why)
    else:  # a sender without SGLang's failure records: abort it (decode then times out on its side)
        sender.abort()


def process_req_hook(original, self, req):
    """Changes: nothing in SGLang; the request's `max_new_tokens` is remembered (`prefill_kept.MAX_NEW_ATTR`)
    before SGLang's prefill queue sets it to 1. Why: the executor credits an offloaded request's full decode
    length at the hand-off (`KeptKV.reserve`), which that 1 would hide."""
    if getattr(req, MAX_NEW_ATTR, None) is None:
        setattr(req, MAX_NEW_ATTR, getattr(req.sampling_params, "max_new_tokens", None))
    return original(self, req)


def add_request_hook(original, self, req, *args, **kwargs):
    """Changes: nothing in SGLang. On a prefill instance re-planning its executor's SM share
    (`--adrenaline-ttft-slo-ms`), the prompt tokens of each request it admits go into the arrival window.
    Why: the planner needs the prompt tokens/s arriving here (paper technique 2), measured on this thread."""
    result = original(self, req, *args, **kwargs)
    coloc = getattr(self, COLOCATION_ATTR, None)
    if coloc is not None:
        coloc.on_admit(len(req.origin_input_ids))
    return result


def transfer_failure_hook(original, self, req):
    """Changes: nothing for SGLang; forgets the keep mark. Why: a failed handoff releases as stock SGLang."""
    _KEEP_NEXT_RELEASE.pop(id(req), None)
    return original(self, req)


def release_kv_hook(original, req, tree_cache, *, checkpoint):
    """Changes (prefill): for a request marked by `inflight_hook`, the release is deferred into `KeptKV`; it
    later runs SGLang's own release with `checkpoint=False` (the prompt is not inserted into the radix tree,
    the matched prefix is unlocked). Why: the executor reads this KV until decode finishes or aborts.
    Changes (decode): after SGLang's release of an offloaded request (finish or abort), its executor is told
    to release it (`decode_hooks.after_release`). Why: that frees the KV on the prefill instance."""
    store = _KEEP_NEXT_RELEASE.pop(id(req), None)
    credited = _CREDITED.pop(id(req), None)
    if store is None:
        if credited is not None:
            credited.cancel(req)
        row = req.kv.req_pool_idx
        decode_hooks.before_release(req)
        result = original(req, tree_cache, checkpoint=checkpoint)
        decode_hooks.after_release(row, marks.offload_id(req))
        return result
    try:
        store.keep(req, tree_cache, functools.partial(original, req, tree_cache, checkpoint=False),
                   marks.offload_id(req))  # fmt: skip
        return None
    except Exception as err:  # one request fails, never the scheduler: release it as stock SGLang would
        logger.error("adrenaline: the executor cannot take %s (%s); releasing its KV, the request fails", req.rid, err)
        store.cancel(req)
        _fail(req, f"adrenaline: the executor cannot take this request: {err}")
    return original(req, tree_cache, checkpoint=checkpoint)


def _fail(req, message: str) -> None:
    from http import HTTPStatus

    from sglang.srt.disaggregation.utils import prepare_abort

    prepare_abort(req, message, status_code=HTTPStatus.SERVICE_UNAVAILABLE)


def abort_hook(original, self, recv_req):
    """Changes: an abort also frees kept KV of matching requests (SGLang's rid-prefix rule, or all).
    Why: stock SGLang has finished these requests on prefill and would not look at them again."""
    result = original(self, recv_req)
    store = getattr(self, STORE_ATTR, None)
    if store is not None:
        for key in store.keys_of_rids(lambda rid: recv_req.abort_all or rid.startswith(recv_req.rid)):
            store.request_release(key)
        _drain(store)
    return result


def held_tokens_hook(original, self):
    """Changes: KV slots kept for offloaded requests and the executor's reserve count as held (like a
    session's). Why: SGLang's idle memory check would otherwise report them as a leak and stop the server."""
    return original(self) + held_by_adrenaline(self.token_to_kv_pool_allocator)[0]


def held_reqs_hook(original, self):
    """Changes: `req_to_token` rows of kept requests count as held. Why: the same idle check, for rows."""
    return original(self) + held_by_adrenaline(self.token_to_kv_pool_allocator)[1]


def idle_yield_hook(original, self):
    """Changes: a prefill scheduler that hosts the executor sleeps `--adrenaline-executor-idle-yield-us` after
    each pass of its loop that found no batch. Why: without a batch SGLang's loop spins in Python, holding the
    GIL: while requests are in flight (bootstrap, transfers) `on_idle` only does `time.sleep(0)`, which hands
    the GIL over only when the other thread wins the race, and `--sleep-on-idle` parks the loop only when
    nothing is in flight. The executor's thread takes the GIL several times per layer and waited for it
    (docs/perf.md, "The executor beside a spinning scheduler"). After a pass the idle sleeper parked, the
    extra sleep is noise."""
    result = original(self)
    args = flags.of(self.server_args)
    if args.role == "prefill" and args.executor_idle_yield_us > 0 and getattr(self, SERVER_ATTR, None) is not None:
        time.sleep(args.executor_idle_yield_us / 1e6)
    return result


def hooks(hook_type) -> list[tuple[str, object, object]]:
    around = hook_type.AROUND
    return [
        (INIT_DISAGG, init_disaggregation_hook, around),
        (INFLIGHT, inflight_hook, around),
        (ADD_TO_QUEUE, add_request_hook, around),
        (PROCESS_REQ, process_req_hook, around),
        (TRANSFER_FAILURE, transfer_failure_hook, around),
        (SEND_KV_CHUNK, send_kv_chunk_hook, around),
        (RELEASE_KV, release_kv_hook, around),
        (ABORT, abort_hook, around),
        (HELD_TOKENS, held_tokens_hook, around),
        (HELD_REQS, held_reqs_hook, around),
        (ON_IDLE, idle_yield_hook, around),
    ]

"""The attention executor hosted by a prefill instance, over SGLang's own KV pool (no copy).

- The executor's `KVPool` is SGLang's per-layer `k_buffer` / `v_buffer` (same tensors). Prompt slots are
  adopted in place from `KeptKV` (`free_on_release=False`: SGLang frees them through its own release).
- The slots the executor appends decode tokens to come from a block reserved once from SGLang's allocator
  (`offload.pool.ReservedSlots`), so the executor's thread never touches SGLang's allocator, which is not thread-safe.
  The block is `--adrenaline-executor-max-tokens` (or `DEFAULT_RESERVE_FRACTION` of the pool) and is
  counted as used by SGLang, so admission sees the memory the executor may need. Each offloaded request's full
  decode length is credited against it at the hand-off (`KeptKV.reserve`); when the credits exceed it, the
  scheduler thread grows it from the pool's free slots and gives them back as the credits shrink, so a request
  never runs out of slots mid-decode (issue 18 defect 7) and one that cannot be held fails alone, before decode
  runs it.
- `release(rid)` from decode (over the transport) does not free anything on the transport's thread: it
  asks `KeptKV` to free at the scheduler's next pass, where the executor and SGLang both let go.
- Colocation: `--adrenaline-executor-sm-share` and `--adrenaline-executor-partitioner` pick the executor's SM
  partition (`adrenaline_sgl.colocation.executor_partitioner`: green contexts on a GPU, none on CPU). The
  executor's server thread runs on the partition's stream and plans the decode kernel with the partition's
  real SM count. With `--adrenaline-ttft-slo-ms` the share follows load (`colocation/replan.py`): a new
  partition is taken at `begin_step` (a step boundary), on the server thread: new stream, new `num_sms`.
  With several decode instances that boundary is one client's; another client's open step keeps the kernel
  plan it was built with (same results, split for the old SM count) until its own next `begin_step`.
  NOTE: the stream is entered on the server thread only; prompt KV written by the prefill forward is
  complete before adoption (the first token was read back to the host before the inflight queue runs).
- Several decode instances may share this executor, each with its own open step (`ExecutorService`). A
  `begin_step` for a request the scheduler has not adopted yet does not block the server thread: it is
  parked and retried (`NotReadyError`, up to `ADOPT_WAIT_S`) while the other clients' layers are served.
- Transports: `offload.hosted.HostedExecutor` serves it on a thread of this process, the server class from
  `offload.hosted.SERVERS` by `--adrenaline-transport` (`mooncake`, `cuda_ipc`);
  `cuda_ipc` needs the KV pool on a CUDA GPU and says so at start-up; `inproc` serves nothing (tests attach
  an `InprocChannel` to the service).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable

from adrenaline_sgl.colocation.replan import PrefillColocation
from adrenaline_sgl.offload.errors import NotReadyError, OffloadError, UnknownRequestError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.hosted import HostedExecutor, check_transport_here
from adrenaline_sgl.offload.lease import DEFAULT_LEASE_S, for_lease_s
from adrenaline_sgl.offload.pool import KVPool, ReservedSlots
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.sglang_ext.prefill_colocation import COLOCATION_ATTR, executor_partition, make_colocation
from adrenaline_sgl.sglang_ext.prefill_kept import KeptKV

logger = logging.getLogger(__name__)

DEFAULT_RESERVE_FRACTION = 0.125
ADOPT_WAIT_S = 2.0  # how long a decode step may wait for the prefill scheduler to hand a request over


class PrefillExecutorService(ExecutorService):
    """The executor protocol, except that `release` defers to the prefill scheduler (see the module doc)."""

    def __init__(self, executor: AttentionExecutor, kept: KeptKV):
        super().__init__(executor)
        self.kept = kept
        self.on_fault_stop = None  # set by HostedExecutor only with --adrenaline-enable-fault-injection
        self.colocation: PrefillColocation | None = None  # the executor's partition (and its re-planning)
        self.on_new_partition: Callable | None = None  # HostedExecutor: move its thread to the new stream

    def _op_fault_stop(self, args, tensors, client):
        """Fault injection: stop serving after this reply (the executor is gone, SGLang serves on)."""
        if self.on_fault_stop is None:
            raise OffloadError("fault_stop: fault injection is off (--adrenaline-enable-fault-injection)")
        self.on_fault_stop()
        return None, {}

    def _op_release(self, args, tensors, client):
        self.kept.request_release(args["rid"])
        return None, {}

    def _op_renew(self, args, tensors, client):
        """Decode still has these requests: their KV leases run again (offload.lease); returns the ids not held."""
        lease = self.kept.lease
        return {"unknown": lease.renew(args["rids"]) if lease is not None else []}, {}

    def _op_begin_step(self, args, tensors, client):
        # NOTE: decode may see the handoff (first token) a moment before this instance's scheduler has run
        # its inflight queue and adopted the KV; the step is retried for up to ADOPT_WAIT_S instead of failing
        # (parked by the server loop, which serves the other decode clients meanwhile).
        known = set(self.executor.rids)
        missing = [rid for rid in args["rids"] if rid not in known]
        if missing:
            raise NotReadyError(UnknownRequestError(f"begin_step: unknown request {missing[0]!r} (not adopted "
                                                    f"within {ADOPT_WAIT_S} s)"), ADOPT_WAIT_S)
        self._step_boundary()
        return super()._op_begin_step(args, tensors, client)

    def _step_boundary(self) -> None:
        """Between steps: take a re-planned partition (its SM count for this step's kernel plan, its stream)."""
        part = self.colocation.at_step_boundary() if self.colocation is not None else None
        if part is None:
            return
        self.executor.num_sms = part.executor_sms
        if self.on_new_partition is not None:
            self.on_new_partition(part)
        logger.info("adrenaline: executor moved to its new partition: %s SMs", part.executor_sms or "all")

    def _op_stats(self, args, tensors, client):
        stats = dataclasses.asdict(self.executor.stats())
        # the executor's decode-token slots (reserve + grown), the decode tokens credited to its requests, and
        # how many more a new request could be credited now (left in them + free in the prefill pool)
        capacity, credited = self.kept.capacity_tokens, self.kept.credited_tokens
        pool_free = self.kept.allocator.available_size() if self.kept.allocator is not None else 0
        stats.update(capacity_tokens=capacity, credited_tokens=credited,
                     free_tokens=max(0, capacity - credited) + pool_free)  # fmt: skip
        if self.colocation is not None:
            stats["colocation"] = self.colocation.stats()
        return stats, {}


def build_prefill_executor(token_to_kv_pool_allocator, reserve_tokens: int = 0, attention: str = "auto",
                           num_sms: int | None = None):
    """(KeptKV with an executor, its service) over the allocator's KV pool; reserves the executor's slots.
    `num_sms`: the SMs of the executor's partition, for the kernel's split heuristic (None: whole GPU)."""
    pool = token_to_kv_pool_allocator.get_kvcache()
    total = token_to_kv_pool_allocator.available_size()
    reserve = reserve_tokens or max(1, int(total * DEFAULT_RESERVE_FRACTION))
    slots = token_to_kv_pool_allocator.alloc(reserve)
    if slots is None:
        raise ValueError(f"adrenaline executor_max_tokens={reserve}: the KV pool has only {total} free slots")
    shared = KVPool(list(pool.k_buffer), list(pool.v_buffer), ReservedSlots(slots))
    executor = AttentionExecutor(shared, attention=attention, num_sms=num_sms)
    bytes_per_token = sum(b[0].numel() * b.element_size() for b in [*pool.k_buffer, *pool.v_buffer])
    kept = KeptKV(bytes_per_token, executor, allocator=token_to_kv_pool_allocator, reserved_tokens=reserve)
    return kept, PrefillExecutorService(executor, kept)


def host_executor(scheduler, args) -> tuple[KeptKV, HostedExecutor | None]:
    """Build the executor over `scheduler`'s pool, on its SM partition (re-planned with a TTFT SLO), and serve it
    on `args.executor_addr` (`mooncake`, `cuda_ipc`); with `inproc` nothing listens (tests attach an
    `InprocChannel` to `kept`'s service themselves)."""
    allocator = scheduler.token_to_kv_pool_allocator
    k_buffers = allocator.get_kvcache().k_buffer
    device = k_buffers[0].device
    if args.transport != "inproc":
        check_transport_here(args.transport, device)
    coloc = make_colocation(args, str(device), scheduler, len(k_buffers))
    try:
        kept, service = build_prefill_executor(allocator, args.executor_max_tokens, num_sms=coloc.partitioner.num_sms)
        service.colocation = coloc  # keeps the partition (its streams, contexts) alive as long as the executor
        # KV of a dead decode's requests is freed (issue 18 defect 4); args without the field: the default lease.
        # inproc serves no control socket, so no decode could renew: no lease there.
        if args.transport != "inproc":
            kept.lease = for_lease_s(getattr(args, "kv_lease_s", DEFAULT_LEASE_S))
        hosted = None
        if args.transport != "inproc":
            hosted = HostedExecutor(service, args.executor_host, args.executor_port,
                                    getattr(args, "enable_fault_injection", False), stream=coloc.partitioner.stream,
                                    transport=args.transport)  # fmt: skip
    except BaseException:
        coloc.close()
        raise
    if coloc.replanning:
        setattr(scheduler, COLOCATION_ATTR, coloc)
    return kept, hosted


__all__ = ["PrefillExecutorService", "build_prefill_executor", "executor_partition", "host_executor"]

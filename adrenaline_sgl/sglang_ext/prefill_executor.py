"""The attention executor hosted by a prefill instance, over SGLang's own KV pool (no copy).

- The executor's `KVPool` is SGLang's per-layer `k_buffer` / `v_buffer` (same tensors). Prompt slots are
  adopted in place from `KeptKV` (`free_on_release=False`: SGLang frees them through its own release).
- The slots the executor appends decode tokens to come from a block reserved once from SGLang's allocator
  (`ReservedSlots`), so the executor's thread never touches SGLang's allocator, which is not thread-safe.
  The block is `--adrenaline-executor-max-tokens` (or `DEFAULT_RESERVE_FRACTION` of the pool) and is
  counted as used by SGLang, so admission sees the memory the executor may need.
- `release(rid)` from decode (over the transport) does not free anything on the transport's thread: it
  asks `KeptKV` to free at the scheduler's next pass, where the executor and SGLang both let go.
- Colocation: `--adrenaline-executor-sm-share` picks the executor's SM partition
  (`adrenaline_sgl.colocation.executor_partitioner`: green contexts on a GPU, none on CPU). The executor's
  server thread runs on the partition's stream and plans the decode kernel with the partition's real SM
  count. NOTE: the stream is entered on the server thread only; prompt KV written by the prefill forward is
  complete before adoption (the first token was read back to the host before the inflight queue runs).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import torch

from adrenaline_sgl.offload.errors import OffloadError, SlotError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.sglang_ext.prefill_kept import KeptKV

logger = logging.getLogger(__name__)

DEFAULT_RESERVE_FRACTION = 0.125
ADOPT_WAIT_S = 2.0  # how long a decode step may wait for the prefill scheduler to hand a request over


class ReservedSlots:
    """An allocator over a fixed set of slots taken from SGLang's allocator (the `Allocator` protocol)."""

    def __init__(self, slots: torch.Tensor):
        self.slots = slots.to(torch.int64).flatten().cpu()
        self._free = list(reversed(self.slots.tolist()))  # stack, pop from the end
        self._owned = set(self._free)
        self._lock = threading.Lock()

    def available_size(self) -> int:
        return len(self._free)

    def alloc(self, need_size: int) -> torch.Tensor | None:
        with self._lock:
            if need_size > len(self._free):
                return None
            taken = [self._free.pop() for _ in range(need_size)]
        return torch.tensor(taken, dtype=torch.int64)

    def free(self, free_index: torch.Tensor) -> None:
        slots = free_index.to(torch.int64).flatten().tolist()
        with self._lock:
            foreign = [s for s in slots if s not in self._owned]
            if foreign:
                raise SlotError(f"free: slots {foreign} were not reserved for the executor")
            self._free.extend(slots)


class PrefillExecutorService(ExecutorService):
    """The executor protocol, except that `release` defers to the prefill scheduler (see the module doc)."""

    def __init__(self, executor: AttentionExecutor, kept: KeptKV):
        super().__init__(executor)
        self.kept = kept
        self.on_fault_stop = None  # set by HostedExecutor only with --adrenaline-enable-fault-injection

    def _op_fault_stop(self, args, tensors):
        """Fault injection: stop serving after this reply (the executor is gone, SGLang serves on)."""
        if self.on_fault_stop is None:
            raise OffloadError("fault_stop: fault injection is off (--adrenaline-enable-fault-injection)")
        self.on_fault_stop()
        return None, {}

    def _op_release(self, args, tensors):
        self.kept.request_release(args["rid"])
        return None, {}

    def _op_begin_step(self, args, tensors):
        # NOTE: decode may see the handoff (first token) a moment before this instance's scheduler has run
        # its inflight queue and adopted the KV; wait for that, bounded, instead of failing the step.
        deadline = time.monotonic() + ADOPT_WAIT_S
        known = set(self.executor.rids)
        while any(rid not in known for rid in args["rids"]) and time.monotonic() < deadline:
            time.sleep(0.002)
            known = set(self.executor.rids)
        return super()._op_begin_step(args, tensors)


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


class HostedExecutor:
    """The executor's server thread in the prefill scheduler process (transport `mooncake`)."""

    def __init__(self, service: PrefillExecutorService, host: str, port: int, fault_injection: bool = False,
                 stream=None):
        from adrenaline_sgl.offload.transports.mooncake_server import MooncakeServer

        self.stream = stream  # the executor partition's CUDA stream; None: the thread's current stream
        self.server = MooncakeServer(service, host, port)
        self.address = self.server.address
        self._stop = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        if fault_injection:
            service.on_fault_stop = self._stop.set
        self._thread = threading.Thread(target=self._serve, daemon=True, name="adrenaline-executor")
        self._thread.start()

    def _serve(self) -> None:
        on_stream = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with on_stream:  # every kernel the executor launches from this thread goes to its partition
            self.server.serve(self._stop)
        if self.server.service.on_fault_stop is not None:  # stopped by fault injection: let go of the port too
            logger.warning("adrenaline: executor on %s stopped by fault injection", self.address)
            self._close_server()

    def _close_server(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self.server.close()

    @property
    def serving(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        self._close_server()


def host_executor(scheduler, args) -> tuple[KeptKV, HostedExecutor | None]:
    """Build the executor over `scheduler`'s pool and serve it on `args.executor_addr` (mooncake);
    with `inproc` nothing listens (tests attach an `InprocChannel` to `kept`'s service themselves)."""
    if args.transport == "cuda_ipc":
        raise ValueError("adrenaline transport=cuda_ipc: not served from inside SGLang yet; use mooncake")
    allocator = scheduler.token_to_kv_pool_allocator
    part = executor_partition(args, allocator.get_kvcache().k_buffer[0].device)
    kept, service = build_prefill_executor(allocator, args.executor_max_tokens, num_sms=part.num_sms)
    service.partitioner = part  # keep the partition (its streams, contexts) alive as long as the executor
    hosted = HostedExecutor(service, args.executor_host, args.executor_port, args.enable_fault_injection,
                            stream=part.stream) if args.transport == "mooncake" else None  # fmt: skip
    return kept, hosted


def executor_partition(args, device):
    """The executor's SM partition from `--adrenaline-executor-sm-share` (1.0: the whole GPU, unpartitioned)."""
    from adrenaline_sgl.colocation import executor_partitioner

    part = executor_partitioner(args.executor_sm_share, str(device))
    logger.info("adrenaline: executor partition %s on %s: share %.2f, %s SMs", part.name, device,
                args.executor_sm_share, part.num_sms if part.num_sms is not None else "all")
    return part

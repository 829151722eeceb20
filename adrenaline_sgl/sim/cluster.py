"""Mutable state of the simulated GPUs: prefill instances (with their executors) and decode instances.

KV memory is counted in tokens; `used <= reserved <= capacity` holds at every instant. Decode allocates
a local request's prompt KV when it admits it, before prefill runs (SGLang's pre-allocation), and grows
it one token a step (`watermark`, SGLang's rule, retracting when a step cannot grow) or reserves the
maximum length at once (`reserve-max`). An offloaded request reserves its maximum length on its prefill
GPU's executor when the proxy offloads it.
"""

from __future__ import annotations

import heapq
from collections import deque
from dataclasses import dataclass, field


@dataclass
class PrefillGPU:
    """A prefill instance: FCFS queue, one batch at a time, staging KV until the transfer, executor KV."""

    idx: int
    capacity_tokens: int
    exec_capacity_tokens: int  # the most offloaded KV the executor may reserve (capacity - prefill reserve)
    queue: deque = field(default_factory=deque)  # rids waiting for prefill
    queued_tokens: int = 0  # their prompt tokens, summed (the proxy routes by it)
    busy: bool = False
    busy_bytes_per_s: float = 0.0  # HBM traffic of the running prefill batch (for executor contention)
    staging_tokens: int = 0  # prompt KV of prefilled local requests not yet transferred (used == reserved)
    exec_reserved_tokens: int = 0  # max sequence lengths of offloaded requests whose KV lives here
    exec_used_tokens: int = 0  # current KV of offloaded requests here

    @property
    def reserved_tokens(self) -> int:
        return self.staging_tokens + self.exec_reserved_tokens

    @property
    def used_tokens(self) -> int:
        return self.staging_tokens + self.exec_used_tokens

    @property
    def free_tokens(self) -> int:
        return self.capacity_tokens - self.reserved_tokens

    @property
    def exec_free_tokens(self) -> int:
        """KV tokens a new offloaded request may still reserve here."""
        return min(self.exec_capacity_tokens - self.exec_reserved_tokens, self.free_tokens)


@dataclass
class RowGroup:
    """Rows of one decode instance whose attention runs in one place (local, or executor p)."""

    requests: int = 0
    context_tokens: int = 0  # KV tokens attended at the next step, summed over the rows
    max_tokens: int = 0  # maximum sequence lengths, summed

    def add(self, context: int, max_tokens: int) -> None:
        self.requests += 1
        self.context_tokens += context
        self.max_tokens += max_tokens

    def remove(self, context: int, max_tokens: int) -> None:
        self.requests -= 1
        self.context_tokens -= context
        self.max_tokens -= max_tokens


@dataclass
class DecodeGPU:
    """A decode instance: continuous batching over local rows and offloaded rows (one group per executor)."""

    idx: int
    capacity_tokens: int
    n_prefill: int
    prealloc: deque = field(default_factory=deque)  # rids waiting for decode to admit them (before prefill)
    retracted: deque = field(default_factory=deque)  # retracted local rids waiting for their KV to come back
    ready: deque = field(default_factory=deque)  # rids whose KV is here, not yet seen by the decode scheduler
    joining: deque = field(default_factory=deque)  # rids whose first token is out, joining the next step launched
    busy: bool = False
    steps_done: int = 0
    reserved_tokens: int = 0  # KV allocated to local requests (reserve-max: their maximum lengths)
    used_tokens: int = 0  # KV of local requests that is here now (arrived prompts + decoded tokens)
    local_active: int = 0  # local requests holding KV here (admitted: in prefill, transfer, ready or running)
    offloaded_admitted: int = 0  # offloaded requests admitted here (a request slot, no prompt KV)
    local_rids: dict = field(default_factory=dict)  # running local rids in join order (retraction victims)
    local: RowGroup = field(default_factory=RowGroup)
    remote: list[RowGroup] = field(default_factory=list)  # [n_prefill]
    finishing: list = field(default_factory=list)  # heap of (finish step, rid)
    join_step: dict = field(default_factory=dict)  # rid -> steps_done when it (last) joined
    expected_finish: dict = field(default_factory=dict)  # rid -> finish step (stale heap entries ignored)

    def __post_init__(self):
        self.remote = [RowGroup() for _ in range(self.n_prefill)]

    @property
    def batch(self) -> int:
        return self.local.requests + sum(g.requests for g in self.remote)

    @property
    def admitted(self) -> int:
        """Requests holding a request slot here (SGLang's req_to_token rows), retracted ones excluded."""
        return self.local_active + self.offloaded_admitted

    @property
    def offloaded_requests(self) -> int:
        return sum(g.requests for g in self.remote)

    @property
    def free_tokens(self) -> int:
        return self.capacity_tokens - self.reserved_tokens

    def schedule_finish(self, rid: int, steps_left: int) -> None:
        self.join_step[rid] = self.steps_done
        self.expected_finish[rid] = self.steps_done + steps_left
        heapq.heappush(self.finishing, (self.steps_done + steps_left, rid))

    def cancel_finish(self, rid: int) -> None:
        """The request left the batch early (retracted): its heap entry becomes stale."""
        del self.expected_finish[rid]

    def pop_finished(self) -> list[int]:
        done = []
        while self.finishing and self.finishing[0][0] <= self.steps_done:
            step, rid = heapq.heappop(self.finishing)
            if self.expected_finish.get(rid) == step:
                del self.expected_finish[rid]
                done.append(rid)
        return done

"""The attention executor (prefill side): holds offloaded requests' KV and runs their decode attention.

Lifecycle of one offloaded request:
    adopt(rid, slots)            KV already in a shared pool (the SGLang case: no copy), or
    adopt_copy(rid, k, v)        KV copied into this executor's own pool;
    per decode step:  begin_step(rids)                 allocate one slot per request, build the plan
                      step(layer, rids, q, k_new, v_new) -> (o, lse)   for every layer
                      (abort_step() rolls the step back when it cannot finish)
    release(rid)                 free its slots.

NOTE: everything that allocates, frees or builds index tensors happens in `begin_step`/`release`, never in
`step`, so the per-layer path is exactly one `append_kv` plus one `decode_attention` (paper technique 1a).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch

from .attention import resolve_attention
from .errors import OffloadError, PoolFullError, SlotError, UnknownRequestError
from .pool import KVPool


@dataclass
class _Request:
    slots: torch.Tensor  # [capacity] int64; the first `length` entries are the request's KV slots in order
    length: int
    num_adopted: int  # the first `num_adopted` slots came with adopt(); the rest were allocated here
    free_on_release: bool

    def append(self, slot: int) -> None:
        if self.length == self.slots.numel():
            grown = torch.empty(max(16, 2 * self.length), dtype=torch.int64, device=self.slots.device)
            grown[: self.length] = self.slots
            self.slots = grown
        self.slots[self.length] = slot
        self.length += 1


@dataclass(frozen=True)
class StepPlan:
    """One decode step's batch for the executor, built once and used by every layer."""

    step_id: int
    rids: tuple[str, ...]
    new_slots: torch.Tensor  # [N] int64, where this step's k, v go
    kv_indptr: torch.Tensor  # [N+1] int32
    kv_indices: torch.Tensor  # [sum of lengths] int32, each request's slots including the new one
    attention_plan: Any  # the kernel's per-batch plan (None until the query head count is known)


@dataclass(frozen=True)
class ExecutorStats:
    """What the scheduler reads: capacity in slots (tokens), and the time spent in attention."""

    requests: int
    tokens_held: int
    slots_free: int
    capacity_slots: int
    bytes_per_slot: int
    steps: int
    layer_calls: int
    attention_time_s: float

    @property
    def bytes_held(self) -> int:
        return self.tokens_held * self.bytes_per_slot

    @property
    def slots_used(self) -> int:
        """Slots not free in the pool; with a shared pool this includes the prefill engine's own."""
        return self.capacity_slots - self.slots_free


class AttentionExecutor:
    """Decode attention for offloaded requests over a `KVPool` (shared with prefill, or its own)."""

    def __init__(self, pool: KVPool, attention: str = "auto", sm_scale: float | None = None,
                 num_q_heads: int | None = None, num_sms: int | None = None):
        """`num_q_heads` lets `begin_step` plan the kernel (else the first `step` of each step does);
        `num_sms` is the executor's SM share for the Triton kernel's split heuristic (None: the whole GPU)."""
        if num_q_heads is not None and (num_q_heads < 1 or num_q_heads % pool.num_kv_heads):
            raise ValueError(f"num_q_heads must be a positive multiple of Hkv={pool.num_kv_heads}, got {num_q_heads}")
        self.pool = pool
        self.ops = resolve_attention(attention)
        self.sm_scale = sm_scale
        self.num_q_heads = num_q_heads
        self.num_sms = num_sms
        self._requests: dict[str, _Request] = {}
        self._held = torch.zeros(pool.num_slots, dtype=torch.bool)  # [num_slots] slot belongs to some request
        self._plan: StepPlan | None = None
        self._next_step_id = 0
        self._steps = 0
        self._layer_calls = 0
        self._attention_time_s = 0.0
        self._lock = threading.Lock()

    # ---- adoption and release (off the per-layer path) ----

    def adopt(self, rid: str, slots: torch.Tensor, free_on_release: bool = True) -> None:
        """Take over a finished prefill's KV that already sits in `pool` at `slots` `[T]` (no copy).

        With `free_on_release=False` the executor frees only the slots it allocated itself, and `release`
        hands the adopted ones back to the caller (whose allocator owns them).
        """
        slots = slots.to(torch.int64).flatten().cpu()
        with self._lock:
            self._check_new_rid(rid)
            if slots.numel() == 0:
                raise SlotError(f"adopt({rid!r}): a request needs at least one KV slot")
            if int(slots.min()) < 0 or int(slots.max()) >= self.pool.num_slots:
                raise SlotError(f"adopt({rid!r}): slots must lie in [0, {self.pool.num_slots})")
            if slots.unique().numel() != slots.numel() or bool(self._held[slots].any()):
                raise SlotError(f"adopt({rid!r}): slots are repeated or already held by another request")
            self._held[slots] = True
            self._requests[rid] = _Request(slots.to(self.pool.device), slots.numel(), slots.numel(), free_on_release)

    def adopt_copy(self, rid: str, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Copy a prompt's KV `[num_layers, T, Hkv, D]` into slots allocated here; returns the slots `[T]`.

        A full pool raises `PoolFullError` before anything is allocated or written.
        """
        expected = (self.pool.num_layers, k.shape[1] if k.dim() == 4 else -1, self.pool.num_kv_heads,
                    self.pool.head_dim)
        if k.dim() != 4 or tuple(k.shape) != expected or v.shape != k.shape:
            raise ValueError(f"adopt_copy({rid!r}): k and v must be [num_layers, T, Hkv, D] = {expected}, "
                             f"got {tuple(k.shape)} and {tuple(v.shape)}")
        num_tokens = k.shape[1]
        with self._lock:
            self._check_new_rid(rid)
            if num_tokens == 0:
                raise SlotError(f"adopt_copy({rid!r}): a request needs at least one KV token")
            slots = self._alloc(num_tokens, f"adopt_copy({rid!r})")
            for layer in range(self.pool.num_layers):
                self.ops.append_kv(self.pool.k_buffers[layer], self.pool.v_buffers[layer], slots,
                                   k[layer].to(self.pool.device, self.pool.dtype),
                                   v[layer].to(self.pool.device, self.pool.dtype))
            self._held[slots.cpu()] = True
            self._requests[rid] = _Request(slots, num_tokens, 0, True)
            return slots

    def release(self, rid: str) -> torch.Tensor | None:
        """Forget `rid` and free its slots; returns the adopted slots the caller must free, if any."""
        with self._lock:
            req = self._requests.get(rid)
            if req is None:
                raise UnknownRequestError(f"release({rid!r}): unknown request (never adopted or already released)")
            if self._plan is not None and rid in self._plan.rids:
                self._plan = None  # the step that included it is over
            del self._requests[rid]
            slots = req.slots[: req.length].cpu()
            self._held[slots] = False
            if req.free_on_release:
                self.pool.allocator.free(slots.to(self.pool.device))
                return None
            self.pool.allocator.free(slots[req.num_adopted :].to(self.pool.device))
            return slots[: req.num_adopted]

    # ---- one decode step ----

    def begin_step(self, rids: Sequence[str]) -> StepPlan:
        """Allocate this step's slot for each request in `rids` (in batch order) and build the plan."""
        rids = tuple(rids)
        with self._lock:
            if len(set(rids)) != len(rids):
                raise OffloadError(f"begin_step: repeated request ids in {rids}")
            for rid in rids:
                if rid not in self._requests:
                    raise UnknownRequestError(f"begin_step: unknown request {rid!r}")
            self._plan = None
            new_slots = self._alloc(len(rids), "begin_step") if rids else torch.empty(0, dtype=torch.int64)
            self._held[new_slots.cpu()] = True
            lengths = []
            for rid, slot in zip(rids, new_slots.tolist()):
                req = self._requests[rid]
                req.append(slot)
                lengths.append(req.length)
            kv_indptr = torch.zeros(len(rids) + 1, dtype=torch.int32)
            kv_indptr[1:] = torch.tensor(lengths, dtype=torch.int32).cumsum(0)
            parts = [self._requests[rid].slots[: self._requests[rid].length] for rid in rids]
            kv_indices = torch.cat(parts).to(torch.int32) if parts else torch.empty(0, dtype=torch.int32)
            plan = StepPlan(self._next_step_id, rids, new_slots.to(self.pool.device),
                            kv_indptr.to(self.pool.device), kv_indices.to(self.pool.device), None)
            if rids and self.num_q_heads is not None:
                plan = self._plan_attention(plan, self.num_q_heads)
            self._plan = plan
            self._next_step_id += 1
            self._steps += 1
            return self._plan

    def abort_step(self) -> None:
        """Undo the open `begin_step`: its slots go back to the pool, request lengths shrink by one."""
        with self._lock:
            plan = self._plan
            if plan is None:
                return
            self._plan = None
            for rid in plan.rids:
                self._requests[rid].length -= 1
            self._held[plan.new_slots.cpu()] = False
            self.pool.allocator.free(plan.new_slots)

    def step(
        self, layer: int, rids: Sequence[str], q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v `[N, Hkv, D]` at `layer`, then attend: q `[N, Hq, D]` -> (o `[N, Hq, D]`, lse `[N, Hq]`).

        `rids` must be the batch given to `begin_step`, in the same order.
        """
        plan = self._plan
        if plan is None:
            raise OffloadError(f"step(layer={layer}): no open step; call begin_step first")
        if rids is not plan.rids and tuple(rids) != plan.rids:
            raise OffloadError(f"step(layer={layer}): rids differ from the open step's {plan.rids}")
        if not 0 <= layer < self.pool.num_layers:
            raise OffloadError(f"step: layer must lie in [0, {self.pool.num_layers}), got {layer}")
        n = len(plan.rids)
        kv_shape = (n, self.pool.num_kv_heads, self.pool.head_dim)
        if q.dim() != 3 or q.shape[0] != n or q.shape[2] != self.pool.head_dim or tuple(k_new.shape) != kv_shape \
                or tuple(v_new.shape) != kv_shape:
            raise OffloadError(f"step(layer={layer}): need q [N={n}, Hq, D={self.pool.head_dim}] and k, v {kv_shape}, "
                               f"got {tuple(q.shape)}, {tuple(k_new.shape)}, {tuple(v_new.shape)}")
        if n == 0:
            return torch.empty_like(q), torch.empty(0, q.shape[1], dtype=torch.float32, device=q.device)
        if plan.attention_plan is None:  # first layer of a step whose query head count was unknown
            plan = self._plan = self._plan_attention(plan, q.shape[1])
        start = time.perf_counter()
        k_buffer, v_buffer = self.pool.k_buffers[layer], self.pool.v_buffers[layer]
        self.ops.append_kv(k_buffer, v_buffer, plan.new_slots, k_new, v_new)
        o, lse = self.ops.run(plan.attention_plan, q, k_buffer, v_buffer)
        self._attention_time_s += time.perf_counter() - start  # NOTE: launch time only on a GPU (no sync here)
        self._layer_calls += 1
        return o, lse

    # ---- reporting ----

    @property
    def rids(self) -> list[str]:
        return list(self._requests)

    def seq_len(self, rid: str) -> int:
        req = self._requests.get(rid)
        if req is None:
            raise UnknownRequestError(f"seq_len({rid!r}): unknown request")
        return req.length

    def stats(self) -> ExecutorStats:
        with self._lock:
            return ExecutorStats(
                requests=len(self._requests),
                tokens_held=sum(r.length for r in self._requests.values()),
                slots_free=self.pool.allocator.available_size(),
                capacity_slots=self.pool.num_slots,
                bytes_per_slot=self.pool.bytes_per_slot,
                steps=self._steps,
                layer_calls=self._layer_calls,
                attention_time_s=self._attention_time_s,
            )

    # ---- internals ----

    def _check_new_rid(self, rid: str) -> None:
        if not isinstance(rid, str) or not rid:
            raise OffloadError(f"request id must be a non-empty str, got {rid!r}")
        if rid in self._requests:
            raise OffloadError(f"request {rid!r} is already held by the executor")

    def _plan_attention(self, plan: StepPlan, num_q_heads: int) -> StepPlan:
        attention_plan = self.ops.plan(plan.kv_indptr, plan.kv_indices, num_q_heads, self.pool.num_kv_heads,
                                       self.pool.head_dim, self.pool.dtype, self.sm_scale, self.num_sms)
        return replace(plan, attention_plan=attention_plan)

    def _alloc(self, n: int, what: str) -> torch.Tensor:
        slots = self.pool.allocator.alloc(n)
        if slots is None:
            free = self.pool.allocator.available_size()
            raise PoolFullError(f"{what}: the KV pool has {free} free slots, {n} needed; nothing was allocated")
        return slots.to(torch.int64)

"""The attention executor (prefill side): holds offloaded requests' KV and runs their decode attention.

Lifecycle of one offloaded request:
    adopt(rid, slots)            KV already in a shared pool (the SGLang case: no copy), or
    adopt_copy(rid, k, v)        KV copied into this executor's own pool;
    per decode step:  begin_step(rids, client)               allocate one slot per request, build the plan
                      run_layer(client, step_id, layer, q, k_new, v_new) -> (o, lse)   for every layer
                      (abort_step(client) rolls the step back when it cannot finish)
    release(rid)                 free its slots.

Several decode instances share one executor: each connected client (the transport's client id) has its own
open step, so their steps interleave layer by layer, independently. Requests and KV slots live in the one
shared pool; request ids are unique per request, so a request is in at most one client's open step.
`step(layer, rids, ...)` is the checked entry for direct callers (one implicit client, `DIRECT`).

NOTE: everything that allocates, frees or builds index tensors happens in `begin_step`/`release`/
`abort_step`, never in `run_layer`, so the per-layer path is one cheap check, one `append_kv` and one
`decode_attention` (paper technique 1a). Shapes and dtypes of a client's rows are checked once, when it
connects (`ExecutorService`), and no lock is taken per layer: one client's layer never waits on another's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from .attention import resolve_attention
from .errors import OffloadError, PoolFullError, SlotError, UnknownRequestError
from .pool import KVPool

DIRECT = ""  # the client id of callers that use the executor directly (tests, one-client tools)


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


@dataclass
class _Client:
    """One decode client's open step and counters. Its layers are run by one thread at a time (the client's
    transport worker or the server loop), which alone writes `plan`'s lazy kernel plan and the counters."""

    plan: StepPlan | None = None
    rid_set: frozenset[str] = frozenset()
    new_slots: list[int] = field(default_factory=list)  # the open step's slots, host copy (rollback, release)
    layers_run: int = 0  # layers of the open step served; == num_layers: the step is complete
    deferred: list[int] = field(default_factory=list)  # slots of requests released mid-step (see `release`)
    busy: bool = False  # one of its layers is running (set before the plan is read: see `release`)
    steps: int = 0
    layer_calls: int = 0
    attention_time_s: float = 0.0


@dataclass(frozen=True)
class ClientStats:
    """One connected client's share of the executor's work."""

    client: str
    steps: int
    layer_calls: int
    open_step_id: int | None  # its open step (None: none open)
    open_step_rows: int  # offloaded rows of that step
    open_step_layers_run: int


@dataclass(frozen=True)
class ExecutorStats:
    """What the scheduler reads: capacity in slots (tokens), and the time spent in attention.
    `steps`, `layer_calls` and `attention_time_s` count every client, connected or gone."""

    requests: int
    tokens_held: int
    slots_free: int
    capacity_slots: int
    bytes_per_slot: int
    steps: int
    layer_calls: int
    attention_time_s: float
    clients: tuple[ClientStats, ...] = ()

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
        """`num_q_heads` lets `begin_step` plan the kernel (else the first layer of each step does);
        `num_sms` is the executor's SM share for the Triton kernel's split heuristic (None: the whole GPU)."""
        if num_q_heads is not None and (num_q_heads < 1 or num_q_heads % pool.num_kv_heads):
            raise ValueError(f"num_q_heads must be a positive multiple of Hkv={pool.num_kv_heads}, got {num_q_heads}")
        self.pool = pool
        self.ops = resolve_attention(attention)
        self.sm_scale = sm_scale
        self.num_q_heads = num_q_heads
        self.num_sms = num_sms
        self._requests: dict[str, _Request] = {}
        self._held = torch.zeros(pool.num_slots, dtype=torch.bool)  # [num_slots] slot belongs to one request
        # [num_slots] how many requests read a slot adopted with free_on_release=False (the caller's, read-only here)
        self._shared = torch.zeros(pool.num_slots, dtype=torch.int32)
        self._clients: dict[str, _Client] = {}
        self._gone = _Client()  # counters of clients that have ended
        self._next_step_id = 0
        self._lock = threading.Lock()  # requests, slots and plans; never held across a layer

    # ---- adoption and release (off the per-layer path) ----

    def adopt(self, rid: str, slots: torch.Tensor, free_on_release: bool = True) -> None:
        """Take over a finished prefill's KV that already sits in `pool` at `slots` `[T]` (no copy).

        With `free_on_release=False` the executor frees only the slots it allocated itself, and `release`
        hands the adopted ones back to the caller (whose allocator owns them). Such slots are only read here, so
        several requests may adopt the same ones (a radix-cached prefix that they all matched: the caller keeps
        them alive until each request is released); a slot the executor writes to (allocated here, or adopted
        with `free_on_release=True`) is never shared.
        """
        slots = slots.to(torch.int64).flatten().cpu()
        with self._lock:
            self._check_new_rid(rid)
            if slots.numel() == 0:
                raise SlotError(f"adopt({rid!r}): a request needs at least one KV slot")
            if int(slots.min()) < 0 or int(slots.max()) >= self.pool.num_slots:
                raise SlotError(f"adopt({rid!r}): slots must lie in [0, {self.pool.num_slots})")
            if slots.unique().numel() != slots.numel() or bool(self._held[slots].any()) \
                    or (free_on_release and bool(self._shared[slots].any())):
                raise SlotError(f"adopt({rid!r}): slots are repeated or already held by another request")
            if free_on_release:
                self._held[slots] = True
            else:
                self._shared[slots] += 1
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
        """Forget `rid` and free its slots; returns the adopted slots the caller must free, if any.

        A request is in at most one client's open step (a row released from it leaves it: an id adopted again
        later is a new request). Released after that step ran all its layers (the usual case: decode releases a
        finished request), everything is freed now.
        Released mid-step (decode's release overtook a step that still carries the row), the step goes on for
        its other rows untouched; only the slot its remaining layers write this row's k, v to is kept until
        that step is over (the client's next `begin_step`, `abort_step` or disconnect, or any control call
        after its last layer), so no other request can be handed that slot while the step still writes it.
        Once every row of an unfinished step is released the step is closed (its later layers are refused):
        that is how the step of a client that vanished without a goodbye gives its slots back.
        """
        with self._lock:
            self._reap()
            req = self._requests.pop(rid, None)
            if req is None:
                raise UnknownRequestError(f"release({rid!r}): unknown request (never adopted or already released)")
            slots = req.slots[: req.length].cpu()
            owner = self._step_owner(rid)
            keep = 0
            if owner is not None:  # the row leaves its step: a later request may be adopted under the same id
                owner.rid_set = owner.rid_set - {rid}
            if owner is not None and owner.layers_run < self.pool.num_layers:
                owner.deferred.append(int(slots[-1]))  # this step's slot of the row (begin_step appended it)
                keep = 1
                if not owner.rid_set:
                    # nothing left to decode in it (or its client vanished): closed, its later layers refused;
                    # NOTE: a layer of it running now (another thread) may still write: then `_reap` frees
                    self._close_step(owner, free_now=not owner.busy)
            freed = slots[: req.length - keep]
            if req.free_on_release:
                self._held[freed] = False
                self._free(freed)
                return None
            self._shared[slots[: req.num_adopted]] -= 1
            self._held[freed[req.num_adopted :]] = False
            self._free(freed[req.num_adopted :])
            return slots[: req.num_adopted]

    # ---- decode steps, one open step per client ----

    def begin_step(self, rids: Sequence[str], client: str = DIRECT) -> StepPlan:
        """Open `client`'s next step: allocate a slot for each request in `rids` (in batch order) and build the
        plan. The client's previous step, if any, is over (its tokens stay); other clients are not touched."""
        rids = tuple(rids)
        with self._lock:
            self._reap()
            if len(set(rids)) != len(rids):
                raise OffloadError(f"begin_step: repeated request ids in {rids}")
            for rid in rids:
                if rid not in self._requests:
                    raise UnknownRequestError(f"begin_step: unknown request {rid!r}")
            state = self._clients.setdefault(client, _Client())
            for rid in rids:  # a request decodes on one instance; a finished step elsewhere may still list it
                owner = self._step_owner(rid)
                if owner is not None and owner is not state:
                    if owner.layers_run < self.pool.num_layers:
                        raise OffloadError(f"begin_step: request {rid!r} is in another client's unfinished step")
                    self._close_step(owner)
            self._close_step(state)
            new_slots = self._alloc(len(rids), "begin_step") if rids else torch.empty(0, dtype=torch.int64)
            new_cpu = new_slots.cpu()
            self._held[new_cpu] = True
            lengths = []
            for rid, slot in zip(rids, new_cpu.tolist()):
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
            state.plan, state.rid_set, state.new_slots, state.layers_run = plan, frozenset(rids), new_cpu.tolist(), 0
            state.steps += 1
            self._next_step_id += 1
            return plan

    def abort_step(self, client: str = DIRECT) -> None:
        """Undo `client`'s open step: its slots go back to the pool, request lengths shrink by one."""
        with self._lock:
            state = self._clients.get(client)
            if state is not None:
                self._roll_back(state)

    def end_client(self, client: str) -> None:
        """`client` is gone (disconnected): a step it left unfinished is rolled back, a finished one is kept;
        its counters stay in the totals."""
        with self._lock:
            state = self._clients.pop(client, None)
            if state is None:
                return
            if state.plan is not None and state.layers_run < self.pool.num_layers:
                self._roll_back(state)
            self._close_step(state)
            self._gone.steps += state.steps
            self._gone.layer_calls += state.layer_calls
            self._gone.attention_time_s += state.attention_time_s

    def run_layer(self, client: str, step_id: int, layer: int, q: torch.Tensor, k_new: torch.Tensor,
                  v_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer of `client`'s open step `step_id`: append k, v `[N, Hkv, D]` at `layer`, then attend:
        q `[N, Hq, D]` -> (o `[N, Hq, D]`, lse `[N, Hq]`).

        The per-layer path. Row shapes and dtype are the transport's to guarantee (checked once at connect);
        what can change per call is checked here, once: the step is the client's open one, the layer is in
        range and not past the step's last, the row count is the step's.
        """
        state = self._clients.get(client)
        if state is None:
            raise OffloadError(self._refusal(None, step_id, layer, q.shape[0]))
        state.busy = True
        try:
            plan = state.plan
            num_layers = self.pool.num_layers
            if plan is None or plan.step_id != step_id or not 0 <= layer < num_layers \
                    or state.layers_run >= num_layers or q.shape[0] != len(plan.rids):
                raise OffloadError(self._refusal(state, step_id, layer, q.shape[0]))
            if not plan.rids:
                state.layers_run += 1
                return torch.empty_like(q), torch.empty(0, q.shape[1], dtype=torch.float32, device=q.device)
            if plan.attention_plan is None:  # first layer of a step whose query head count was unknown
                plan = state.plan = self._plan_attention(plan, q.shape[1])
            start = time.perf_counter()
            k_buffer, v_buffer = self.pool.k_buffers[layer], self.pool.v_buffers[layer]
            self.ops.append_kv(k_buffer, v_buffer, plan.new_slots, k_new, v_new)
            o, lse = self.ops.run(plan.attention_plan, q, k_buffer, v_buffer)
            state.attention_time_s += time.perf_counter() - start  # NOTE: launch time only on a GPU (no sync)
            state.layer_calls += 1
            state.layers_run += 1
            return o, lse
        finally:
            state.busy = False

    def step(
        self, layer: int, rids: Sequence[str], q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
        client: str = DIRECT,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`run_layer` for direct callers, with every check: `rids` must be the batch given to `begin_step`, in
        the same order; q `[N, Hq, D]`, k, v `[N, Hkv, D]` in the pool's head count and head dim."""
        state = self._clients.get(client)
        plan = state.plan if state is not None else None
        if plan is None:
            raise OffloadError(f"step(layer={layer}): no open step; call begin_step first")
        if rids is not plan.rids and tuple(rids) != plan.rids:
            raise OffloadError(f"step(layer={layer}): rids differ from the open step's {plan.rids}")
        n = len(plan.rids)
        kv_shape = (n, self.pool.num_kv_heads, self.pool.head_dim)
        if q.dim() != 3 or q.shape[0] != n or q.shape[2] != self.pool.head_dim or tuple(k_new.shape) != kv_shape \
                or tuple(v_new.shape) != kv_shape:
            raise OffloadError(f"step(layer={layer}): need q [N={n}, Hq, D={self.pool.head_dim}] and k, v {kv_shape}, "
                               f"got {tuple(q.shape)}, {tuple(k_new.shape)}, {tuple(v_new.shape)}")
        return self.run_layer(client, plan.step_id, layer, q, k_new, v_new)

    def open_plan(self, client: str = DIRECT) -> StepPlan | None:
        """`client`'s open step, if any."""
        state = self._clients.get(client)
        return state.plan if state is not None else None

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
            self._reap()
            states = [*self._clients.values(), self._gone]
            clients = tuple(
                ClientStats(cid, s.steps, s.layer_calls, s.plan.step_id if s.plan is not None else None,
                            len(s.plan.rids) if s.plan is not None else 0, s.layers_run if s.plan is not None else 0)
                for cid, s in self._clients.items())  # fmt: skip
            return ExecutorStats(
                requests=len(self._requests),
                tokens_held=sum(r.length for r in self._requests.values()),
                slots_free=self.pool.allocator.available_size(),
                capacity_slots=self.pool.num_slots,
                bytes_per_slot=self.pool.bytes_per_slot,
                steps=sum(s.steps for s in states),
                layer_calls=sum(s.layer_calls for s in states),
                attention_time_s=sum(s.attention_time_s for s in states),
                clients=clients,
            )

    # ---- internals (the ones that touch slots or plans run under `_lock`) ----

    def _check_new_rid(self, rid: str) -> None:
        if not isinstance(rid, str) or not rid:
            raise OffloadError(f"request id must be a non-empty str, got {rid!r}")
        if rid in self._requests:
            raise OffloadError(f"request {rid!r} is already held by the executor")

    def _step_owner(self, rid: str) -> _Client | None:
        """The client whose open step includes `rid` (at most one: ids are unique per request)."""
        for state in self._clients.values():
            if rid in state.rid_set:
                return state
        return None

    def _close_step(self, state: _Client, free_now: bool = True) -> None:
        """The step is over and its tokens stay; the slots of rows released mid-step go back (now, or at the
        next `_reap` when a layer of it may still be running)."""
        if state.deferred and free_now:
            self._free_cpu(state.deferred)
            state.deferred = []
        state.plan, state.rid_set, state.new_slots, state.layers_run = None, frozenset(), [], 0

    def _roll_back(self, state: _Client) -> None:
        """Undo the open step: every row still held gives its step slot back (a row released meanwhile took its
        slot along or left it in `deferred`)."""
        if state.plan is None:
            return
        back = []
        for rid, slot in zip(state.plan.rids, state.new_slots):
            req = self._requests.get(rid) if rid in state.rid_set else None  # rows released meanwhile are gone
            if req is not None:
                req.length -= 1
                back.append(slot)
        self._free_cpu(back + state.deferred)
        state.deferred = []
        self._close_step(state)

    def _reap(self) -> None:
        """Free the slots of rows released mid-step whose step has run all its layers (or was closed) since."""
        for state in self._clients.values():
            if state.deferred and not state.busy and (state.plan is None
                                                      or state.layers_run >= self.pool.num_layers):
                self._free_cpu(state.deferred)
                state.deferred = []

    def _free_cpu(self, slots: list[int]) -> None:
        if slots:
            index = torch.tensor(slots, dtype=torch.int64)
            self._held[index] = False
            self._free(index)

    def _free(self, slots: torch.Tensor) -> None:
        if slots.numel():
            self.pool.allocator.free(slots.to(self.pool.device))

    def _refusal(self, state: _Client | None, step_id: int, layer: int, rows: int) -> str:
        """Why `run_layer` refused (built only when it does)."""
        plan = state.plan if state is not None else None
        if plan is None:
            return f"layer {layer}: no open step for this client; call begin_step first"
        if plan.step_id != step_id:
            return f"layer {layer}: step {step_id} is not this client's open step ({plan.step_id})"
        if not 0 <= layer < self.pool.num_layers:
            return f"step: layer must lie in [0, {self.pool.num_layers}), got {layer}"
        if state.layers_run >= self.pool.num_layers:
            return f"layer {layer}: step {step_id} has run all its {self.pool.num_layers} layers already"
        return f"layer {layer}: {rows} rows, but step {step_id} has {len(plan.rids)}"

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

"""Prefill side: the KV of offloaded requests, kept after prefill instead of released, and the executor's
capacity for their decode tokens.

`keep()` runs where stock SGLang would release the KV (the inflight queue, transfer done); the
`req_to_token` row and the slots stay allocated and, when an executor is installed, it adopts the slots in
place (shared pool, no copy; a radix-cached prefix that several offloaded requests matched is read by all of
them). `request_release(key)` may come from any thread (the executor's transport, the abort hook); the
scheduler thread frees in `drain()`, through SGLang's own `release_kv_cache`, so SGLang's allocators are only
touched from the thread that owns them.

Capacity is admission: an offloaded request's decode tokens (its full remaining length, `decode_tokens`) are
credited against the executor's slots at the hand-off (`reserve`, before decode hears of the request), taken
from the executor's reserve (`--adrenaline-executor-max-tokens`) and, when the reserve is short, from the
prefill pool's free slots (`grow`, given back when the credits shrink). A request that cannot be credited is
refused there, alone, through SGLang's own transfer failure (see `prefill_hooks.send_kv_chunk_hook`), so once
decode runs a request, the executor never runs out of slots for it (a failing `begin_step` would fail every
offloaded row of decode's step). Accounting is closed under every order of events: a release that arrives
before the request is kept is remembered (`EARLY_RELEASE_TTL_S`) and applied at `keep`; a credit of a request
released without being kept goes back (`cancel`).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adrenaline_sgl.offload.errors import OffloadError

logger = logging.getLogger(__name__)

# Decode steps a request may run beyond its max_new_tokens - len(output_ids): an overlapped decode scheduler
# launches the step after a request's last before it sees that the request finished.
DECODE_SLACK_TOKENS = 2
EARLY_RELEASE_TTL_S = 600.0  # how long a release of a request not kept (yet) is remembered


# the request's max_new_tokens as it arrived (`prefill_hooks.process_req_hook`): SGLang's prefill queue sets
# sampling_params.max_new_tokens to 1 (its own memory estimate), decode keeps the request's
MAX_NEW_ATTR = "adrenaline_max_new_tokens"


def decode_tokens(req) -> int:
    """KV slots the executor may append for `req`: its remaining `max_new_tokens` (SGLang has already capped it
    by the context and the pool) plus `DECODE_SLACK_TOKENS`."""
    max_new = getattr(req, MAX_NEW_ATTR, None)
    if max_new is None:
        max_new = getattr(getattr(req, "sampling_params", None), "max_new_tokens", None)
    if not isinstance(max_new, int):
        return 0
    return max(0, max_new - len(getattr(req, "output_ids", ()) or ())) + DECODE_SLACK_TOKENS


@dataclass
class KeptReq:
    rid: str  # SGLang's rid on this instance (abort matches it)
    key: str  # the executor's id for it (`marks.offload_id`, shared with decode)
    slots: torch.Tensor  # [T] int64 KV slots of the prompt (and first token), in sequence order
    release_fn: Callable[[], None]  # SGLang's release_kv_cache for this request (no radix insert)
    private_tokens: int  # slots SGLang's release will free (allocated minus the tree-protected prefix)
    credit_tokens: int = 0  # decode-token slots credited to it against the executor's capacity


class KeptKV:
    """Offloaded requests' KV held on the prefill instance, by request id, and the executor's decode slots."""

    def __init__(self, bytes_per_token: int, executor=None, allocator=None, reserved_tokens: int = 0):
        self.bytes_per_token = bytes_per_token
        self.executor = executor  # an AttentionExecutor over this instance's pool, or None
        self.allocator = allocator  # SGLang's token allocator the kept slots (and the reserve) come from
        self.reserved_tokens = reserved_tokens  # slots taken once from `allocator` for the executor
        self.lease = None  # offload.lease.KVLeases of the kept KV (None: held until decode releases it)
        self._kept: dict[str, KeptReq] = {}
        self._to_release: list[str] = []
        self._lock = threading.Lock()
        # scheduler thread only:
        self._pending: dict[int, tuple[str, int]] = {}  # id(req) -> (key, credit): credited at hand-off, not kept
        self._credited = 0  # credits of pending and kept requests
        self._grown: list[torch.Tensor] = []  # blocks taken from `allocator` on top of the reserve
        self._grown_tokens = 0  # their slots (an int: read by the executor's stats from another thread)
        self._early: dict[str, float] = {}  # key -> when decode released it before it was kept
        _STORES.add(self)

    # ---- capacity (scheduler thread) ----

    @property
    def capacity_tokens(self) -> int:
        """The executor's decode-token slots now: the reserve plus what was grown."""
        return self.reserved_tokens + self._grown_tokens

    @property
    def credited_tokens(self) -> int:
        return self._credited

    def reserve(self, req, key: str, tree_cache=None) -> str | None:
        """At the hand-off, before decode hears of `req`: credit its decode tokens (growing the executor's slots
        from the pool when short). Returns None when credited (or already), else why it cannot be held."""
        if id(req) in self._pending:
            return None
        if key in self._kept or any(k == key for k, _ in self._pending.values()):
            return (f"adrenaline: request id {key} is already offloaded by another request (SGLang gives every "
                    f"sample of an n > 1 request the same bootstrap room); it cannot be offloaded")
        need = decode_tokens(req) if self.executor is not None else 0
        why = self._credit(need, tree_cache)
        if why is not None:
            return f"adrenaline: the executor cannot hold request {key}: {why}"
        self._pending[id(req)] = (key, need)
        return None

    def cancel(self, req) -> None:
        """`req` was credited at the hand-off but is released without being kept: its credit goes back."""
        found = self._pending.pop(id(req), None)
        if found is not None:
            self._credited -= found[1]
            self._shrink()

    def _credit(self, need: int, tree_cache) -> str | None:
        short = self._credited + need - self.capacity_tokens
        if short > 0:
            block = self._take(short, tree_cache)
            if block is None:
                free = self.allocator.available_size() if self.allocator is not None else 0
                return (f"{need} decode-token slots needed, {self.capacity_tokens - self._credited} left in its "
                        f"reserve and {free} free in the prefill KV pool")
            self.executor.pool.allocator.grow(block)
            self._grown.append(block)
            self._grown_tokens += int(block.numel())
            logger.info("adrenaline: executor slots grown by %d to %d (%d credited)", int(block.numel()),
                        self.capacity_tokens, self._credited + need)  # fmt: skip
        self._credited += need
        return None

    def _take(self, n: int, tree_cache) -> torch.Tensor | None:
        """`n` slots (rounded up to whole pages) from SGLang's allocator, evicting radix-cached KV if needed."""
        if self.allocator is None or not hasattr(self.executor.pool.allocator, "grow"):
            return None
        page = max(1, int(getattr(self.allocator, "page_size", 1) or 1))
        n = -(-n // page) * page
        slots = self.allocator.alloc(n)
        if slots is None and tree_cache is not None and hasattr(tree_cache, "evict"):
            try:
                from sglang.srt.mem_cache.base_prefix_cache import EvictParams

                tree_cache.evict(EvictParams(num_tokens=n - self.allocator.available_size()))
            except Exception as err:  # eviction is an optimisation: refusing the request is the fallback
                logger.warning("adrenaline: evicting the radix cache for the executor failed: %s", err)
            slots = self.allocator.alloc(n)
        return None if slots is None else slots.to(torch.int64)

    def _shrink(self) -> None:
        """Give grown blocks back to SGLang while the credits fit without them (a block whose slots are still in
        use, e.g. a step's slot of a request released mid-step, waits for a later call)."""
        for i in range(len(self._grown) - 1, -1, -1):
            block = self._grown[i]
            if self.capacity_tokens - int(block.numel()) < self._credited:
                break
            if self.executor.pool.allocator.take_back(block):
                del self._grown[i]
                self._grown_tokens -= int(block.numel())
                self.allocator.free(block.to(self.executor.pool.device))

    # ---- keeping and releasing ----

    def keep(self, req, tree_cache, release_fn: Callable[[], None], key: str | None = None) -> KeptReq:
        """Scheduler thread. Raises `OffloadError` (nothing kept, nothing adopted) when the executor cannot take
        the request; the caller then releases it as stock SGLang would."""
        key = key or req.rid
        if key in self._kept:
            raise OffloadError(f"keep({key!r}): request id already kept for another request (n > 1 shares one "
                               f"bootstrap room)")  # fmt: skip
        row, length = req.kv.req_pool_idx, req.kv.kv_allocated_len
        slots = tree_cache.req_to_token_pool.req_to_token[row, :length].to(torch.int64).clone()
        pending = self._pending.pop(id(req), None)
        credit = pending[1] if pending is not None else 0
        if pending is None and self.executor is not None:  # not credited at the hand-off (no KV sender hook ran)
            need = decode_tokens(req)
            why = self._credit(need, tree_cache)
            if why is None:
                credit = need
            else:
                logger.warning("adrenaline: kept %s without credited decode slots (%s): its decode may run out",
                               key, why)  # fmt: skip
        kept = KeptReq(req.rid, key, slots, release_fn, length - req.kv.cache_protected_len, credit)
        if self.executor is not None:
            try:
                self.executor.adopt(key, slots, free_on_release=False)
            except BaseException:
                self._credited -= credit
                self._shrink()
                raise
        self._kept[kept.key] = kept
        if self.lease is not None:
            self.lease.grant(kept.key)
        logger.info("adrenaline: kept KV of %s (%d tokens, %d decode slots credited)%s", kept.key, length, credit,
                    " for the executor" if self.executor is not None else "")  # fmt: skip
        if self._early.pop(key, None) is not None:  # decode finished it before this pass kept it
            self.release(key)
        return kept

    def request_release(self, key: str) -> None:
        """Thread-safe: free `key`'s KV at the scheduler's next `drain()` (or at its `keep`, if that comes later)."""
        with self._lock:
            self._to_release.append(key)

    def keys_of_rids(self, match) -> list[str]:
        """Keys of the kept requests whose SGLang rid satisfies `match(rid)`."""
        return [k.key for k in list(self._kept.values()) if match(k.rid)]

    def drain(self) -> list[str]:
        """Scheduler thread: free every requested release; a release of a request not kept yet is remembered for
        its `keep` (decode may finish a request before this scheduler's pass that keeps it). Returns the ids freed."""
        with self._lock:
            pending, self._to_release = self._to_release, []
        if self.lease is not None:
            pending += self._expired_leases()
        now = time.monotonic()
        freed = []
        for key in pending:
            if self.release(key):
                freed.append(key)
            else:
                self._early[key] = now
        if self._early:
            for key in [k for k, t in self._early.items() if now - t > EARLY_RELEASE_TTL_S]:
                del self._early[key]
        if self._grown:
            self._shrink()
        return freed

    def _expired_leases(self) -> list[str]:
        """Kept KV whose decode stopped renewing its lease (decode died): freed like a release (defect 4)."""
        expired = [key for key in self.lease.expired() if key in self._kept]
        for key in expired:
            logger.warning("adrenaline: the lease of %s's KV expired (no word from its decode for %g s): freeing it",
                           key, self.lease.lease_s)  # fmt: skip
        return expired

    def release(self, key: str) -> bool:
        kept = self._kept.pop(key, None)
        if kept is None:
            return False
        if self.lease is not None:
            self.lease.end(key)
        layers = 0
        try:
            if self.executor is not None and key in self.executor.rids:
                layers = self.executor.stats().layer_calls
                self.executor.release(key)
        finally:
            kept.release_fn()
            self._credited -= kept.credit_tokens
        if self._grown:
            self._shrink()
        logger.info("adrenaline: released KV of %s (executor layer calls so far: %d)", key, layers)
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._kept

    @property
    def num_reqs(self) -> int:
        return len(self._kept)

    @property
    def num_tokens(self) -> int:
        return sum(int(k.slots.numel()) for k in list(self._kept.values()))

    @property
    def num_bytes(self) -> int:
        return self.num_tokens * self.bytes_per_token

    @property
    def held_tokens(self) -> int:
        """Slots of `allocator` held outside SGLang's own queues: kept requests' private KV, the reserve and the
        slots grown on top of it."""
        return sum(k.private_tokens for k in list(self._kept.values())) + self.capacity_tokens


_STORES: weakref.WeakSet[KeptKV] = weakref.WeakSet()


def held_by_adrenaline(allocator) -> tuple[int, int]:
    """(tokens, req_to_token rows) of `allocator`'s pool that this process's KeptKV stores hold."""
    stores = [s for s in list(_STORES) if s.allocator is allocator]
    return sum(s.held_tokens for s in stores), sum(s.num_reqs for s in stores)

"""Prefill side: the KV of offloaded requests, kept after prefill instead of released.

`keep()` runs where stock SGLang would release the KV (the inflight queue, transfer done); the
`req_to_token` row and the slots stay allocated and, when an executor is installed, it adopts the slots in
place (shared pool, no copy; a radix-cached prefix that several offloaded requests matched is read by all of
them). `request_release(rid)` may come from any thread (the executor's transport,
the abort hook); the scheduler thread frees in `drain()`, through SGLang's own `release_kv_cache`, so
SGLang's allocators are only touched from the thread that owns them. A release that arrives before its
request is kept (decode finished it first) is remembered for `EARLY_RELEASE_TTL_S` and applied at `keep`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import torch

logger = logging.getLogger(__name__)

EARLY_RELEASE_TTL_S = 600.0  # how long a release of a request not kept (yet) is remembered


@dataclass
class KeptReq:
    rid: str  # SGLang's rid on this instance (abort matches it)
    key: str  # the executor's id for it (`marks.offload_id`, shared with decode)
    slots: torch.Tensor  # [T] int64 KV slots of the prompt (and first token), in sequence order
    release_fn: Callable[[], None]  # SGLang's release_kv_cache for this request (no radix insert)
    private_tokens: int  # slots SGLang's release will free (allocated minus the tree-protected prefix)


class KeptKV:
    """Offloaded requests' KV held on the prefill instance, by request id."""

    def __init__(self, bytes_per_token: int, executor=None, allocator=None, reserved_tokens: int = 0):
        self.bytes_per_token = bytes_per_token
        self.executor = executor  # an AttentionExecutor over this instance's pool, or None
        self.allocator = allocator  # SGLang's token allocator the kept slots (and the reserve) come from
        self.reserved_tokens = reserved_tokens  # slots taken once from `allocator` for the executor
        self.lease = None  # prefill_lease.KVLeases of the kept KV (None: held until decode releases it)
        self._kept: dict[str, KeptReq] = {}
        self._to_release: list[str] = []
        self._lock = threading.Lock()
        self._early: dict[str, float] = {}  # scheduler thread: key -> when decode released it before it was kept
        _STORES.add(self)

    def keep(self, req, tree_cache, release_fn: Callable[[], None], key: str | None = None) -> KeptReq:
        row, length = req.kv.req_pool_idx, req.kv.kv_allocated_len
        slots = tree_cache.req_to_token_pool.req_to_token[row, :length].to(torch.int64).clone()
        kept = KeptReq(req.rid, key or req.rid, slots, release_fn, length - req.kv.cache_protected_len)
        if self.executor is not None:
            # NOTE: a radix-cached prefix that several offloaded requests matched is adopted by each of them: the
            # executor only reads adopted slots, and SGLang keeps the prefix alive while each request holds it
            # (a private copy of it in the executor's reserve filled the reserve under load: issue 18 defect 1)
            self.executor.adopt(kept.key, slots, free_on_release=False)
        self._kept[kept.key] = kept
        if self.lease is not None:
            self.lease.grant(kept.key)
        logger.info("adrenaline: kept KV of %s (%d tokens)%s", kept.key, length,
                    " for the executor" if self.executor is not None else "")  # fmt: skip
        if self._early.pop(kept.key, None) is not None:  # decode finished it before this pass kept it
            self.release(kept.key)
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
        if self.executor is not None and key in self.executor.rids:
            layers = self.executor.stats().layer_calls
            self.executor.release(key)
        kept.release_fn()
        logger.info("adrenaline: released KV of %s (executor layer calls so far: %d)", key, layers)
        return True

    def __contains__(self, key: str) -> bool:
        return key in self._kept

    @property
    def num_reqs(self) -> int:
        return len(self._kept)

    @property
    def num_tokens(self) -> int:
        return sum(int(k.slots.numel()) for k in self._kept.values())

    @property
    def num_bytes(self) -> int:
        return self.num_tokens * self.bytes_per_token

    @property
    def held_tokens(self) -> int:
        """Slots of `allocator` held outside SGLang's own queues: kept requests' private KV and the reserve."""
        return sum(k.private_tokens for k in self._kept.values()) + self.reserved_tokens


_STORES: weakref.WeakSet[KeptKV] = weakref.WeakSet()


def held_by_adrenaline(allocator) -> tuple[int, int]:
    """(tokens, req_to_token rows) of `allocator`'s pool that this process's KeptKV stores hold."""
    stores = [s for s in list(_STORES) if s.allocator is allocator]
    return sum(s.held_tokens for s in stores), sum(s.num_reqs for s in stores)

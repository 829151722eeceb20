"""Decode side state: which running requests are offloaded, to which executor, and the clients to them.
SGLang-free; the hooks that drive it are in `adrenaline_sgl.sglang_ext` (decode_hooks, decode_alloc, backend).

One `DecodeOffload` per decode scheduler process (`current()`). The decode admission hook `mark()`s a
request when it is admitted offloaded (keyed by its `req_to_token` row, which is what a ForwardBatch
carries); finish and abort `unmark()` it and tell its executor `release(rid)`. The `adrenaline` attention
backend asks `split(req_pool_indices)` once per decode step.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from adrenaline_sgl.offload.client import OffloadClient
from adrenaline_sgl.offload.errors import OffloadError

logger = logging.getLogger(__name__)


RELEASE_RETRY_S = 1.0  # how often decode retries the releases of requests whose executor failed
LEASE_RENEW_S = 2.0  # how often decode renews, on each executor, the KV leases of the requests it still has


@dataclass(frozen=True)
class OffloadedReq:
    rid: str  # the executor's id for it (`marks.offload_id`)
    executor: str  # "host:port" (or "inproc"), the key of its client
    prompt_tokens: int = 0  # row positions [0, prompt_tokens) point at the padding slot, not at local KV


@dataclass(frozen=True)
class Group:
    """The rows of one step that go to one executor, in batch order."""

    executor: str
    rows: torch.Tensor  # [N] int64 positions in the batch
    rids: tuple[str, ...]


@dataclass(frozen=True)
class RowSplit:
    """One decode step's rows: local ones stay with the wrapped backend, groups go to executors."""

    local_rows: torch.Tensor  # [M] int64 positions in the batch
    groups: tuple[Group, ...]
    dead_rows: torch.Tensor = torch.empty(0, dtype=torch.int64)  # offloaded rows whose executor failed: zeros

    @property
    def num_offloaded(self) -> int:
        """Rows not computed by the wrapped backend: remote ones and dead ones."""
        return sum(int(g.rows.numel()) for g in self.groups) + int(self.dead_rows.numel())


class DecodeOffload:
    """Offloaded requests by `req_to_token` row, and one `OffloadClient` per executor (made on first use)."""

    def __init__(self, connect: Callable[[str], OffloadClient],
                 send_release: Callable[[str, str], tuple[bool, object]] | None = None,
                 release_retry_s: float = RELEASE_RETRY_S,
                 send_renew: Callable[[str, list[str]], tuple[bool, object]] | None = None,
                 renew_s: float = LEASE_RENEW_S):
        """`connect(executor)` makes a client; `send_release(executor, rid) -> (ok, why)` releases without one
        (`offload.control.call`), retried every `release_retry_s` s for requests whose executor failed
        (None: only a reconnect through `client()` sends them). `send_renew(executor, rids) -> (ok, result)`
        renews the KV leases of the requests this decode still has (`renew_s` s apart, from the first `mark`;
        None: never, the executor then holds their KV only as long as its lease, `offload.lease`)."""
        self._connect = connect
        self._by_row: dict[int, OffloadedReq] = {}
        self._clients: dict[str, OffloadClient] = {}
        self._failed: dict[int, str] = {}  # row -> why its executor failed (the scheduler aborts the request)
        self._failures_total = 0  # offloaded requests failed by their executor since start (never decreases)
        self._pending_release: dict[str, list[str]] = {}  # executor -> ids to release once it answers again
        # NOTE: closed clients stay referenced: a channel whose transfer thread is stuck keeps its buffers
        # registered with Mooncake, and freeing them would let a new channel reuse (overlap) those addresses.
        self._retired: list[OffloadClient] = []
        self._lock = threading.Lock()
        self._send_release = send_release
        self._release_retry_s = release_retry_s
        self._retrier: threading.Thread | None = None  # runs while releases are pending
        self._closed = threading.Event()
        self._send_renew = send_renew
        self._renew_s = renew_s
        self._renewer: threading.Thread | None = None  # started by the first mark, runs until close

    # ---- admission and release (scheduler thread) ----
    def mark(self, req_pool_idx: int, rid: str, executor: str, prompt_tokens: int = 0) -> None:
        if not executor:
            raise OffloadError(f"request {rid!r} is marked offloaded but names no executor")
        with self._lock:
            self._by_row[int(req_pool_idx)] = OffloadedReq(rid, executor, prompt_tokens)
        self._start_renewer()

    def unmark(self, req_pool_idx: int, release: bool = True) -> OffloadedReq | None:
        """Forget the row; with `release`, tell its executor to free the request's KV (errors logged)."""
        with self._lock:
            found = self._by_row.pop(int(req_pool_idx), None)
            failed = self._failed.pop(int(req_pool_idx), None)
        if found is not None and release and failed is not None:
            # NOTE: not now: connecting to a dead executor would block this scheduler for the connect timeout.
            with self._lock:
                self._pending_release.setdefault(found.executor, []).append(found.rid)
            self._start_retrier()
        elif found is not None and release:
            try:
                self.client(found.executor).release(found.rid)
                logger.info("adrenaline: released %s on %s", found.rid, found.executor)
            except OffloadError as err:  # retried in the background, as for a failed executor
                logger.warning("release of %s on %s failed: %s; retrying", found.rid, found.executor, err)
                with self._lock:
                    self._pending_release.setdefault(found.executor, []).append(found.rid)
                self._start_retrier()
        return found

    def lookup(self, req_pool_idx: int) -> OffloadedReq | None:
        return self._by_row.get(int(req_pool_idx))

    def fail(self, rows: list[int], reason: str) -> None:
        """The executor of these `req_to_token` rows failed: their requests get no more remote steps."""
        with self._lock:
            for row in rows:
                if int(row) in self._by_row and int(row) not in self._failed:
                    self._failures_total += 1
                self._failed.setdefault(int(row), reason)

    def failed(self) -> dict[int, str]:
        with self._lock:
            return dict(self._failed)

    @property
    def num_offloaded(self) -> int:
        return len(self._by_row)

    # ---- per step (forward thread) ----
    def client(self, executor: str) -> OffloadClient:
        with self._lock:
            found = self._clients.get(executor)
            if found is None:
                found = self._clients[executor] = self._connect(executor)
                pending = self._pending_release.pop(executor, [])
            else:
                pending = []
        for rid in pending:  # requests aborted while it was failing: their KV on prefill is freed now
            try:
                found.release(rid)
                logger.info("adrenaline: released %s on %s (after its failure)", rid, executor)
            except OffloadError as err:
                logger.warning("release of %s on %s failed: %s", rid, executor, err)
        return found

    def reconnect(self, executor: str) -> OffloadClient:
        """A fresh client for `executor` in place of the current one (the executor restarted and no longer
        knows it); the old one is retired as a failed executor's is."""
        self.drop_client(executor)
        return self.client(executor)

    def drop_client(self, executor: str) -> None:
        """Forget a failed executor's client (a channel that timed out stays broken); the next request to
        that executor connects afresh."""
        with self._lock:
            client = self._clients.pop(executor, None)
            if client is not None:
                self._retired.append(client)
        if client is not None:
            try:
                client.close()
            except Exception as err:  # closing a broken channel must not fail the step
                logger.warning("closing the client of %s failed: %s", executor, err)

    def split(self, req_pool_indices: torch.Tensor) -> RowSplit:
        """Split a decode batch `[B]` of `req_to_token` rows into local rows and per-executor groups."""
        local: list[int] = []
        dead: list[int] = []
        by_executor: dict[str, tuple[list[int], list[str]]] = {}
        for pos, row in enumerate(req_pool_indices.tolist()):
            found = self._by_row.get(row)
            if found is None:
                local.append(pos)
            elif row in self._failed:
                dead.append(pos)
            else:
                rows, rids = by_executor.setdefault(found.executor, ([], []))
                rows.append(pos)
                rids.append(found.rid)
        groups = tuple(
            Group(executor, torch.tensor(rows, dtype=torch.int64), tuple(rids))
            for executor, (rows, rids) in by_executor.items()
        )
        return RowSplit(torch.tensor(local, dtype=torch.int64), groups, torch.tensor(dead, dtype=torch.int64))

    def recent_round_trips_ms(self, window_s: float | None = None) -> list[float]:
        """Every connected client's per-layer round trips (ms) of the last `window_s` seconds (any thread)."""
        with self._lock:
            clients = list(self._clients.values())
        return [ms for c in clients for ms in c.recent_round_trips_ms(window_s)]

    def counts(self) -> dict[str, int]:
        """`offloaded`: admitted offloaded requests not yet finished, failed ones excluded; `failed`: those
        whose executor failed (being aborted); `failures_total`: every offloaded request failed by its executor
        since start (a counter: the ones being aborted are gone a moment later, this stays); `executors`:
        connected clients. Any thread."""
        with self._lock:
            failed = sum(1 for row in self._by_row if row in self._failed)
            return {"offloaded": len(self._by_row) - failed, "failed": failed, "failures_total": self._failures_total,
                    "executors": len(self._clients)}  # fmt: skip

    # ---- releases of failed executors' requests (background) ----
    def _start_retrier(self) -> None:
        with self._lock:
            if self._send_release is None or self._retrier is not None or self._closed.is_set():
                return
            self._retrier = threading.Thread(target=self._retry_releases, daemon=True,
                                             name="adrenaline-release-retry")  # fmt: skip
        self._retrier.start()

    def _retry_releases(self) -> None:
        """Send pending releases until each executor takes them; the thread ends when none is left.
        Why not only at the next reconnect (`client()`): the proxy may send that executor no new request for a
        long time (it may even consider it unhealthy), and prefill would hold the failed requests' KV meanwhile.
        Off the scheduler thread: an executor that is still stalled costs this thread its timeout, not a step."""
        while not self._closed.wait(self._release_retry_s):
            with self._lock:
                pending, self._pending_release = self._pending_release, {}
                if not pending:
                    self._retrier = None
                    return
            left: dict[str, list[str]] = {}
            for executor, rids in pending.items():
                for i, rid in enumerate(rids):
                    ok, why = self._send_release(executor, rid)
                    if not ok:  # still unreachable: this and the rest of its ids wait for the next round
                        left[executor] = rids[i:]
                        logger.debug("release of %s on %s not yet possible: %s", rid, executor, why)
                        break
                    logger.info("adrenaline: released %s on %s (after its failure, retried)", rid, executor)
            with self._lock:
                for executor, rids in left.items():
                    self._pending_release[executor] = rids + self._pending_release.get(executor, [])

    # ---- KV leases on the executors (background) ----
    def leased(self) -> dict[str, list[str]]:
        """The requests whose KV this decode still needs, by executor: every marked one but those whose
        executor failed (being aborted; their release is on its way)."""
        with self._lock:
            found: dict[str, list[str]] = {}
            for row, req in self._by_row.items():
                if row not in self._failed:
                    found.setdefault(req.executor, []).append(req.rid)
            return found

    def renew_leases(self) -> dict[str, object]:
        """One round: tell each executor which of its requests this decode still has; returns what each
        answered (its result, or why it failed: a dead executor's leases just run out, nothing else to do)."""
        answers: dict[str, object] = {}
        for executor, rids in self.leased().items():
            ok, result = self._send_renew(executor, rids)
            answers[executor] = result
            if not ok:
                logger.debug("renewing %d lease(s) on %s failed: %s", len(rids), executor, result)
            elif isinstance(result, dict) and result.get("unknown"):
                logger.debug("executor %s holds no KV for %s", executor, result["unknown"])
        return answers

    def _start_renewer(self) -> None:
        with self._lock:
            if self._send_renew is None or self._renewer is not None or self._closed.is_set():
                return
            self._renewer = threading.Thread(target=self._renew_loop, daemon=True, name="adrenaline-lease-renew")
        self._renewer.start()

    def _renew_loop(self) -> None:
        """Why a thread of its own: the renewals must go on while the scheduler thread is in a long step or
        waits on a slow executor; a control call never blocks longer than its timeout."""
        while not self._closed.wait(self._renew_s):
            try:
                self.renew_leases()
            except Exception as err:  # a renewal that fails must not end the renewals
                logger.warning("adrenaline: lease renewal failed: %s", err)

    def pending_releases(self) -> dict[str, list[str]]:
        with self._lock:
            return {e: list(r) for e, r in self._pending_release.items()}

    def close(self) -> None:
        self._closed.set()
        for c in self._clients.values():
            c.close()
        self._clients.clear()


_CURRENT: DecodeOffload | None = None


def install(offload: DecodeOffload | None) -> None:
    """Make `offload` this process's decode offload state (None removes it)."""
    global _CURRENT
    _CURRENT = offload


def current() -> DecodeOffload | None:
    return _CURRENT

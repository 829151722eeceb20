"""Prefill side: a lease on the KV kept for each offloaded request, so KV whose decode is gone is freed.

Why: prefill keeps an offloaded request's KV until decode says `release` (finish or abort). A decode that dies
(SIGKILL, OOM, a host lost) never says it, and before this the KV stayed held forever, also after decode came
back (issue 18 defect 4): enough of that fills the pool. Each kept request now holds a lease of `lease_s`
seconds, granted when prefill keeps its KV and renewed by every decode that still has the request: decode's
`DecodeOffload` sends `renew` with the ids it holds to each executor every `decode_state.LEASE_RENEW_S`
seconds (a background thread over the executor's control socket, so a decode step in progress does not delay
it). A lease not renewed in time expires, and the prefill scheduler frees that request's KV at its next pass
(`KeptKV.drain`), as if decode had released it. A decode that is merely slow or stopped for a while (SIGSTOP
for seconds) keeps its leases: `lease_s` is several renewal periods (`MIN_LEASE_S`).

SGLang-free and thread-safe: `renew` runs on the executor's server thread, `grant`, `end` and `expired` on the
prefill scheduler's thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from adrenaline_sgl.offload.decode_state import LEASE_RENEW_S

MIN_LEASE_S = 5 * LEASE_RENEW_S  # a lease outlives several missed renewals (a busy or briefly stopped decode)
DEFAULT_LEASE_S = 20.0


def check_lease_s(lease_s: float, what: str = "kv_lease_s") -> None:
    """0 (no lease: KV is held until decode releases it) or at least `MIN_LEASE_S` seconds."""
    if not (lease_s == 0 or MIN_LEASE_S <= lease_s <= 86400):
        raise ValueError(f"{what}={lease_s}: expected 0 (no lease) or {MIN_LEASE_S:g}..86400 seconds (decode renews "
                         f"every {LEASE_RENEW_S:g} s)")


class KVLeases:
    """Expiry times of kept requests' KV, by the executor's request id."""

    def __init__(self, lease_s: float = DEFAULT_LEASE_S, clock: Callable[[], float] = time.monotonic):
        check_lease_s(lease_s)
        self.lease_s = lease_s
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()
        self.expired_total = 0  # leases that ran out (KV freed without decode's release)

    def grant(self, key: str) -> None:
        """`key`'s KV is kept now: its lease runs from here."""
        with self._lock:
            self._expiry[key] = self._clock() + self.lease_s

    def renew(self, keys: Iterable[str]) -> list[str]:
        """A decode still has these requests: their leases run again from now. Returns the keys not held here
        (already freed, or never kept by this instance: a restarted prefill's)."""
        until = self._clock() + self.lease_s
        unknown = []
        with self._lock:
            for key in keys:
                if key in self._expiry:
                    self._expiry[key] = until
                else:
                    unknown.append(key)
        return unknown

    def end(self, key: str) -> None:
        """`key`'s KV was freed (released by decode, aborted, or expired)."""
        with self._lock:
            self._expiry.pop(key, None)

    def expired(self) -> list[str]:
        """The keys whose lease ran out (forgotten here; the caller frees their KV)."""
        now = self._clock()
        with self._lock:
            gone = [key for key, until in self._expiry.items() if until <= now]
            for key in gone:
                del self._expiry[key]
            self.expired_total += len(gone)
        return gone

    def __len__(self) -> int:
        return len(self._expiry)


def for_lease_s(lease_s: float) -> KVLeases | None:
    """The leases of an executor's kept KV, or None when `lease_s` is 0 (off)."""
    return KVLeases(lease_s) if lease_s else None

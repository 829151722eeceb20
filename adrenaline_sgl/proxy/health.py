"""Which executors the proxy offloads to: a pause after offloaded requests fail there.

Why: a prefill's load report says its executor answers, which is not the same as offloading there working (a
restarted prefill answered while every offloaded request failed, issue 18 defect 5). After `failures`
offloaded requests in a row fail at one executor, the proxy sends it none for `pause_s` (they decode locally,
stock PD); then offloading resumes, and one more failure pauses it again while one success clears the count.
"""

from __future__ import annotations

import threading
import time


class OffloadBreaker:
    """Consecutive offload failures per executor (key: the prefill instance's URL)."""

    def __init__(self, failures: int, pause_s: float, clock=time.monotonic):
        if failures < 1 or pause_s <= 0:
            raise ValueError(f"offload breaker: failures={failures} must be >= 1 and pause_s={pause_s} > 0")
        self.failures, self.pause_s, self.clock = failures, pause_s, clock
        self._failed: dict[str, int] = {}
        self._until: dict[str, float] = {}
        self._lock = threading.Lock()

    def paused(self, key: str) -> bool:
        with self._lock:
            return self.clock() < self._until.get(key, 0.0)

    def failed(self, key: str) -> bool:
        """Count one failed offload; True when it (re)starts a pause."""
        with self._lock:
            self._failed[key] = self._failed.get(key, 0) + 1
            if self._failed[key] >= self.failures and self.clock() >= self._until.get(key, 0.0):
                self._until[key] = self.clock() + self.pause_s
                return True
            return False

    def succeeded(self, key: str) -> None:
        with self._lock:
            self._failed.pop(key, None)

    def snapshot(self) -> dict[str, dict]:
        with self._lock:
            now = self.clock()
            return {key: {"failed_in_a_row": n, "paused_for_s": round(max(0.0, self._until.get(key, 0.0) - now), 1)}
                    for key, n in self._failed.items()}  # fmt: skip

"""The emulated GPU's timeline: forwards queue up like kernels on a stream; results are ready at a time.

A real GPU runs SGLang's forwards asynchronously: the scheduler launches step i+1 while step i still runs
(overlap scheduling), then waits for step i's result (`copy_done.synchronize()`) and processes it. The
emulated GPU does the same with wall-clock times (LLM-Emu's "timer-resolved future"): `submit(ms)` queues a
forward behind the previous one and returns the time its result is ready; `EmulatedDone` stands in for
SGLang's `copy_done` event (`query`, `synchronize`), so SGLang's own waiting and polling decide when a
result is processed. The scheduler's CPU work therefore overlaps emulated GPU time exactly where SGLang's
overlap scheduler overlaps it on a GPU; when the CPU work of a step is longer than the step's modelled time
the emulated GPU idles, which `StepRecord.idle_before_ms` reports (docs/emulator.md, "Overheads").

`Link` is the same for a prefill -> decode link: transfers on one link are serialized.

All times are `time.monotonic()` seconds (system-wide, so comparable across the servers' processes); a
modelled duration of `ms` takes `ms x clock_scale` of wall time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

POLL_SLEEP_S = 0.0005  # a `query()` of an unfinished result sleeps this long: SGLang's prefill loop polls it


class EmulatedGPU:
    """One emulated GPU stream: forwards run back to back, each `ms x clock_scale` of wall time."""

    def __init__(self, clock_scale: float = 1.0, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if not clock_scale >= 1.0:
            raise ValueError(f"clock_scale must be >= 1, got {clock_scale!r}")
        self.clock_scale = clock_scale
        self.now, self.sleep = now, sleep
        self.free_at = 0.0  # when the last submitted forward ends
        self._lock = threading.Lock()

    def submit(self, model_ms: float) -> tuple[float, float]:
        """Queue a forward of `model_ms` (emulated) behind the previous one: (start, done) wall times."""
        if model_ms < 0:
            raise ValueError(f"model_ms must be >= 0, got {model_ms!r}")
        with self._lock:
            start = max(self.now(), self.free_at)
            self.free_at = start + model_ms * self.clock_scale / 1e3
            return start, self.free_at

    def busy_at(self, t: float) -> bool:
        return t < self.free_at

    def wait_until(self, t: float) -> float:
        """Sleep until wall time `t`; returns the seconds slept."""
        left = t - self.now()
        if left > 0:
            self.sleep(left)
            return left
        return 0.0


class EmulatedDone:
    """Stand-in for SGLang's `copy_done` event of one forward: ready at `done_at`."""

    def __init__(self, gpu: EmulatedGPU, done_at: float):
        self.gpu, self.done_at = gpu, done_at

    def record(self, stream=None) -> None:  # SGLang records the event after queuing the copy: nothing to do
        return None

    def query(self) -> bool:
        left = self.done_at - self.gpu.now()
        if left <= 0:
            return True
        self.gpu.sleep(min(left, POLL_SLEEP_S))  # keep SGLang's polling loop from spinning a shared core
        return self.gpu.now() >= self.done_at

    def synchronize(self) -> None:
        self.gpu.wait_until(self.done_at)

    def wait(self, stream=None) -> None:
        self.synchronize()


class Link:
    """A prefill -> decode link: one transfer at a time, each `ms x clock_scale` of wall time."""

    def __init__(self, clock_scale: float = 1.0, now: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        self._gpu = EmulatedGPU(clock_scale, now, sleep)

    def transfer(self, model_ms: float, already_s: float = 0.0) -> float:
        """Occupy the link for `model_ms` (emulated) and block the caller until the transfer is done;
        `already_s` of wall time the real transfer took count toward it. Returns the seconds slept."""
        start, done = self._gpu.submit(max(0.0, model_ms - already_s * 1e3 / self._gpu.clock_scale))
        return self._gpu.wait_until(done)

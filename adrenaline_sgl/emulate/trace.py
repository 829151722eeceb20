"""One row per emulated step, written by each server process: what ran, when, and the scheduler's state.

Columns (`COLUMNS`; times are `time.monotonic()` wall seconds, durations wall ms unless `model_`):
- `kind` prefill | decode | idle; `batch` requests; `new_tokens` (prefill: extend tokens; decode: batch);
  `context_tokens` (KV tokens the step attends); `offloaded` rows whose attention ran on an executor;
- `model_ms` the cost model's time (emulated ms); `launch_s`, `start_s`, `done_s` when SGLang launched the
  forward, when the emulated GPU started it (after the previous step), when it finished; `processed_s` when
  SGLang finished processing the result;
- `idle_before_ms` how long the emulated GPU sat idle before this step (the scheduler's CPU work was
  not hidden: the overhead the emulator does not subtract); `cpu_ms` the scheduler thread's CPU time since
  the previous row (SGLang's real per-step CPU cost on this machine, plus ours);
- the KV pool in tokens (`kv_total`, `kv_available`, `kv_evictable`, `kv_used` = total - available -
  evictable, as SGLang counts it) and queue lengths (`waiting`, `running`, and the PD queues:
  prefill `bootstrap` and `inflight`, decode `prealloc` and `transfer`);
- on an Adrenaline prefill, `exec_tokens` (KV of offloaded requests the executor holds), `exec_reserve` (its
  decode-token slots, carved out of the pool at start: `kv_used` counts them all) and `exec_reserve_free`;
- a decode step's modelled parts (emulated ms, `timing.DecodeTime`; 0 on other steps): `nonattn_ms`,
  `local_attn_ms`, `remote_ms` (the slowest executor's attention + round trips) and its `roundtrip_ms`.

The SGLang glue fills a row from the scheduler (`sglang_ext/emulate_hooks.record_of`).
`experiments/emulated.py` converts wall times to emulated time (minus the run's start, divided by the clock
scale) when it builds the timelines.
"""

from __future__ import annotations

import atexit
import csv
import time
from dataclasses import astuple, dataclass, fields

FLUSH_EVERY_S = 1.0


@dataclass(frozen=True)
class StepRecord:
    kind: str
    batch: int
    new_tokens: int
    context_tokens: int
    offloaded: int
    model_ms: float
    launch_s: float
    start_s: float
    done_s: float
    processed_s: float
    idle_before_ms: float
    cpu_ms: float
    kv_total: int
    kv_available: int
    kv_evictable: int
    kv_used: int
    waiting: int
    running: int
    bootstrap: int
    inflight: int
    prealloc: int
    transfer: int
    exec_tokens: int
    exec_reserve: int
    exec_reserve_free: int
    nonattn_ms: float = 0.0
    local_attn_ms: float = 0.0
    remote_ms: float = 0.0
    roundtrip_ms: float = 0.0


COLUMNS = [f.name for f in fields(StepRecord)]


class StepTrace:
    """Appends `StepRecord`s to a CSV, flushed about once a second (and at exit, by the OS buffers)."""

    def __init__(self, file_path: str):
        self.path = file_path
        self._f = open(file_path, "w", newline="", buffering=1)  # line-buffered: readable while it runs  # noqa: SIM115 (lives as long as the server process)
        self._w = csv.writer(self._f, lineterminator="\n")
        self._w.writerow(COLUMNS)
        self._f.flush()
        self._last_flush = time.monotonic()
        atexit.register(self.close)

    def add(self, rec: StepRecord) -> None:
        self._w.writerow(astuple(rec))
        now = time.monotonic()
        if now - self._last_flush >= FLUSH_EVERY_S:
            self._f.flush()
            self._last_flush = now

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


def read(file_path: str) -> list[dict]:
    """A trace as a list of dicts with numbers converted (kind stays a str)."""
    with open(file_path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for r in rows:
        d = {}
        for k, v in r.items():
            d[k] = v if k == "kind" else float(v)
        out.append(d)
    return out

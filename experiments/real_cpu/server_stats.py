"""Server-side numbers of the real CPU experiment: what the servers themselves report while a point runs.

Sources (all read over HTTP or the executor's control socket, nothing patched):
- SGLang's own `GET /v1/loads?include=core,disagg` on both servers: running and queued requests, KV tokens
  in use, and two cumulative counters SGLang 0.5.23 keeps in its scheduler (`_record_step_counters`):
  `decode_moments` = [steps, sum batch, sum step us, sum batch^2, sum batch x step us, tokens] over contiguous
  decode steps, and `total_prefill_busy_us` (prefill busy time). A point's deltas of those give the decode
  server's mean step time and its step-weighted mean batch, and the prefill core's busy share.
- The plugin's `GET /adrenaline/load` (Adrenaline stack only): decode's running offloaded requests and its
  per-layer round trip p50/p99 over the last minute; prefill's executor address and held KV.
- The executor's `stats` (control call to that address): cumulative attention time, layer calls, steps.

`Poller` samples every `interval_s` on a thread into `Sample`s (the timeline) and `summarize` turns a
point's samples into one row. A server that does not answer in time leaves that field NaN for the sample
(never a hang: every call has a timeout).
"""

from __future__ import annotations

import json
import math
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field, fields

HTTP_TIMEOUT_S = 2.0
CONTROL_TIMEOUT_S = 1.0
NAN = math.nan
MOMENTS = 6  # steps, sum b, sum us, sum b^2, sum b*us, tokens


def get_json(url: str, timeout_s: float = HTTP_TIMEOUT_S) -> dict | None:
    """GET url as JSON; None when it does not answer (in time) or answers something else."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return json.loads(resp.read())
    except (OSError, urllib.error.URLError, ValueError):
        return None


@dataclass
class Sample:
    """One poll of both servers (NaN: not answered, or not reported by this stack)."""

    t_s: float  # seconds since the poller started
    decode_running: float = NAN  # requests in decode's running batch (local + offloaded)
    decode_offloaded: float = NAN  # of those, offloaded (Adrenaline)
    decode_used_tokens: float = NAN  # decode KV tokens in use
    decode_max_tokens: float = NAN  # decode's pool
    decode_max_running: float = NAN  # decode's request slots (SGLang's effective max_running_requests)
    decode_prealloc_queue: float = NAN  # waiting for decode to admit them (before prefill)
    decode_retracted: float = NAN
    prefill_running: float = NAN
    prefill_waiting: float = NAN
    prefill_bootstrap_queue: float = NAN
    executor_kv_tokens: float = NAN  # offloaded KV held on prefill (Adrenaline)
    rtt_p50_ms: float = NAN  # decode's per-layer round trip over its last minute (Adrenaline)
    rtt_p99_ms: float = NAN
    rtt_samples: float = NAN
    # cumulative counters (deltas over a point are what matter)
    decode_steps: float = NAN
    decode_batch_sum: float = NAN
    decode_step_us_sum: float = NAN
    prefill_busy_us: float = NAN
    executor_attention_s: float = NAN
    executor_layer_calls: float = NAN
    executor_steps: float = NAN


SAMPLE_COLUMNS = [f.name for f in fields(Sample)]


def _f(d: dict | None, key: str) -> float:
    if not d or d.get(key) is None:
        return NAN
    try:
        return float(d[key])
    except (TypeError, ValueError):
        return NAN


def _first_load(doc: dict | None) -> dict | None:
    loads = (doc or {}).get("loads") or []
    return loads[0] if loads else None  # one DP rank here


def read_sample(t_s: float, prefill_url: str, decode_url: str, adrenaline: bool) -> Sample:
    """One poll of both servers (and the executor on the Adrenaline stack)."""
    s = Sample(t_s)
    dec = _first_load(get_json(f"{decode_url}/v1/loads?include=core,disagg"))
    if dec:
        s.decode_running = _f(dec, "num_running_reqs")
        s.decode_used_tokens = _f(dec, "num_used_tokens")
        s.decode_max_tokens = _f(dec, "max_total_num_tokens")
        s.decode_max_running = _f(dec, "max_running_requests")
        disagg = dec.get("disaggregation") or {}
        s.decode_prealloc_queue = _f(disagg, "decode_prealloc_queue_reqs")
        s.decode_retracted = _f(disagg, "decode_retracted_queue_reqs")
        moments = dec.get("decode_moments") or [0.0] * MOMENTS
        s.decode_steps, s.decode_batch_sum, s.decode_step_us_sum = (float(x) for x in moments[:3])
    pre = _first_load(get_json(f"{prefill_url}/v1/loads?include=core,disagg"))
    if pre:
        s.prefill_running = _f(pre, "num_running_reqs")
        s.prefill_waiting = _f(pre, "num_waiting_reqs")
        s.prefill_busy_us = _f(pre, "total_prefill_busy_us")
        s.prefill_bootstrap_queue = _f(pre.get("disaggregation"), "prefill_bootstrap_queue_reqs")
    if adrenaline:
        d_load = get_json(f"{decode_url}/adrenaline/load")
        if d_load and d_load.get("offload_stats_ok"):
            s.decode_offloaded = _f(d_load, "offloaded_reqs")
            s.rtt_p50_ms = _f(d_load, "offload_rtt_p50_ms")
            s.rtt_p99_ms = _f(d_load, "offload_rtt_p99_ms")
            s.rtt_samples = _f(d_load, "offload_rtt_samples")
        p_load = get_json(f"{prefill_url}/adrenaline/load")
        if p_load:
            s.executor_kv_tokens = _f(p_load, "executor_kv_tokens")
            addr = p_load.get("executor_addr")
            if addr:
                from adrenaline_sgl.offload import control

                ok, stats = control.call(addr, "stats", None, CONTROL_TIMEOUT_S)
                if ok and isinstance(stats, dict):
                    s.executor_attention_s = _f(stats, "attention_time_s")
                    s.executor_layer_calls = _f(stats, "layer_calls")
                    s.executor_steps = _f(stats, "steps")
    return s


@dataclass
class Poller:
    """Samples both servers every `interval_s` on a daemon thread between `start()` and `stop()`."""

    prefill_url: str
    decode_url: str
    adrenaline: bool
    interval_s: float = 1.0
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self):
        if not self.interval_s > 0:
            raise ValueError(f"poll interval_s={self.interval_s!r} must be > 0")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def poll_once(self) -> Sample:
        s = read_sample(time.monotonic() - self._t0, self.prefill_url, self.decode_url, self.adrenaline)
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.poll_once()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def start(self) -> Poller:
        self._t0 = time.monotonic()
        self.poll_once()  # the counters' starting values
        self._thread = threading.Thread(target=self._loop, name="server-stats", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> list[Sample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3 * HTTP_TIMEOUT_S + CONTROL_TIMEOUT_S + self.interval_s)
        self.poll_once()  # the counters' final values
        return self.samples


SUMMARY_COLUMNS = [
    "decode_batch_mean",  # step-weighted mean decode batch (SGLang's decode moments)
    "decode_batch_max",  # largest running batch polled
    "decode_step_ms_mean",  # mean decode step (SGLang's decode moments)
    "decode_steps",
    "decode_offloaded_mean",  # time-weighted over the polls (Adrenaline)
    "decode_offloaded_max",
    "decode_used_tokens_max",
    "decode_max_tokens",
    "decode_max_running",
    "decode_prealloc_queue_max",
    "executor_kv_tokens_max",
    "rtt_p50_ms",  # decode's per-layer round trip, last minute of the point (Adrenaline)
    "rtt_p99_ms",
    "executor_attn_ms_per_layer",  # the executor's attention time per layer call over the point
    "executor_busy_frac",  # the executor's attention time over the point's wall time
    "prefill_busy_frac",  # SGLang's prefill busy time over the point's wall time
]


def _delta(samples: list[Sample], name: str) -> float:
    vals = [getattr(s, name) for s in samples if not math.isnan(getattr(s, name))]
    return vals[-1] - vals[0] if len(vals) >= 2 else NAN


def _agg(samples: list[Sample], name: str, fn) -> float:
    vals = [getattr(s, name) for s in samples if not math.isnan(getattr(s, name))]
    return float(fn(vals)) if vals else NAN


def summarize(samples: list[Sample]) -> dict[str, float]:
    """One point's server-side row (SUMMARY_COLUMNS) from its samples (first and last bracket the point)."""
    if len(samples) < 2:
        raise ValueError(f"a point needs at least 2 server samples, got {len(samples)}")
    wall_s = samples[-1].t_s - samples[0].t_s
    steps = _delta(samples, "decode_steps")
    batch_sum, us_sum = _delta(samples, "decode_batch_sum"), _delta(samples, "decode_step_us_sum")
    calls, attn_s = _delta(samples, "executor_layer_calls"), _delta(samples, "executor_attention_s")
    last_rtt = [s for s in samples if not math.isnan(s.rtt_p50_ms) and s.rtt_samples > 0]
    return {
        "decode_batch_mean": batch_sum / steps if steps > 0 else NAN,
        "decode_batch_max": _agg(samples, "decode_running", max),
        "decode_step_ms_mean": us_sum / steps / 1e3 if steps > 0 else NAN,
        "decode_steps": steps,
        "decode_offloaded_mean": _agg(samples, "decode_offloaded", lambda v: sum(v) / len(v)),
        "decode_offloaded_max": _agg(samples, "decode_offloaded", max),
        "decode_used_tokens_max": _agg(samples, "decode_used_tokens", max),
        "decode_max_tokens": _agg(samples, "decode_max_tokens", max),
        "decode_max_running": _agg(samples, "decode_max_running", max),
        "decode_prealloc_queue_max": _agg(samples, "decode_prealloc_queue", max),
        "executor_kv_tokens_max": _agg(samples, "executor_kv_tokens", max),
        "rtt_p50_ms": last_rtt[-1].rtt_p50_ms if last_rtt else NAN,
        "rtt_p99_ms": last_rtt[-1].rtt_p99_ms if last_rtt else NAN,
        "executor_attn_ms_per_layer": attn_s * 1e3 / calls if calls > 0 else NAN,
        "executor_busy_frac": attn_s / wall_s if wall_s > 0 and not math.isnan(attn_s) else NAN,
        "prefill_busy_frac": _delta(samples, "prefill_busy_us") / 1e6 / wall_s if wall_s > 0 else NAN,
    }


def sample_row(s: Sample) -> list[float]:
    return list(asdict(s).values())

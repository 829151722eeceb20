"""The one place where metrics are derived from raw records (simulated or measured).

Definitions (the same as SGLang's bench_serving where it has one):
- TTFT of a request   = first_token_s - arrival_s (seconds).
- TPOT of a request   = (finish_s - first_token_s) / (tokens_out - 1), for tokens_out > 1 (ms).
  mean and P99 TPOT are over requests (P99: numpy's linear-interpolation percentile).
- decode throughput   = sum(tokens_out) / (max finish_s - min arrival_s) (output tokens/s; bench_serving's
  output_throughput over the whole run). It counts the drain after the last arrival, when the load falls,
  so past saturation it reads below what the system delivers while loaded.
- total throughput    = sum(prompt_len + tokens_out) / the same duration (bench_serving's and vLLM's
  "total token throughput").
- steady-state window = [arrival of the request at quantile `lo`, arrival at quantile `hi`] (default 10% and
  100%: the first tenth of the arrivals is the warm-up, the drain after the last arrival is excluded). While
  requests still arrive the system is as loaded as the rate makes it; past saturation its queues grow.
- steady-state decode throughput = output tokens the decode steps produce inside the window (pro rata by
  overlap, all decode instances together) / window length; the first token of each request comes from
  prefill and is counted when its prefill ends inside the window. Steady-state total throughput adds the
  prompt tokens of the prefills that end inside the window. Below saturation both equal the offered load
  (rate x mean output, rate x mean prompt + output); past it, what the system sustains.
- finish window (`finish_window`, 20% to 80% of finish times): where the decode GPUs run full batches when
  all requests are queued at once.
- saturation decode throughput = output tokens of the decode steps inside the finish window (pro rata by
  overlap), summed over decode instances, divided by the window length; the first token of each request
  comes from prefill and is not counted.
- FLOP/s, HBM bytes/s of a GPU = the work of its busy intervals (StepSample) that overlaps the window,
  pro rata by overlap, divided by the window length. Prefill GPUs count their prefill batches and their
  executor's attention. Averaged over the instances of a kind.
- HBM capacity fraction of a GPU = (weights + KV used tokens x bytes per token) / HBM bytes, a step function
  of the MemSamples; steady state is its time average over the window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from .records import DECODE, EXECUTOR, PREFILL, MemSample, RequestRecord, SimResult, StepSample


@dataclass(frozen=True)
class RequestMetrics:
    completed: int
    output_tokens: int
    duration_s: float
    mean_ttft_s: float
    p99_ttft_s: float
    mean_tpot_ms: float
    p99_tpot_ms: float
    decode_throughput_tok_s: float
    total_throughput_tok_s: float  # prompt + output tokens over the same duration
    offloaded_frac: float  # share of requests whose attention was offloaded


def request_metrics(requests: Iterable[RequestRecord]) -> RequestMetrics:
    """Latency and throughput of finished requests (unfinished ones are ignored)."""
    done = [r for r in requests if np.isfinite(r.finish_s)]
    if not done:
        raise ValueError("no finished request to compute metrics from")
    arrival = np.array([r.arrival_s for r in done])
    first = np.array([r.first_token_s for r in done])
    finish = np.array([r.finish_s for r in done])
    tokens = np.array([r.tokens_out for r in done])
    ttft = first - arrival
    multi = tokens > 1
    tpot_ms = (finish[multi] - first[multi]) / (tokens[multi] - 1) * 1e3
    duration = float(finish.max() - arrival.min())
    nan = float("nan")
    return RequestMetrics(
        completed=len(done),
        output_tokens=int(tokens.sum()),
        duration_s=duration,
        mean_ttft_s=float(ttft.mean()),
        p99_ttft_s=float(np.percentile(ttft, 99)),
        mean_tpot_ms=float(tpot_ms.mean()) if len(tpot_ms) else nan,
        p99_tpot_ms=float(np.percentile(tpot_ms, 99)) if len(tpot_ms) else nan,
        decode_throughput_tok_s=float(tokens.sum() / duration) if duration > 0 else nan,
        total_throughput_tok_s=float((tokens.sum() + sum(r.prompt_len for r in done)) / duration)
        if duration > 0 else nan,
        offloaded_frac=float(np.mean([r.offloaded for r in done])),
    )


def steady_window(requests: list[RequestRecord], lo: float = 0.1, hi: float = 1.0) -> tuple[float, float]:
    """(start_s, end_s): arrivals of the requests at quantiles lo and hi of arrival order."""
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"steady window quantiles lo={lo}, hi={hi} must satisfy 0 <= lo < hi <= 1")
    arrival = np.sort([r.arrival_s for r in requests])
    start, end = np.quantile(arrival, [lo, hi])
    if end <= start:
        end = start + 1e-9
    return float(start), float(end)


def finish_window(requests: list[RequestRecord], lo: float = 0.2, hi: float = 0.8) -> tuple[float, float]:
    """(start_s, end_s): finish times of the requests at quantiles lo and hi of finish order."""
    if not 0.0 <= lo < hi <= 1.0:
        raise ValueError(f"finish window quantiles lo={lo}, hi={hi} must satisfy 0 <= lo < hi <= 1")
    finish = np.sort([r.finish_s for r in requests if np.isfinite(r.finish_s)])
    start, end = np.quantile(finish, [lo, hi])
    return float(start), float(max(end, start + 1e-9))


@dataclass(frozen=True)
class SteadyThroughput:
    window_s: tuple[float, float]
    decode_tok_s: float  # output tokens/s inside the window (decode steps + first tokens from prefill)
    total_tok_s: float  # the same plus prompt tokens prefilled inside the window


def steady_throughput(result: SimResult, window: tuple[float, float] | None = None) -> SteadyThroughput:
    """Throughput while the system is loaded (module docstring: steady-state window)."""
    window = window or steady_window(result.requests)
    start, end = window
    prefilled = [r for r in result.requests if start <= r.prefill_end_s < end]
    first_tokens = len(prefilled) / (end - start)
    decode = decode_token_rate(result.steps, window) + first_tokens
    prompts = sum(r.prompt_len for r in prefilled) / (end - start)
    return SteadyThroughput(window, decode, decode + prompts)


def decode_token_rate(steps: Iterable[StepSample], window: tuple[float, float]) -> float:
    """Output tokens/s the decode steps produce inside the window (all decode instances together)."""
    start, end = window
    tokens = 0.0
    for s in steps:
        if s.kind != DECODE or s.end_s <= start or s.start_s >= end:
            continue
        span = s.end_s - s.start_s
        tokens += s.batch * (1.0 if span <= 0 else (min(s.end_s, end) - max(s.start_s, start)) / span)
    return tokens / (end - start)


def work_rate(steps: Iterable[StepSample], kinds: tuple[str, ...], window: tuple[float, float],
              n_instances: int) -> tuple[float, float]:
    """(FLOP/s, bytes/s) per instance of the samples of `kinds`, over a window, pro rata by overlap."""
    start, end = window
    flops = bytes_ = 0.0
    for s in steps:
        if s.kind not in kinds or s.end_s <= start or s.start_s >= end:
            continue
        span = s.end_s - s.start_s
        frac = 1.0 if span <= 0 else (min(s.end_s, end) - max(s.start_s, start)) / span
        flops += s.flops * frac
        bytes_ += s.bytes * frac
    length = (end - start) * n_instances
    return flops / length, bytes_ / length


def capacity_timeline(result: SimResult, kind: str, instance: int, t_grid_s: np.ndarray) -> np.ndarray:
    """HBM capacity fraction [len(t_grid_s)] of one GPU at the grid times (value of the last sample <= t)."""
    samples = [m for m in result.mem if m.kind == kind and m.instance == instance]
    info = result.info
    t = np.array([m.t_s for m in samples] or [0.0])
    used = np.array([m.kv_used_tokens for m in samples] or [0])
    idx = np.searchsorted(t, t_grid_s, side="right") - 1
    kv = np.where(idx >= 0, used[np.clip(idx, 0, None)], 0)
    return (info.weight_bytes + kv * info.kv_bytes_per_token) / info.hbm_bytes


def mean_capacity(result: SimResult, kind: str, window: tuple[float, float], points: int = 2000) -> float:
    """Time-averaged HBM capacity fraction of the GPUs of a kind over the window (a fine grid)."""
    instances = sorted({m.instance for m in result.mem if m.kind == kind}) or [0]
    grid = np.linspace(window[0], window[1], points)
    return float(np.mean([capacity_timeline(result, kind, i, grid).mean() for i in instances]))


@dataclass(frozen=True)
class Utilization:
    prefill_tflops: float
    prefill_hbm_bw_gbs: float  # prefill batches + executor attention on the prefill GPU
    decode_tflops: float
    decode_hbm_bw_gbs: float
    prefill_hbm_capacity_frac: float
    decode_hbm_capacity_frac: float
    prefill_compute_util: float  # fractions of peak
    prefill_bw_util: float
    decode_compute_util: float
    decode_bw_util: float


def utilization(result: SimResult, n_prefill: int, n_decode: int,
                window: tuple[float, float] | None = None) -> Utilization:
    """Steady-state utilization of the prefill and decode GPUs (see the module docstring)."""
    window = window or steady_window(result.requests)
    info = result.info
    pf, pb = work_rate(result.steps, (PREFILL, EXECUTOR), window, n_prefill)
    df, db = work_rate(result.steps, (DECODE,), window, n_decode)
    return Utilization(
        prefill_tflops=pf / 1e12,
        prefill_hbm_bw_gbs=pb / 1e9,
        decode_tflops=df / 1e12,
        decode_hbm_bw_gbs=db / 1e9,
        prefill_hbm_capacity_frac=mean_capacity(result, PREFILL, window),
        decode_hbm_capacity_frac=mean_capacity(result, DECODE, window),
        prefill_compute_util=pf / info.peak_flops,
        prefill_bw_util=pb / info.peak_hbm_bytes_per_s,
        decode_compute_util=df / info.peak_flops,
        decode_bw_util=db / info.peak_hbm_bytes_per_s,
    )


def max_memory_excess(mem: Iterable[MemSample], capacity_tokens: int) -> int:
    """max over samples of (used - reserved, reserved - capacity); <= 0 means memory never overflowed."""
    worst = -capacity_tokens
    for m in mem:
        worst = max(worst, m.kv_used_tokens - m.kv_reserved_tokens, m.kv_reserved_tokens - capacity_tokens)
    return worst


def achieved_offload_ratio(steps: Iterable[StepSample], window: tuple[float, float]) -> float:
    """N / M actually decoded: offloaded rows per local row, summed over the decode steps that start inside the
    window (the paper's offload ratio; the `ratio:F` policy only bounds it). NaN when no local row ran."""
    start, end = window
    offloaded = local = 0
    for s in steps:
        if s.kind == DECODE and start <= s.start_s < end:
            offloaded += s.offloaded_rows
            local += s.batch - s.offloaded_rows
    return offloaded / local if local else float("nan")


def roundtrip_hidden_frac(steps: Iterable[StepSample]) -> float:
    """Share of the offload round-trip time hidden under local attention, over all decode steps (NaN if none)."""
    hidden = exposed = 0.0
    for s in steps:
        if s.kind == DECODE and s.offloaded_rows:
            hidden += s.hidden_roundtrip_ms
            exposed += s.exposed_roundtrip_ms
    return hidden / (hidden + exposed) if hidden + exposed > 0 else float("nan")

"""Simulated runs for the figures: one point, and the highest load a system sustains within its SLOs.

Sustainable load (figures 7 and 8; experiments/fig7/README.md): the highest Poisson rate at which, over
the steady-state window (arrivals 10%..100%), the P99 TPOT stays within `tpot_slo_ms` and the P90 TTFT within
`ttft_slo_s` (the queue does not run away), found by geometric bisection in [rate_lo, rate_hi]. The
throughput reported is what a sustained rate delivers in the long run, rate x mean output tokens (every
request is served); the decode throughput measured inside the window is kept beside it as a check (it reads
low when the run is short against request lifetimes: the batch is still filling during the window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.config import SimConfig, WorkloadConfig
from adrenaline_sgl.sim.engine import simulate
from adrenaline_sgl.sim.records import SimResult

from .common import ExperimentError

# The figures' system labels: pd is PD disaggregation (offload never), adrenaline the scheduler's own bound.
SYSTEM_POLICIES = {"pd": "never", "adrenaline": "auto"}


def policy_of(system: str) -> str:
    """The offload policy of a figure's system label (pd | adrenaline); any other label is a policy spec."""
    return SYSTEM_POLICIES.get(system, system)


def cluster(cfg: dict, model: str, policy: str) -> SimConfig:
    """The SimConfig of one run: every SimConfig field the figure's config names, this model and policy."""
    extra = {f.name: cfg[f.name] for f in fields(SimConfig) if f.name in cfg and f.name not in ("model", "offload")}
    return SimConfig(offload=policy, model=model, **extra)


def workload(cfg: dict, name: str, rate: float, num_requests: int | None = None) -> WorkloadConfig:
    paths = cfg.get("dataset_paths") or {}
    return WorkloadConfig(
        name=name,
        request_rate=rate,
        num_requests=int(num_requests or cfg["num_requests"]),
        seed=int(cfg.get("seed", 0)),
        dataset_path=paths.get(name),
        tokenizer=cfg.get("tokenizer"),
        max_context=int(cfg.get("max_context", 4096)),
    )


@dataclass(frozen=True)
class Point:
    result: SimResult
    req: metrics.RequestMetrics

    def util(self, cl: SimConfig) -> metrics.Utilization:
        return metrics.utilization(self.result, cl.n_prefill, cl.n_decode)


REQUEST_COLUMNS = ["rid", "arrival_s", "prompt_len", "output_len", "offloaded", "prefill_instance", "decode_instance",
                   "prefill_start_s", "prefill_end_s", "first_token_s", "finish_s", "tokens_out"]  # fmt: skip


def request_rows(result: SimResult) -> list[list]:
    """The raw per-request timestamps of a run, one row each (columns REQUEST_COLUMNS)."""
    return [[getattr(r, c) if c != "offloaded" else int(r.offloaded) for c in REQUEST_COLUMNS]
            for r in result.requests]


def run_point(cfg: dict, model: str, policy: str, workload_name: str, rate: float,
              num_requests: int | None = None) -> Point:
    """One simulated run with offload policy `policy` (never | always | ratio:F | auto)."""
    if not rate > 0:
        raise ExperimentError(f"request rate {rate!r} must be > 0 (requests/s)")
    res = simulate(cluster(cfg, model, policy), workload(cfg, workload_name, rate, num_requests))
    return Point(res, metrics.request_metrics(res.requests))


def steady_metrics(pt: Point) -> dict:
    """Decode throughput inside the steady-state window (arrivals 10%..100%, `metrics.steady_window`), and
    the TPOT and P90 TTFT of the requests that arrive inside it. Ramp-up and the drain of a finite run are
    excluded."""
    window = metrics.steady_window(pt.result.requests)
    inside = [r for r in pt.result.requests if window[0] <= r.arrival_s <= window[1]]
    m = metrics.request_metrics(inside)
    ttft = np.array([r.first_token_s - r.arrival_s for r in inside])
    return {
        "steady_throughput_tok_s": metrics.steady_throughput(pt.result, window).decode_tok_s,
        "mean_output_tokens": float(np.mean([r.output_len for r in pt.result.requests])),
        "mean_tpot_ms": m.mean_tpot_ms,
        "p99_tpot_ms": m.p99_tpot_ms,
        "p90_ttft_s": float(np.percentile(ttft, 90)),
        "offloaded_frac": m.offloaded_frac,
        "achieved_offload_ratio": metrics.achieved_offload_ratio(pt.result.steps, window),
    }


def sustainable(cfg: dict, model: str, policy: str, workload_name: str, rate_lo: float, rate_hi: float,
                iterations: int, num_requests: int) -> dict:
    """The highest rate in [rate_lo, rate_hi] offload policy `policy` sustains (`meets_slo`), by geometric bisection
    (`iterations` halvings of the log-interval), with the metrics measured at it. NaNs when rate_lo fails."""
    if not 0 < rate_lo < rate_hi:
        raise ExperimentError(f"sustainable-load search needs 0 < rate_lo < rate_hi, got {rate_lo}, {rate_hi}")
    slo_ms, ttft_s = cluster(cfg, model, policy).tpot_slo_ms, float(cfg["ttft_slo_s"])
    nan = math.nan
    best = {"request_rate": nan, "decode_throughput_tok_s": nan, "steady_throughput_tok_s": nan,
            "mean_output_tokens": nan, "mean_tpot_ms": nan, "p99_tpot_ms": nan, "p90_ttft_s": nan,
            "offloaded_frac": nan, "achieved_offload_ratio": nan}
    lo, hi = rate_lo, rate_hi
    for rate in [rate_lo, rate_hi] + [None] * iterations:
        rate = rate if rate is not None else math.sqrt(lo * hi)
        d = steady_metrics(run_point(cfg, model, policy, workload_name, rate, num_requests))
        if d["p99_tpot_ms"] <= slo_ms and d["p90_ttft_s"] <= ttft_s:
            # sustained: every request is served, so delivered = offered = rate x mean output tokens
            lo, best = rate, {"request_rate": rate, "decode_throughput_tok_s": rate * d["mean_output_tokens"], **d}
            if rate == rate_hi:
                return best
        elif rate == rate_lo:
            return best
        else:
            hi = rate
    return best


def max_throughput(cfg: dict, model: str, policy: str, workload_name: str, key: str | None = None) -> dict:
    """`sustainable` with the search settings `cfg["search"][key]` (key: the workload's name by default)."""
    key = key or workload_name
    s = (cfg.get("search") or {}).get(key)
    if s is None:
        raise ExperimentError(f"config has no search settings for {key!r}")
    return sustainable(cfg, model, policy, workload_name, float(s["rate_lo"]), float(s["rate_hi"]),
                       int(s["iterations"]), int(s["num_requests"]))

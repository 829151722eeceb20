"""Simulated runs for the figures: one point, and the highest load a system sustains within its SLOs.

Sustainable load (figures 7 and 8; experiments/fig7/README.md): the highest Poisson rate at which the P99
TPOT stays within `tpot_slo_ms` AND the mean TTFT within `ttft_slo_s`, found by geometric bisection between
`rate_lo` and `rate_hi` (`iterations` halvings of the log-interval). Throughput is the decode throughput
measured at that rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.config import ClusterConfig, WorkloadConfig
from adrenaline_sgl.sim.engine import simulate
from adrenaline_sgl.sim.records import SimResult

from .common import ExperimentError

CLUSTER_KEYS = ("gpu", "predictor", "n_prefill", "n_decode", "executor_sm_share", "prefill_token_budget",
                "prefill_kv_reserve_tokens", "max_decode_batch", "gpu_mem_util", "link", "tpot_slo_ms",
                "ttft_slo_s")  # fmt: skip


def system_policy(system: str) -> tuple[str, str]:
    """("pd", "never") or ("adrenaline", policy) from a system label: pd | adrenaline | ratio:F | auto."""
    if system == "pd":
        return "pd", "never"
    if system == "adrenaline":
        return "adrenaline", "auto"
    return "adrenaline", system


def cluster(cfg: dict, model: str, system: str) -> ClusterConfig:
    sysname, policy = system_policy(system)
    extra = {k: cfg[k] for k in CLUSTER_KEYS if k in cfg}
    return ClusterConfig(system=sysname, offload=policy, model=model, **extra)


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

    def util(self, cl: ClusterConfig) -> metrics.Utilization:
        return metrics.utilization(self.result, cl.n_prefill, cl.n_decode)


def run_point(cfg: dict, model: str, system: str, workload_name: str, rate: float,
              num_requests: int | None = None) -> Point:
    """One simulated run."""
    if not rate > 0:
        raise ExperimentError(f"request rate {rate!r} must be > 0 (requests/s)")
    res = simulate(cluster(cfg, model, system), workload(cfg, workload_name, rate, num_requests))
    return Point(res, metrics.request_metrics(res.requests))


def meets_slo(m: metrics.RequestMetrics, cl: ClusterConfig) -> bool:
    return m.p99_tpot_ms <= cl.tpot_slo_ms and m.mean_ttft_s <= cl.ttft_slo_s


def sustainable(cfg: dict, model: str, system: str, workload_name: str, rate_lo: float, rate_hi: float,
                iterations: int, num_requests: int | None = None) -> tuple[float, Point | None]:
    """(highest rate within the SLOs, its run); (nan, None) when even rate_lo misses them."""
    if not 0 < rate_lo < rate_hi:
        raise ExperimentError(f"sustainable-load search needs 0 < rate_lo < rate_hi, got {rate_lo}, {rate_hi}")
    cl = cluster(cfg, model, system)
    best: tuple[float, Point | None] = (math.nan, None)
    lo_pt = run_point(cfg, model, system, workload_name, rate_lo, num_requests)
    if not meets_slo(lo_pt.req, cl):
        return best
    best = (rate_lo, lo_pt)
    hi_pt = run_point(cfg, model, system, workload_name, rate_hi, num_requests)
    if meets_slo(hi_pt.req, cl):
        return rate_hi, hi_pt
    lo, hi = rate_lo, rate_hi
    for _ in range(iterations):
        mid = math.sqrt(lo * hi)
        pt = run_point(cfg, model, system, workload_name, mid, num_requests)
        if meets_slo(pt.req, cl):
            lo, best = mid, (mid, pt)
        else:
            hi = mid
    return best


def sustainable_summary(cfg: dict, model: str, system: str, workload_name: str) -> dict:
    """`sustainable` with the per-workload search settings of `cfg["search"]`, as a flat dict (NaN when
    even the lowest rate misses the SLOs)."""
    s = (cfg.get("search") or {}).get(workload_name)
    if s is None:
        raise ExperimentError(f"config has no search settings for workload {workload_name!r}")
    rate, pt = sustainable(cfg, model, system, workload_name, float(s["rate_lo"]), float(s["rate_hi"]),
                           int(s["iterations"]), int(s["num_requests"]))
    m = pt.req if pt else None
    nan = math.nan
    return {
        "request_rate": rate,
        "decode_throughput_tok_s": m.decode_throughput_tok_s if m else nan,
        "mean_ttft_s": m.mean_ttft_s if m else nan,
        "p99_tpot_ms": m.p99_tpot_ms if m else nan,
        "offloaded_frac": m.offloaded_frac if m else nan,
    }

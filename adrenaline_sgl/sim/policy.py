"""The simulator's offload admission: the scheduler's own policies (`adrenaline_sgl.scheduler.admission`).

NOTE: admission and bounds are the scheduler's, the same code the proxy runs: the event loop fills the
scheduler's `LiveStats` from its state at each arrival and asks `policy.decide(RequestInfo, LiveStats)`.
`FakePolicy` is the test double (offload never / always / while offloaded <= F x local), never used by
experiments.

Registry: `get_policy(name, sim_cfg, costs)` with "scheduler" (default) and "fake".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from adrenaline_sgl.scheduler.admission import (
    Decision,
    LiveStats,
    OffloadPolicy,
    RequestInfo,
    make_policy,
    parse_policy,
)

from .config import SimConfig


@dataclass(frozen=True)
class FakePolicy(OffloadPolicy):
    """Test double: never (ratio 0), always (ratio None) or while (N + 1) <= ratio x max(M, 1)."""

    ratio: float | None = 0.0
    spec: str = "fake"

    def decide(self, request: RequestInfo, stats: LiveStats) -> Decision:
        if request.max_seq_tokens > stats.prefill_capacity_tokens - stats.offloaded_max_tokens:
            return Decision(False, "c1-prefill-memory", 0.0)
        offload = self.ratio is None or stats.offloaded_requests + 1 <= self.ratio * max(stats.local_requests, 1)
        return Decision(offload, "ok" if offload else "c2-batch", self.ratio if self.ratio is not None else 0.0)


def _scheduler_policy(cfg: SimConfig, costs) -> OffloadPolicy:
    auto = cfg.offload == "auto"
    kwargs = {"tpot_slo_ms": cfg.tpot_slo_ms, "executor_sm_share": cfg.executor_sm_share} if auto else {}
    return make_policy(cfg.offload, getattr(costs, "pred", None), **kwargs)


def _fake_policy(cfg: SimConfig, costs) -> OffloadPolicy:
    kind, ratio = parse_policy(cfg.offload, "offload")
    if kind == "auto":
        raise ValueError(f"offload={cfg.offload!r} has no fake; valid for the fake: never | always | ratio:F")
    return FakePolicy(None if kind == "always" else ratio)


POLICIES: dict[str, Callable[[SimConfig, object], OffloadPolicy]] = {
    "scheduler": _scheduler_policy,
    "fake": _fake_policy,
}


def get_policy(name: str, cfg: SimConfig, costs) -> OffloadPolicy:
    """The admission adapter `name` ("scheduler" or "fake") for a simulator config."""
    if name not in POLICIES:
        raise ValueError(f"policy={name!r} is unknown; valid: {', '.join(POLICIES)}")
    return POLICIES[name](cfg, costs)

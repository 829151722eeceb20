"""The SM-share planner: the smallest prefill share that meets the TTFT SLO at the current load; the
executor gets the rest (paper technique 2, `../shared/design/adrenaline.md`).

TTFT model (stated, not measured): prefill batches of `batch_tokens` tokens are served one at a time with
service time S(n) = profile.prefill_ms(n / total SMs, batch_tokens); prompt tokens arrive at
`arrival_tokens_per_s`, so the prefill engine is busy a fraction rho = arrival_tokens_per_s * S / batch_tokens
of the time, and the mean TTFT is that of an M/D/1 queue: S + rho * S / (2 * (1 - rho)). rho >= 1 means
the queue grows without bound (TTFT infinite).

Both sides always keep at least one SM granule and their configured minimum share ("never starve");
when no split meets the SLO, prefill gets the most it may have and `Plan.slo_met` is False.
`SMSharePlanner` adds hysteresis: it gives prefill more SMs at once when the SLO needs them, and takes
SMs away only when the new plan frees at least `hysteresis_granules` granules.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from adrenaline_sgl.colocation.arch import DeviceInfo, ShareError
from adrenaline_sgl.colocation.profiles import Profile


@dataclass(frozen=True)
class PrefillLoad:
    arrival_tokens_per_s: float = field(metadata={"help": "prompt tokens arriving per second at this prefill GPU"})
    batch_tokens: int = field(default=2048, metadata={"help": "prompt tokens in one prefill batch"})

    def __post_init__(self):
        if not (math.isfinite(self.arrival_tokens_per_s) and self.arrival_tokens_per_s >= 0):
            raise ValueError(f"arrival_tokens_per_s must be >= 0, got {self.arrival_tokens_per_s}")
        if self.batch_tokens < 1:
            raise ValueError(f"batch_tokens must be >= 1, got {self.batch_tokens}")


@dataclass(frozen=True)
class PlannerConfig:
    ttft_slo_ms: float = field(metadata={"help": "mean TTFT target, ms"})
    min_executor_share: float = field(default=0.0, metadata={"help": "executor keeps at least this SM share"})
    min_prefill_share: float = field(default=0.0, metadata={"help": "prefill keeps at least this SM share"})
    hysteresis_granules: int = field(default=1, metadata={"help": "shrink prefill only by at least this many"})
    model_layers: int | None = field(default=None, metadata={"help": "layers of the served model (profile's)"})
    use_contended: bool = field(default=True, metadata={"help": "plan on prefill times measured beside the executor"})

    def __post_init__(self):
        if not (math.isfinite(self.ttft_slo_ms) and self.ttft_slo_ms > 0):
            raise ValueError(f"ttft_slo_ms must be > 0, got {self.ttft_slo_ms}")
        for name in ("min_executor_share", "min_prefill_share"):
            v = getattr(self, name)
            if not 0.0 <= v < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        if self.min_executor_share + self.min_prefill_share >= 1.0:
            raise ValueError("min_executor_share + min_prefill_share must be < 1")
        if self.hysteresis_granules < 0:
            raise ValueError(f"hysteresis_granules must be >= 0, got {self.hysteresis_granules}")
        if self.model_layers is not None and self.model_layers < 1:
            raise ValueError(f"model_layers must be >= 1, got {self.model_layers}")


@dataclass(frozen=True)
class Plan:
    prefill_sms: int
    executor_sms: int
    total_sms: int
    predicted_ttft_ms: float  # inf when prefill cannot keep up with the load
    executor_gbs: float  # executor attention bandwidth the profile predicts at its share (BW_p for OB_mem)
    slo_met: bool

    @property
    def executor_share(self) -> float:
        return self.executor_sms / self.total_sms

    @property
    def prefill_share(self) -> float:
        return self.prefill_sms / self.total_sms


def predicted_ttft_ms(service_ms: float, load: PrefillLoad) -> float:
    """Mean TTFT of an M/D/1 queue of prefill batches (see the module doc)."""
    rho = load.arrival_tokens_per_s * service_ms / 1000.0 / load.batch_tokens
    if rho >= 1.0:
        return math.inf
    return service_ms + rho * service_ms / (2.0 * (1.0 - rho))


def executor_candidates(device: DeviceInfo, cfg: PlannerConfig) -> list[int]:
    """Executor partition sizes that respect the granularity and both minimum shares (ascending)."""
    sizes = [
        n
        for n in device.partition_sizes()
        if n >= cfg.min_executor_share * device.total_sms
        and device.total_sms - n >= cfg.min_prefill_share * device.total_sms
    ]
    if not sizes:
        raise ShareError(
            f"no executor partition on {device.name} ({device.total_sms} SMs) satisfies min_executor_share="
            f"{cfg.min_executor_share} and min_prefill_share={cfg.min_prefill_share}"
        )
    return sizes


def plan(profile: Profile, load: PrefillLoad, cfg: PlannerConfig, device: DeviceInfo) -> Plan:
    """Largest executor partition (smallest prefill share) whose predicted TTFT meets the SLO."""
    total = device.total_sms
    contended = cfg.use_contended and profile.has_contended

    def evaluate(executor_sms: int) -> Plan:
        prefill_sms = total - executor_sms
        service = profile.prefill_ms(prefill_sms / total, load.batch_tokens, contended, cfg.model_layers)
        ttft = predicted_ttft_ms(service, load)
        gbs = profile.attn_gbs(executor_sms / total)
        return Plan(prefill_sms, executor_sms, total, ttft, gbs, ttft <= cfg.ttft_slo_ms)

    candidates = executor_candidates(device, cfg)
    for executor_sms in reversed(candidates):  # most executor SMs first = least prefill
        p = evaluate(executor_sms)
        if p.slo_met:
            return p
    return evaluate(candidates[0])  # SLO unreachable: prefill gets the most it may have


class SMSharePlanner:
    """Re-plans on load changes with hysteresis. `update(load)` returns the plan to apply, or None to keep
    the current one."""

    def __init__(self, profile: Profile, cfg: PlannerConfig, device: DeviceInfo):
        self.profile, self.cfg, self.device = profile, cfg, device
        self.current: Plan | None = None

    def update(self, load: PrefillLoad) -> Plan | None:
        target = plan(self.profile, load, self.cfg, self.device)
        cur = self.current
        margin = self.cfg.hysteresis_granules * self.device.granularity.multiple
        if cur is None or target.prefill_sms > cur.prefill_sms or target.prefill_sms <= cur.prefill_sms - margin:
            if cur is not None and target.prefill_sms == cur.prefill_sms:
                return None
            self.current = target
            return target
        return None

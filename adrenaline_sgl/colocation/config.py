"""Colocation knobs (what the SGLang plugin's executor flags map to)."""

from __future__ import annotations

from dataclasses import dataclass, field

from adrenaline_sgl.colocation.arch import check_share
from adrenaline_sgl.colocation.partitioner import PARTITIONERS


@dataclass(frozen=True)
class ColocationConfig:
    partitioner: str = field(default="green_context", metadata={"help": f"one of {sorted(PARTITIONERS)}"})
    executor_sm_share: float = field(
        default=0.25, metadata={"help": "executor's SM share in (0, 1) at start; the planner may move it"}
    )
    device: str = field(default="cuda:0", metadata={"help": "the prefill GPU the executor shares"})
    ttft_slo_ms: float | None = field(
        default=None, metadata={"help": "mean TTFT target, ms; None: keep executor_sm_share fixed (no planner)"}
    )
    profile: str | None = field(
        default=None, metadata={"help": "profile folder; None: the committed default (measured preferred)"}
    )

    def __post_init__(self):
        if self.partitioner not in PARTITIONERS:
            raise ValueError(f"partitioner must be one of {sorted(PARTITIONERS)}, got {self.partitioner!r}")
        check_share(self.executor_sm_share, "executor_sm_share")
        if self.ttft_slo_ms is not None and not self.ttft_slo_ms > 0:
            raise ValueError(f"ttft_slo_ms must be > 0 or None, got {self.ttft_slo_ms}")

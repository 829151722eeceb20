"""Colocation knobs (what the SGLang plugin's executor flags map to; `sglang_ext/flags.py` takes these)."""

from __future__ import annotations

from dataclasses import dataclass, field

from adrenaline_sgl.colocation.partitioner import PARTITIONERS
from adrenaline_sgl.scheduler.bounds import DEFAULT_EXECUTOR_SM_SHARE, check_executor_sm_share

# The partitioner names, from the registry; "auto" = green contexts on a GPU, none elsewhere (executor_partitioner)
EXECUTOR_PARTITIONERS = ("auto", *PARTITIONERS)


@dataclass(frozen=True)
class ColocationConfig:
    partitioner: str = field(default="auto", metadata={"help": f"one of {EXECUTOR_PARTITIONERS}"})
    executor_sm_share: float = field(
        default=DEFAULT_EXECUTOR_SM_SHARE,
        metadata={"help": "executor's SM share in (0, 1) at start; the planner may move it"},
    )
    device: str = field(default="cuda:0", metadata={"help": "the prefill GPU the executor shares"})
    ttft_slo_ms: float | None = field(
        default=None, metadata={"help": "mean TTFT target, ms; None: keep executor_sm_share fixed (no planner)"}
    )
    profile: str | None = field(
        default=None, metadata={"help": "profile folder; None: the committed default (measured preferred)"}
    )

    def __post_init__(self):
        if self.partitioner not in EXECUTOR_PARTITIONERS:
            raise ValueError(f"partitioner must be one of {EXECUTOR_PARTITIONERS}, got {self.partitioner!r}")
        check_executor_sm_share(self.executor_sm_share)
        if self.ttft_slo_ms is not None and not self.ttft_slo_ms > 0:
            raise ValueError(f"ttft_slo_ms must be > 0 or None, got {self.ttft_slo_ms}")

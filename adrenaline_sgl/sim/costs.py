"""The simulator's view of operator costs: a thin adapter over the scheduler's cost model.

NOTE: the simulator has no cost model of its own. Every operator time comes from
`adrenaline_sgl.scheduler.cost_model` (the same predictor the real proxy uses) through `SchedulerCosts`;
this module only adapts signatures and adds the FLOP/byte totals the utilization metrics need. `FakeCosts`
is the test double (round numbers that make timelines hand-computable), never used by experiments.

Registry: `get_costs(name, cluster_cfg)` with "scheduler" (default) and "fake"; creators import lazily.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from .config import ClusterConfig
from .records import InstanceInfo


@dataclass(frozen=True)
class Work:
    """Time and work of one operator group on one GPU."""

    ms: float
    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other: Work) -> Work:
        return Work(self.ms + other.ms, self.flops + other.flops, self.bytes + other.bytes)


NO_WORK = Work(0.0, 0.0, 0.0)


class SimCosts(Protocol):
    """What the event loop asks. Times in ms for the whole model (all layers) unless named per layer."""

    info: InstanceInfo
    num_layers: int

    def prefill(self, prompt_lens: Sequence[int], sm_share: float) -> Work:
        """One prefill batch of these prompts on a GPU share."""

    def decode_nonattn(self, batch: int) -> Work:
        """QKV, O projection, FFN, norms, sampling of a decode step for `batch` rows."""

    def decode_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        """Decode attention of `batch` rows over `context_tokens` KV tokens in total."""

    def kv_transfer_ms(self, num_tokens: int) -> float:
        """Prefill -> decode KV transfer of one request's prompt."""

    def offload_roundtrip_ms(self, rows: int) -> float:
        """One layer's offload round trip (q/k/v out, o/lse back) for `rows` offloaded rows."""

    def kv_restore_ms(self, num_tokens: int) -> float:
        """Host -> GPU copy of a retracted request's KV (watermark admission)."""


@dataclass
class FakeCosts:
    """Test double: linear costs with round numbers. Not calibrated; experiments never use it."""

    num_layers: int = 10
    prefill_ms_per_token: float = 0.1
    decode_base_ms: float = 10.0
    decode_ms_per_row: float = 0.1
    attn_ms_per_kv_token: float = 0.001
    transfer_ms_per_token: float = 0.01
    roundtrip_ms: float = 0.05  # per layer
    kv_capacity_tokens: int = 20_000
    kv_bytes_per_token: float = 1000.0
    weight_bytes: float = 1e9

    def __post_init__(self):
        hbm = self.weight_bytes + self.kv_capacity_tokens * self.kv_bytes_per_token
        self.info = InstanceInfo(
            hbm_bytes=hbm,
            weight_bytes=self.weight_bytes,
            kv_bytes_per_token=self.kv_bytes_per_token,
            kv_capacity_tokens=self.kv_capacity_tokens,
            peak_flops=1e12,
            peak_hbm_bytes_per_s=1e11,
        )

    def prefill(self, prompt_lens: Sequence[int], sm_share: float) -> Work:
        tokens = sum(prompt_lens)
        return Work(self.prefill_ms_per_token * tokens / sm_share, 2e6 * tokens, 1e9 + 1e3 * tokens)

    def decode_nonattn(self, batch: int) -> Work:
        if batch == 0:
            return NO_WORK
        return Work(self.decode_base_ms + self.decode_ms_per_row * batch, 2e6 * batch, 1e9)

    def decode_attn(self, batch: int, context_tokens: int, sm_share: float) -> Work:
        if batch == 0:
            return NO_WORK
        return Work(self.attn_ms_per_kv_token * context_tokens / sm_share, 4e3 * context_tokens,
                    self.kv_bytes_per_token * context_tokens)

    def kv_transfer_ms(self, num_tokens: int) -> float:
        return self.transfer_ms_per_token * num_tokens

    def offload_roundtrip_ms(self, rows: int) -> float:
        return self.roundtrip_ms if rows else 0.0

    def kv_restore_ms(self, num_tokens: int) -> float:
        return 2 * self.transfer_ms_per_token * num_tokens


def _scheduler_costs(cfg: ClusterConfig) -> SimCosts:
    from .scheduler_costs import SchedulerCosts  # imports adrenaline_sgl.scheduler

    return SchedulerCosts(cfg)


def _fake_costs(cfg: ClusterConfig) -> SimCosts:
    return FakeCosts()


COSTS: dict[str, Callable[[ClusterConfig], SimCosts]] = {"scheduler": _scheduler_costs, "fake": _fake_costs}


def get_costs(name: str, cfg: ClusterConfig) -> SimCosts:
    """The cost adapter `name` for a cluster config."""
    if name not in COSTS:
        raise ValueError(f"costs={name!r} is unknown; valid: {', '.join(COSTS)}")
    return COSTS[name](cfg)

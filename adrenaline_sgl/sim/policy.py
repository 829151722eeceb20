"""The simulator's view of the offload admission decision: a thin adapter over the scheduler.

NOTE: admission and bounds are the scheduler's (`adrenaline_sgl.scheduler`), the same code the proxy runs;
the simulator only fills in a `LoadView` of runtime metadata at each arrival and asks. `FakePolicy` is the
test double (offload never / always / while offloaded <= F x local), never used by experiments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from .config import ClusterConfig


@dataclass(frozen=True)
class LoadView:
    """Runtime metadata at one arrival, for the chosen (prefill, decode) pair. Counts and KV tokens."""

    local_requests: int  # M: requests decoding with local attention on the decode instance
    local_tokens: int  # their current sequence lengths, summed
    local_max_tokens: int  # their maximum sequence lengths (prompt + max new tokens), summed
    offloaded_requests: int  # N: the decode instance's requests whose attention runs on executors
    offloaded_tokens: int  # their current sequence lengths, summed
    offloaded_max_tokens: int  # their maximum sequence lengths, summed
    executor_free_kv_tokens: int  # unreserved KV tokens on the chosen prefill GPU
    decode_free_kv_tokens: int  # unreserved KV tokens on the decode instance


class OffloadPolicy(Protocol):
    def decide(self, view: LoadView, prompt_len: int, max_seq_len: int) -> bool:
        """Offload this request (its KV stays on the prefill GPU) or decode it locally."""


@dataclass(frozen=True)
class FakePolicy:
    """Test double: never (ratio 0), always (ratio None) or while (N + 1) <= ratio x max(M, 1)."""

    ratio: float | None = 0.0

    def decide(self, view: LoadView, prompt_len: int, max_seq_len: int) -> bool:
        if max_seq_len > view.executor_free_kv_tokens:
            return False
        if self.ratio is None:
            return True
        return view.offloaded_requests + 1 <= self.ratio * max(view.local_requests, 1)


def _scheduler_policy(cfg: ClusterConfig, costs) -> OffloadPolicy:
    from .scheduler_policy import SchedulerPolicy  # imports adrenaline_sgl.scheduler

    return SchedulerPolicy(cfg, costs)


def _fake_policy(cfg: ClusterConfig, costs) -> OffloadPolicy:
    name = cfg.effective_policy
    if name == "never":
        return FakePolicy(0.0)
    if name == "always":
        return FakePolicy(None)
    if name.startswith("ratio:"):
        return FakePolicy(float(name.split(":", 1)[1]))
    raise ValueError(f"offload={name!r} has no fake; valid for the fake: never | always | ratio:F")


POLICIES: dict[str, Callable[[ClusterConfig, object], OffloadPolicy]] = {
    "scheduler": _scheduler_policy,
    "fake": _fake_policy,
}


def get_policy(name: str, cfg: ClusterConfig, costs) -> OffloadPolicy:
    """The admission adapter `name` ("scheduler" or "fake") for a cluster config."""
    if name not in POLICIES:
        raise ValueError(f"policy={name!r} is unknown; valid: {', '.join(POLICIES)}")
    return POLICIES[name](cfg, costs)

"""`OffloadPolicy` on top of the scheduler's admission (`adrenaline_sgl.scheduler.admission.make_policy`).

The simulator's `LoadView` becomes the scheduler's `LiveStats`; the decision (C1, C2 against OB, or the
never / always / ratio:F / auto policy) is entirely the scheduler's. The prefill capacity offered to
offloaded requests is what the chosen prefill GPU can still reserve plus what this decode instance's
offloaded requests already hold there (`LiveStats.prefill_offload_capacity_tokens`'s meaning).
"""

from __future__ import annotations

from adrenaline_sgl.scheduler.admission import LiveStats, RequestInfo, make_policy

from .config import ClusterConfig
from .policy import LoadView


class SchedulerPolicy:
    """Asks `make_policy(cfg.effective_policy)` per arrival; remembers why each request went where."""

    def __init__(self, cfg: ClusterConfig, costs):
        spec = cfg.effective_policy
        kwargs = {}
        if spec == "auto":
            kwargs = {"tpot_slo_ms": cfg.tpot_slo_ms, "executor_sm_share": cfg.executor_sm_share}
        self.policy = make_policy(spec, getattr(costs, "pred", None), **kwargs)
        self.decode_capacity_tokens = costs.info.kv_capacity_tokens
        self.reasons: dict[str, int] = {}

    def decide(self, view: LoadView, prompt_len: int, max_seq_len: int) -> bool:
        stats = LiveStats(
            local_requests=view.local_requests,
            local_tokens=view.local_tokens,
            offloaded_requests=view.offloaded_requests,
            offloaded_tokens=view.offloaded_tokens,
            offloaded_max_tokens=view.offloaded_max_tokens,
            decode_kv_capacity_tokens=self.decode_capacity_tokens,
            prefill_offload_capacity_tokens=(view.offloaded_max_tokens + max(view.executor_free_kv_tokens, 0),),
        )
        decision = self.policy.decide(RequestInfo(prompt_len, max_seq_len - prompt_len), stats)
        self.reasons[decision.reason] = self.reasons.get(decision.reason, 0) + 1
        return decision.offload

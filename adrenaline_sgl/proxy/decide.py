"""The proxy's per-request offload decision: the scheduler's policy on live statistics.

The policies (`never`, `always`, `ratio:F`, `auto`) and admission (C1, C2) are
`adrenaline_sgl.scheduler.admission`, the same code the simulator runs. The proxy supplies `LiveStats`:
- its own ledger of requests in flight per decode instance (local vs offloaded, prompt and maximum
  lengths; prompt length stands in for the current length, a lower bound);
- capacities from the instances' `/adrenaline/load` reports: the decode KV pool (HBM_d in tokens) and,
  per prefill instance, the tokens it can devote to offloaded KV (its free tokens plus what the ledger
  has already placed there at maximum length, or its `--adrenaline-executor-max-tokens` share) and the SM
  share its executor runs at now (`auto` uses the configured share where a report gives 0, unknown).
A decision is taken only when the chosen prefill can take it: its report is fresh, its role is `prefill`
and its executor answers; and the decode runs the plugin. Otherwise the request decodes locally (stock PD),
which is how an unreachable executor is handled without failing or hanging requests.

Capacity is admission (`executor_room_tokens`): a request is offloaded only when its full length (prompt +
max_new_tokens, per sequence) fits in what the chosen executor can still hold: the free slots of its last load
report, less the full length of every request offloaded there since that report, and at most its reserve less
the full length of every offloaded request still in flight there (they grow to it). Otherwise it decodes
locally (stock PD): an executor reserve that runs out mid-decode fails requests, a local one does not.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from adrenaline_sgl.protocol import LoadReport
from adrenaline_sgl.proxy.config import ProxyConfig
from adrenaline_sgl.scheduler.admission import LiveStats, OffloadPolicy, RequestInfo, make_policy

__all__ = ["Decision", "Ledger", "RequestInfo", "build_policy", "decide", "executor_available"]


@dataclass(frozen=True)
class Decision:
    offload: bool
    reason: str  # the scheduler's reason ("ok", "c1-budget", "c2-batch", ...) or why it was not asked


def build_policy(cfg: ProxyConfig) -> OffloadPolicy:
    """The scheduler's policy `cfg.policy`; `auto` gets `cfg.predictor` for the served (`cfg.gpu`, `cfg.model`):
    `preferred` is the measured table where the package has one (CPU devices, profiled GPUs), else the roofline."""
    if cfg.policy != "auto":
        return make_policy(cfg.policy)
    from adrenaline_sgl.scheduler.cost_model import get_predictor
    from adrenaline_sgl.scheduler.table import preferred_predictor

    name = preferred_predictor(cfg.gpu, cfg.model) if cfg.predictor == "preferred" else cfg.predictor
    predictor = get_predictor(name, cfg.gpu, cfg.model)
    return make_policy("auto", predictor, executor_sm_share=cfg.executor_sm_share, tpot_slo_ms=cfg.tpot_slo_ms)


@dataclass
class _InFlight:
    decode: str
    prefill: str
    info: RequestInfo
    offloaded: bool
    need_tokens: int  # KV the request may hold at its end: sequences x (prompt + max_new_tokens)
    added_s: float  # time.monotonic() when routed


class Ledger:
    """Requests the proxy has routed and not yet seen finish (thread-safe; keys are opaque ids)."""

    def __init__(self):
        self._items: dict[int, _InFlight] = {}
        self._next = 0
        self._lock = threading.Lock()

    def add(self, decode: str, prefill: str, info: RequestInfo, offloaded: bool, sequences: int = 1) -> int:
        with self._lock:
            self._next += 1
            self._items[self._next] = _InFlight(decode, prefill, info, offloaded, sequences * info.max_seq_tokens,
                                                time.monotonic())  # fmt: skip
            return self._next

    def executor_room_tokens(self, prefill: str, report: LoadReport, report_at_s: float) -> int | None:
        """Tokens the executor on `prefill` can still take for a new request (None: its report does not say):
        the report's free slots less what was offloaded there since it (`report_at_s`, monotonic), and at most
        its reserve less every offloaded request in flight there at full length."""
        if report.executor_capacity_tokens <= 0:
            return None
        with self._lock:
            placed = [i for i in self._items.values() if i.offloaded and i.prefill == prefill]
        since = sum(i.need_tokens for i in placed if i.added_s >= report_at_s)
        committed = sum(i.need_tokens for i in placed)
        return min(report.executor_free_tokens - since, report.executor_capacity_tokens - committed)

    def in_flight(self) -> dict:
        """Counts for the proxy's own load report."""
        with self._lock:
            items = list(self._items.values())
        return {"requests": len(items), "offloaded": sum(i.offloaded for i in items),
                "offloaded_need_tokens": sum(i.need_tokens for i in items if i.offloaded)}  # fmt: skip

    def done(self, key: int) -> None:
        with self._lock:
            self._items.pop(key, None)

    def stats(self, decode: str, decode_report: LoadReport, prefills: dict[str, LoadReport | None]) -> LiveStats:
        with self._lock:
            items = [i for i in self._items.values() if i.decode == decode]
        local = [i.info for i in items if not i.offloaded]
        off = [i for i in items if i.offloaded]
        caps, shares = [], []
        for url, report in prefills.items():
            if report is None:
                continue
            placed = sum(i.info.max_seq_tokens for i in off if i.prefill == url)
            free = int((1.0 - report.token_usage) * report.max_total_tokens)
            caps.append(placed + free)
            shares.append(report.executor_sm_share)
        return LiveStats(
            local_requests=len(local),
            local_tokens=sum(i.prompt_tokens for i in local),
            offloaded_requests=len(off),
            offloaded_tokens=sum(i.info.prompt_tokens for i in off),
            offloaded_max_tokens=sum(i.info.max_seq_tokens for i in off),
            decode_kv_capacity_tokens=decode_report.max_total_tokens,
            prefill_offload_capacity_tokens=tuple(caps),
            prefill_executor_sm_shares=tuple(shares),
        )

    def __len__(self) -> int:
        return len(self._items)


def executor_available(prefill: LoadReport | None) -> bool:
    return (
        prefill is not None and prefill.role == "prefill" and prefill.executor_healthy and bool(prefill.executor_addr)
    )


def decide(
    policy: OffloadPolicy, req: RequestInfo, prefill: LoadReport | None, decode: LoadReport | None, stats_fn,
    room_tokens: int | None = None, need_tokens: int | None = None, paused: bool = False,
) -> Decision:
    """The decision for one request sent to this (prefill, decode) pair; `stats_fn()` builds LiveStats.
    `room_tokens`: what the executor can still take (None: unknown), `need_tokens`: the request's full length
    (default: one sequence's); `paused`: offloads to this executor failed lately (`health.OffloadBreaker`)."""
    if not executor_available(prefill):
        return Decision(False, "executor unavailable")
    if paused:
        return Decision(False, "executor failing")
    if decode is None or decode.role != "decode":  # missing, stale, unreachable, or stock SGLang
        return Decision(False, "decode not offload-capable")
    d = policy.decide(req, stats_fn())
    need = req.max_seq_tokens if need_tokens is None else need_tokens
    if d.offload and room_tokens is not None and need > room_tokens:
        return Decision(False, "executor full")
    return Decision(d.offload, d.reason)

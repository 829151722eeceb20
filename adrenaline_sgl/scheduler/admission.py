"""Per-request offload admission (conditions C1 and C2) and the offload policies.

A new request is offloaded only if, with OB the offload bound of the policy:
- C1 (budget at the maximum length): the KV of all offloaded requests, each counted at its MAXIMUM
  sequence length (prompt + max_new_tokens), stays within OB x the decode KV capacity (OB_mem's
  denominator HBM_d, so OB x HBM_d is the offloaded KV the bound allows), and within the KV the prefill
  instances can actually hold. Counting at the maximum means admitted requests never overflow later.
- C2 (balance now): the offloaded/local ratio of summed current sequence lengths, counting the new
  request's prompt, and the offloaded/local ratio of batch sizes, counting the new request, both stay
  within OB. This keeps the remote attention time hidden under the local attention time.
Otherwise the request decodes locally. With no local request (M = 0) nothing can hide remote attention,
so C2 fails: the first requests of an idle system always decode locally.

Policies (`make_policy(spec, ...)`): `never`, `always` (offload whenever the prefill side has the memory,
ignoring OB: an ablation), `ratio:F` (OB = F, fixed; the paper sweeps F = 0.4, 0.6, 0.8) and `auto` (OB
from `compute_bounds` on the live statistics). The proxy and the simulator both call `policy.decide`; every
parser of a policy string (proxy, simulator, experiments) goes through `parse_policy`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache

from adrenaline_sgl.scheduler.bounds import (
    DEFAULT_EXECUTOR_SM_SHARE,
    DEFAULT_TPOT_SLO_MS,
    Bounds,
    BoundsInput,
    PrefillCapacity,
    check_executor_sm_share,
    compute_bounds,
)
from adrenaline_sgl.scheduler.cost_model import Predictor

MAX_OFFLOAD_RATIO = 10.0  # valid range of a fixed ratio: [0, MAX_OFFLOAD_RATIO]
POLICY_NAMES = ("never", "always", "ratio:F", "auto")


def parse_policy(text: str, field: str = "policy") -> tuple[str, float]:
    """`never | always | auto | ratio:F` -> (kind, F); F is the fixed bound OB (offloaded per local), 0 <= F <=
    MAX_OFFLOAD_RATIO, and 0.0 for the other kinds. ValueError naming `field` otherwise."""
    if text in ("never", "always", "auto"):
        return text, 0.0
    kind, _, value = str(text).partition(":")
    try:
        ratio = float(value) if kind == "ratio" else -1.0
    except ValueError:
        ratio = -1.0
    if not 0.0 <= ratio <= MAX_OFFLOAD_RATIO:  # also rejects nan
        raise ValueError(f"{field}={text!r}: expected never, always, auto or ratio:F with 0 <= F <= "
                         f"{MAX_OFFLOAD_RATIO:g}")  # fmt: skip
    return "ratio", ratio


def ratio_policy(ratio: float) -> str:
    """The policy spec of a fixed offload ratio (`never` for 0), checked by `parse_policy`."""
    spec = "never" if ratio == 0 else f"ratio:{ratio:g}"
    parse_policy(spec, "offload ratio")
    return spec


@dataclass(frozen=True)
class RequestInfo:
    """A new request as the proxy sees it."""

    prompt_tokens: int
    max_new_tokens: int

    def __post_init__(self) -> None:
        if self.prompt_tokens < 0 or self.max_new_tokens < 0:
            raise ValueError(
                f"prompt_tokens and max_new_tokens must be >= 0, got {self.prompt_tokens}, {self.max_new_tokens}"
            )

    @property
    def max_seq_tokens(self) -> int:
        return self.prompt_tokens + self.max_new_tokens


@dataclass(frozen=True)
class LiveStats:
    """Live statistics of one decode instance and the prefill instances serving its offloaded requests.

    Tokens are KV tokens (sequence lengths). The proxy fills this from the instances' load endpoints, the
    simulator from its state. `prefill_offload_capacity_tokens[i]` is what instance i can devote to
    offloaded KV in total: tokens it already holds for offloaded requests (at their maximum length) plus
    its free tokens; from free counts only, pass `offloaded_max_tokens + free` (C1 then checks that the new
    request's maximum length fits the free tokens).
    """

    local_requests: int = 0  # M: requests decoding with their KV on the decode instance
    local_tokens: int = 0  # their summed current sequence lengths
    offloaded_requests: int = 0  # N: requests whose attention runs on a prefill executor
    offloaded_tokens: int = 0  # their summed current sequence lengths
    offloaded_max_tokens: int = 0  # their summed maximum sequence lengths (prompt + max_new_tokens)
    decode_kv_capacity_tokens: int = 0  # HBM_d in tokens
    prefill_offload_capacity_tokens: tuple[int, ...] = ()  # per prefill instance: KV tokens for offloaded reqs
    # per prefill instance: its executor's SM share now, in [0, 1] (0 or absent: unknown, the policy's own)
    prefill_executor_sm_shares: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for field in (
            "local_requests",
            "local_tokens",
            "offloaded_requests",
            "offloaded_tokens",
            "offloaded_max_tokens",
            "decode_kv_capacity_tokens",
        ):
            if getattr(self, field) < 0:
                raise ValueError(f"LiveStats.{field} must be >= 0, got {getattr(self, field)!r}")
        caps = tuple(int(c) for c in self.prefill_offload_capacity_tokens)
        if any(c < 0 for c in caps):
            raise ValueError(f"LiveStats.prefill_offload_capacity_tokens must be >= 0, got {caps}")
        object.__setattr__(self, "prefill_offload_capacity_tokens", caps)
        shares = tuple(float(s) for s in self.prefill_executor_sm_shares)
        if len(shares) > len(caps) or not all(0.0 <= s <= 1.0 for s in shares):
            raise ValueError(f"LiveStats.prefill_executor_sm_shares must be at most one share in [0, 1] per prefill "
                             f"instance ({len(caps)}), got {shares}")  # fmt: skip
        object.__setattr__(self, "prefill_executor_sm_shares", shares)

    @property
    def prefill_capacity_tokens(self) -> int:
        return sum(self.prefill_offload_capacity_tokens)

    @property
    def avg_context_tokens(self) -> float:
        """Mean current sequence length over all decoding requests (0 when there are none)."""
        n = self.local_requests + self.offloaded_requests
        return (self.local_tokens + self.offloaded_tokens) / n if n else 0.0

    def with_request(self, request: RequestInfo, offloaded: bool) -> LiveStats:
        """The statistics right after admitting `request` (at its prompt length) locally or offloaded."""
        if offloaded:
            return replace(
                self,
                offloaded_requests=self.offloaded_requests + 1,
                offloaded_tokens=self.offloaded_tokens + request.prompt_tokens,
                offloaded_max_tokens=self.offloaded_max_tokens + request.max_seq_tokens,
            )
        return replace(
            self, local_requests=self.local_requests + 1, local_tokens=self.local_tokens + request.prompt_tokens
        )


@dataclass(frozen=True)
class Decision:
    """Outcome of admission for one request."""

    offload: bool
    reason: str  # "ok", "policy-never", "c1-budget", "c1-prefill-memory", "c2-tokens", "c2-batch"
    ob: float  # the bound the decision used


def admit(request: RequestInfo, stats: LiveStats, ob: float) -> Decision:
    """C1 and C2 against the bound `ob` (see the module docstring)."""
    if ob < 0:
        raise ValueError(f"ob must be >= 0, got {ob!r}")
    new_max = stats.offloaded_max_tokens + request.max_seq_tokens
    if new_max > ob * stats.decode_kv_capacity_tokens:
        return Decision(False, "c1-budget", ob)
    if new_max > stats.prefill_capacity_tokens:
        return Decision(False, "c1-prefill-memory", ob)
    # C2, written multiplied out so that M = 0 or local_tokens = 0 never divides
    if stats.offloaded_tokens + request.prompt_tokens > ob * stats.local_tokens:
        return Decision(False, "c2-tokens", ob)
    if stats.offloaded_requests + 1 > ob * stats.local_requests:
        return Decision(False, "c2-batch", ob)
    return Decision(True, "ok", ob)


class OffloadPolicy(ABC):
    """Decides, per new request, whether its decode attention is offloaded."""

    spec: str

    @abstractmethod
    def decide(self, request: RequestInfo, stats: LiveStats) -> Decision: ...

    def decide_all(self, requests: Iterable[RequestInfo], stats: LiveStats) -> tuple[list[Decision], LiveStats]:
        """Which of several arriving requests to offload: one by one in arrival order, each seeing the
        statistics updated by the decisions before it. Returns the decisions and the final statistics."""
        decisions = []
        for request in requests:
            d = self.decide(request, stats)
            decisions.append(d)
            stats = stats.with_request(request, d.offload)
        return decisions, stats


@dataclass(frozen=True)
class NeverPolicy(OffloadPolicy):
    spec: str = "never"

    def decide(self, request: RequestInfo, stats: LiveStats) -> Decision:
        return Decision(False, "policy-never", 0.0)


@dataclass(frozen=True)
class AlwaysPolicy(OffloadPolicy):
    """Offload whenever the prefill side can hold the KV at its maximum length (OB ignored)."""

    spec: str = "always"

    def decide(self, request: RequestInfo, stats: LiveStats) -> Decision:
        fits = stats.offloaded_max_tokens + request.max_seq_tokens <= stats.prefill_capacity_tokens
        return Decision(fits, "ok" if fits else "c1-prefill-memory", float("inf"))


@dataclass(frozen=True)
class RatioPolicy(OffloadPolicy):
    """A fixed bound: OB = ratio."""

    ratio: float = 0.0
    spec: str = ""

    def __post_init__(self) -> None:
        parse_policy(f"ratio:{self.ratio!r}", "offload ratio")
        object.__setattr__(self, "spec", f"ratio:{self.ratio:g}")

    def decide(self, request: RequestInfo, stats: LiveStats) -> Decision:
        return admit(request, stats, self.ratio)


class AutoPolicy(OffloadPolicy):
    """OB from `compute_bounds` on the live statistics (the scheduler's own choice).

    The average context is the live one when requests are decoding, else `default_context_tokens`; each
    prefill's executor runs at the SM share it reports, else `executor_sm_share`. Bounds are cached per
    (context bucket of 64 tokens, capacities, shares), so per-request cost stays small.
    """

    spec = "auto"

    def __init__(
        self,
        predictor: Predictor,
        tpot_slo_ms: float = DEFAULT_TPOT_SLO_MS,
        executor_sm_share: float = DEFAULT_EXECUTOR_SM_SHARE,
        bw_contention_frac: float = 0.0,
        default_context_tokens: float = 512.0,
    ) -> None:
        check_executor_sm_share(executor_sm_share)
        if not tpot_slo_ms > 0:
            raise ValueError(f"tpot_slo_ms must be > 0 (milliseconds), got {tpot_slo_ms!r}")
        if not default_context_tokens > 0:
            raise ValueError(f"default_context_tokens must be > 0, got {default_context_tokens!r}")
        self.predictor = predictor
        self.tpot_slo_ms = tpot_slo_ms
        self.executor_sm_share = executor_sm_share
        self.bw_contention_frac = bw_contention_frac
        self.default_context_tokens = default_context_tokens
        self._bounds_cached = lru_cache(maxsize=4096)(self._bounds_uncached)

    def bounds(self, stats: LiveStats) -> Bounds:
        ctx = stats.avg_context_tokens or self.default_context_tokens
        bucket = max(64, int(round(ctx / 64.0)) * 64)
        caps, live = stats.prefill_offload_capacity_tokens, stats.prefill_executor_sm_shares
        shares = tuple(live[i] if i < len(live) and live[i] > 0 else self.executor_sm_share for i in range(len(caps)))
        return self._bounds_cached(bucket, stats.decode_kv_capacity_tokens, caps, shares)

    def _bounds_uncached(self, ctx: int, decode_cap_tokens: int, prefill_caps: tuple[int, ...],
                         shares: tuple[float, ...]) -> Bounds:  # fmt: skip
        kv = self.predictor.model.kv_bytes_per_token
        return compute_bounds(
            BoundsInput(
                predictor=self.predictor,
                tpot_slo_ms=self.tpot_slo_ms,
                decode_kv_capacity_bytes=decode_cap_tokens * kv,
                prefill=tuple(
                    PrefillCapacity(c * kv, s, self.bw_contention_frac) for c, s in zip(prefill_caps, shares)
                ),
                avg_context_tokens=ctx,
            )
        )

    def decide(self, request: RequestInfo, stats: LiveStats) -> Decision:
        return admit(request, stats, self.bounds(stats).ob)


def make_policy(spec: str, predictor: Predictor | None = None, **auto_kwargs) -> OffloadPolicy:
    """Policy from its spec string: `never`, `always`, `ratio:F` (0 <= F <= 10) or `auto`.

    `auto` needs `predictor` (and takes AutoPolicy's keyword arguments)."""
    kind, ratio = parse_policy(spec)
    if kind == "auto":
        if predictor is None:
            raise ValueError("policy 'auto' needs a predictor (get_predictor(...))")
        return AutoPolicy(predictor, **auto_kwargs)
    return RatioPolicy(ratio) if kind == "ratio" else NeverPolicy() if kind == "never" else AlwaysPolicy()

"""The proxy's per-request offload decision.

A decision is taken only when the chosen prefill instance can take it: its load report is fresh, its role
is `prefill` and its executor is healthy. Otherwise the request decodes locally (stock PD), which is how an
unreachable executor is handled without failing or hanging requests.

Policies: `never`, `always`, `ratio:F` (offload a share F of the requests, spread evenly: request n is
offloaded when floor(F * n) grows) and `auto`, which belongs to the scheduler (`adrenaline_sgl.scheduler`,
the same code as the simulator) and is created lazily from there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

from adrenaline_sgl.sglang_ext.flags import validate_policy
from adrenaline_sgl.sglang_ext.load_report import LoadReport


@dataclass(frozen=True)
class RequestInfo:
    """What the proxy knows about a request before it runs (token counts are estimates)."""

    prompt_tokens: int  # len(input_ids), or characters / 4 for text
    max_new_tokens: int

    @property
    def max_seq_len(self) -> int:
        return self.prompt_tokens + self.max_new_tokens


@dataclass(frozen=True)
class Decision:
    offload: bool
    reason: str  # "policy", "executor unavailable", ... (a metric label)


class Policy(Protocol):
    def wants_offload(self, req: RequestInfo, prefill: LoadReport, decode: LoadReport | None) -> bool: ...


class Never:
    def wants_offload(self, req, prefill, decode) -> bool:
        return False


class Always:
    def wants_offload(self, req, prefill, decode) -> bool:
        return True


class Ratio:
    """Offload a share `share` of the requests, evenly spread (deterministic, so tests can count)."""

    def __init__(self, share: float):
        self.share = share
        self._seen = 0

    def wants_offload(self, req, prefill, decode) -> bool:
        before = math.floor(self.share * self._seen + 1e-9)
        self._seen += 1
        return math.floor(self.share * self._seen + 1e-9) > before


def make_policy(text: str) -> Policy:
    """`never | always | ratio:F | auto` -> a policy object (ValueError naming the field otherwise)."""
    validate_policy(text, "policy")
    if text == "never":
        return Never()
    if text == "always":
        return Always()
    if text.startswith("ratio:"):
        return Ratio(float(text.split(":", 1)[1]))
    try:  # auto: the scheduler's admission (C1, C2 against OB); lazy so the proxy runs without it.
        from adrenaline_sgl.scheduler.policy import make_auto_policy  # type: ignore[import-not-found]
    except ImportError as err:
        raise ValueError(
            "policy=auto: needs adrenaline_sgl.scheduler.policy.make_auto_policy, which this tree does not have "
            "yet; use never, always or ratio:F"
        ) from err
    return make_auto_policy()


def executor_available(prefill: LoadReport | None) -> bool:
    return prefill is not None and prefill.role == "prefill" and prefill.executor_healthy and bool(
        prefill.executor_addr
    )


def decide(policy: Policy, req: RequestInfo, prefill: LoadReport | None, decode: LoadReport | None) -> Decision:
    """The decision for one request sent to this (prefill, decode) pair."""
    if not executor_available(prefill):
        return Decision(False, "executor unavailable")
    if decode is None or decode.role != "decode":  # missing, stale, unreachable, or stock SGLang
        return Decision(False, "decode not offload-capable")
    return Decision(policy.wants_offload(req, prefill, decode), "policy")

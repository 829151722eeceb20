"""Is a request offloaded? The proxy's mark, else this instance's `--adrenaline-offload-policy`.

The mark travels in `req.sampling_params.custom_params` (the proxy writes it; SGLang carries the custom
params unchanged to both instances). The fallback policy must give prefill and decode the same answer
without talking, so `ratio:F` hashes the bootstrap room both sides share.
"""

from __future__ import annotations

from adrenaline_sgl.sglang_ext.flags import AdrenalineArgs

OFFLOAD_KEY = "adrenaline_offload"  # same keys as adrenaline_sgl.proxy.request
EXECUTOR_KEY = "adrenaline_executor"
_HASH_MULT = 0x9E3779B97F4A7C15  # Fibonacci hashing of the 63-bit room into [0, 1)


def _custom_params(req) -> dict:
    params = getattr(getattr(req, "sampling_params", None), "custom_params", None)
    return params if isinstance(params, dict) else {}


def room_share(room: int) -> float:
    """A bootstrap room mapped evenly into [0, 1)."""
    return ((int(room) * _HASH_MULT) % 2**64) / 2**64


def is_offloaded(req, args: AdrenalineArgs) -> bool:
    if not args.enabled:
        return False
    mark = _custom_params(req).get(OFFLOAD_KEY)
    if isinstance(mark, bool):
        return mark
    policy = args.offload_policy
    if policy == "always":
        return True
    if policy.startswith("ratio:") and getattr(req, "bootstrap_room", None) is not None:
        ratio = float(policy.split(":", 1)[1])  # OB = offloaded / local, so a share OB / (1 + OB) of requests
        return room_share(req.bootstrap_room) < ratio / (1.0 + ratio)
    return False  # never, auto (the proxy decides), or no room to agree on


def offload_id(req) -> str:
    """The request's id at the executor: the bootstrap room, which prefill and decode share (each SGLang
    instance gives the same request its own `rid`); the rid when there is no room (tests, local runs)."""
    room = getattr(req, "bootstrap_room", None)
    return f"room-{room}" if room is not None else req.rid


def executor_of(req, args: AdrenalineArgs) -> str:
    """The executor to use for an offloaded request: the proxy's choice, else this instance's flag."""
    named = _custom_params(req).get(EXECUTOR_KEY)
    return named if isinstance(named, str) and named else args.executor_addr

"""Is a request offloaded? The proxy's mark, else this instance's `--adrenaline-unmarked-offload`.

The mark travels in `req.sampling_params.custom_params` under the keys of `adrenaline_sgl.protocol` (the
proxy writes them; SGLang carries the custom params unchanged to both instances). The fallback for unmarked
requests must give prefill and decode the same answer without talking, so `share:P` hashes the bootstrap room
both sides share.
"""

from __future__ import annotations

from adrenaline_sgl.protocol import EXECUTOR_KEY, OFFLOAD_KEY
from adrenaline_sgl.sglang_ext.flags import AdrenalineArgs

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
    share = args.unmarked_share
    room = getattr(req, "bootstrap_room", None)
    return share >= 1.0 or (share > 0.0 and room is not None and room_share(room) < share)


def offload_id(req) -> str:
    """The request's id at the executor: the bootstrap room, which prefill and decode share (each SGLang
    instance gives the same request its own `rid`); the rid when there is no room (tests, local runs)."""
    room = getattr(req, "bootstrap_room", None)
    return f"room-{room}" if room is not None else req.rid


def executor_of(req, args: AdrenalineArgs) -> str:
    """The executor to use for an offloaded request: the proxy's choice, else this instance's flag."""
    named = _custom_params(req).get(EXECUTOR_KEY)
    return named if isinstance(named, str) and named else args.executor_addr

"""The offload client (decode side): per step, which rows are offloaded; per layer, submit then wait.

    client.begin_step(rids)                  off the critical path: the executor allocates and plans
    for each layer:
        client.submit(layer, q_off, k_off, v_off)  one message, returns at once
        ... local attention for the other rows ...
        o_off, lse_off = client.wait()           the executor's answer, or OffloadError after the timeout
    (client.abort_step() if the step cannot finish)
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import OffloadError
from .transports.base import Channel
from .wire import RowLayout


@dataclass(frozen=True)
class ClientConfig:
    layer_timeout_s: float = field(
        default=5.0, metadata={"help": "seconds wait() waits for one layer's reply; also bounds begin_step/abort_step"}
    )
    control_timeout_s: float = field(
        default=60.0, metadata={"help": "seconds a bulk control call (hello, adopt_copy, release, stats) may take"}
    )
    round_trip_window: int = field(
        default=16384, metadata={"help": "per-layer round trips kept (the oldest are dropped), 1..1000000"}
    )

    def __post_init__(self):
        for name in ("layer_timeout_s", "control_timeout_s"):
            value = getattr(self, name)
            if not 0 < value <= 3600:
                raise ValueError(f"{name} must lie in (0, 3600] seconds, got {value}")
        if not 1 <= self.round_trip_window <= 1_000_000:
            raise ValueError(f"round_trip_window must lie in [1, 1000000] round trips, got {self.round_trip_window}")


class OffloadClient:
    """Decode-side handle on one executor, over any `Channel`."""

    def __init__(self, channel: Channel, layout: RowLayout, num_layers: int, config: ClientConfig | None = None):
        self.channel = channel
        self.layout = layout
        self.num_layers = num_layers
        self.config = config or ClientConfig()
        # One entry per layer, submit() to wait() returning, the last `round_trip_window` only; the end times
        # (time.monotonic) in a parallel deque for `recent_round_trips_ms`. Appended by the forward thread.
        self.round_trip_ms: deque[float] = deque(maxlen=self.config.round_trip_window)
        self._round_trip_end_s: deque[float] = deque(maxlen=self.config.round_trip_window)
        self._round_trip_lock = threading.Lock()
        self._step_id: int | None = None
        self._rids: tuple[str, ...] = ()
        self._pending: tuple[int, float] | None = None  # (layer, submit time)
        self.executor_info: dict[str, Any] = self._hello()

    def _hello(self) -> dict[str, Any]:
        """The executor's answer to `hello`; a client that cannot say hello closes its channel (registered
        buffers, sockets) before raising, so a failed connect leaves nothing behind (issue 18 defect 5)."""
        try:
            info, _ = self._call("hello", {"layout": self.layout.to_json(), "num_layers": self.num_layers})
        except BaseException:
            self.channel.close()
            raise
        return info

    @property
    def address(self) -> str:
        return self.channel.address

    @property
    def offloaded_rids(self) -> tuple[str, ...]:
        return self._rids

    # ---- off the per-layer path ----

    def adopt_copy(self, rid: str, k: torch.Tensor, v: torch.Tensor) -> None:
        """Hand the executor a prompt's KV `[num_layers, T, Hkv, D]` (the copy case)."""
        self._call("adopt_copy", {"rid": rid}, {"k": k, "v": v})

    def release(self, rid: str) -> None:
        self._call("release", {"rid": rid})

    def begin_step(self, rids: Sequence[str]) -> None:
        """This step's offloaded requests, in the order their rows will be submitted."""
        if self._pending is not None:
            raise OffloadError(f"begin_step: layer {self._pending[0]} was submitted but never waited for")
        self._rids = tuple(rids)
        self._step_id, _ = self._call("begin_step", {"rids": list(self._rids)}, timeout_s=self.config.layer_timeout_s)

    def abort_step(self) -> None:
        """Roll the executor's step back (after an error); a no-op when no step is open."""
        self._pending = None
        if self._step_id is not None:
            self._step_id = None
            self._call("abort_step", {}, timeout_s=self.config.layer_timeout_s)

    def stats(self) -> dict[str, Any]:
        return self._call("stats", {})[0]

    def recent_round_trips_ms(self, window_s: float | None = None) -> list[float]:
        """A copy of the per-layer round trips (ms) that ended in the last `window_s` seconds (None: all kept),
        oldest first; safe to call from any thread while the forward thread appends."""
        now_s = time.monotonic()
        with self._round_trip_lock:
            # NOTE: paired from the newest end: a caller may have cleared `round_trip_ms` (bench.py does),
            # leaving older end times unpaired; the newest of both deques always belong together.
            recent = []
            for ms, end_s in zip(reversed(self.round_trip_ms), reversed(self._round_trip_end_s), strict=False):
                if window_s is not None and now_s - end_s > window_s:
                    break  # end times only grow: everything older is outside the window too
                recent.append(ms)
        return recent[::-1]

    def close(self) -> None:
        self.channel.close()

    # ---- the per-layer path ----

    def submit(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Send the offloaded rows' q `[N, Hq, D]`, k, v `[N, Hkv, D]` for `layer` in one message."""
        if self._step_id is None:
            raise OffloadError(f"submit(layer={layer}) to {self.address}: no open step; call begin_step first")
        if self._pending is not None:
            raise OffloadError(f"submit(layer={layer}) to {self.address}: layer {self._pending[0]} still pending")
        if q.shape[0] != len(self._rids):
            raise OffloadError(f"submit(layer={layer}): {q.shape[0]} rows, but the step offloads {len(self._rids)}")
        self._pending = (layer, time.perf_counter())
        self.channel.send_layer(self._step_id, layer, q, k, v)

    def wait(self) -> tuple[torch.Tensor, torch.Tensor]:
        """o `[N, Hq, D]`, lse `[N, Hq]` of the submitted layer; `OffloadError` after `layer_timeout_s`."""
        if self._pending is None:
            raise OffloadError(f"wait() on {self.address}: nothing was submitted")
        layer, start = self._pending
        try:
            o, lse = self.channel.recv_layer(self._step_id, layer, self.config.layer_timeout_s)
        except OffloadError:
            raise
        except Exception as exc:  # a transport bug must still surface as an offload failure
            raise OffloadError(f"executor at {self.address}, layer {layer}: {exc}") from exc
        finally:
            self._pending = None
        elapsed_ms = (time.perf_counter() - start) * 1e3
        with self._round_trip_lock:
            self.round_trip_ms.append(elapsed_ms)
            self._round_trip_end_s.append(time.monotonic())
        return o, lse

    def _call(self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None,
              timeout_s: float | None = None):
        try:
            return self.channel.call(op, args, tensors, timeout_s or self.config.control_timeout_s)
        except OffloadError:
            raise
        except Exception as exc:
            raise OffloadError(f"executor at {self.address}: {op} failed: {exc}") from exc

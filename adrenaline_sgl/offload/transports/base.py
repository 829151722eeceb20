"""The transport interface between an `OffloadClient` (decode side) and an executor, and its registry.

A `Channel` is the client's end of one connection. Control calls are synchronous RPCs with a timeout;
the per-layer path is `send_layer` (one message with every offloaded row's q, k, v; returns at once) and
`recv_layer` (blocks up to a timeout for that layer's (o, lse)). Every failure is an `OffloadError`.

Creators import lazily: choosing `inproc` never imports mooncake, and no CUDA-only module is imported
unless `cuda_ipc` is chosen.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch


class Channel(ABC):
    """Client end of a connection to one attention executor."""

    address: str  # where the executor is, for error messages ("inproc", "127.0.0.1:5555", ...)
    client_id: str  # this connection's id at the executor (one open step per id; its line in the stats)

    @abstractmethod
    def call(
        self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor] | None, timeout_s: float
    ) -> tuple[Any, dict[str, torch.Tensor]]:
        """One control RPC (`adopt_copy`, `release`, `begin_step`, ...)."""

    @abstractmethod
    def send_layer(self, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Start one layer: q `[N, Hq, D]`, k, v `[N, Hkv, D]` as one message. Must not block on the executor."""

    @abstractmethod
    def recv_layer(self, step_id: int, layer: int, timeout_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer's o `[N, Hq, D]` and lse `[N, Hq]`; `OffloadError` after `timeout_s`."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release sockets, threads and registered memory."""


def _inproc(**kwargs) -> Channel:
    from .inproc import InprocChannel

    return InprocChannel(**kwargs)


def _mooncake(**kwargs) -> Channel:
    from .mooncake import MooncakeChannel

    return MooncakeChannel(**kwargs)


def _cuda_ipc(**kwargs) -> Channel:
    from .cuda_ipc import CudaIpcChannel

    return CudaIpcChannel(**kwargs)


TRANSPORTS: dict[str, Callable[..., Channel]] = {"inproc": _inproc, "mooncake": _mooncake, "cuda_ipc": _cuda_ipc}
# The executor-process end of each cross-process transport (`python -m adrenaline_sgl.offload.server`).
SERVER_TRANSPORTS = ("mooncake", "cuda_ipc")
DEFAULT_TRANSPORT = "mooncake"  # decode <-> executor across processes (TCP here, RDMA on a cluster)


def create_channel(transport: str, **kwargs) -> Channel:
    """A connected channel for `transport` (one of `TRANSPORTS`)."""
    if transport not in TRANSPORTS:
        raise ValueError(f"transport must be one of {sorted(TRANSPORTS)}, got {transport!r}")
    return TRANSPORTS[transport](**kwargs)

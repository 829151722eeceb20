"""Errors of the offload runtime. Everything it raises on purpose is an `OffloadError`."""

from __future__ import annotations


class OffloadError(RuntimeError):
    """An offload operation failed: a timeout, a dead executor, a bad message, a refused request."""


class PoolFullError(OffloadError):
    """The KV pool has too few free slots; nothing was allocated or written."""


class UnknownRequestError(OffloadError):
    """The request id is not held by the executor (never adopted, or already released)."""


class SlotError(OffloadError):
    """A slot operation would corrupt the pool: double free, double adoption, out-of-range slot."""


class NotConnectedError(OffloadError):
    """The executor does not know this client's connection (it restarted since, or never saw the connect):
    the client must connect again (new buffers, new handshake) before it opens a step."""


class NotReadyError(OffloadError):
    """The op cannot run yet (a request id the prefill scheduler has not handed over) but may within `wait_s`
    seconds: a caller that can block retries it (`ExecutorService.control`); a server loop parks it and keeps
    serving its other clients meanwhile (`RouterServer`). After `wait_s` the caller raises `final`."""

    def __init__(self, final: OffloadError, wait_s: float):
        super().__init__(f"not ready yet (retried for up to {wait_s} s): {final}")
        self.final = final
        self.wait_s = wait_s

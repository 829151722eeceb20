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

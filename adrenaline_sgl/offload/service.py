"""The executor's side of the protocol, shared by every transport: control ops and the per-layer call.

Control ops (off the per-layer path): `hello`, `adopt_copy`, `release`, `begin_step`, `abort_step`,
`stats`. A transport delivers them as (op, JSON-able args, tensors, client id) and returns (JSON-able
result, tensors). Several decode clients share one service: each has its own open step in the executor,
keyed by the transport's client id (`""` for callers that name none: the control socket, direct users).

What is static about a client (row layout: Hq, Hkv, D, dtype; the model's layer count; the most rows it
sends) is checked once: at the transport's `connect` (`connect`) and at `hello`. Per layer only what can
change is checked (the executor's `run_layer`: open step, layer, rows).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from .errors import NotReadyError, OffloadError
from .executor import DIRECT, AttentionExecutor
from .wire import RowLayout

_RETRY_S = 0.002  # how often a blocking `control` retries an op that is not ready yet


@dataclass(frozen=True)
class Session:
    """A connected client: its row layout (checked against the pool) and the most rows per step it sends."""

    layout: RowLayout
    max_rows: int | None  # None: no staging buffer bounds it (inproc)


class ExecutorService:
    """Dispatches protocol messages to one `AttentionExecutor`, for any number of connected decode clients."""

    def __init__(self, executor: AttentionExecutor):
        self.executor = executor
        self.sessions: dict[str, Session] = {}

    # ---- connections ----

    def connect(self, client: str, layout: RowLayout, max_rows: int | None = None) -> None:
        """A transport's client connects with rows of `layout`, at most `max_rows` per step: checked here, once."""
        pool = self.executor.pool
        if (layout.num_kv_heads, layout.head_dim, layout.dtype) != (pool.num_kv_heads, pool.head_dim, pool.dtype):
            raise OffloadError(f"connect: client rows are Hkv={layout.num_kv_heads} D={layout.head_dim} "
                               f"{layout.dtype}, the executor pool is Hkv={pool.num_kv_heads} D={pool.head_dim} "
                               f"{pool.dtype}")
        if self.executor.num_q_heads is None:
            self.executor.num_q_heads = layout.num_q_heads  # lets begin_step plan the kernel
        elif self.executor.num_q_heads != layout.num_q_heads:
            raise OffloadError(f"connect: client rows have Hq={layout.num_q_heads}, the executor "
                               f"Hq={self.executor.num_q_heads}")
        if client in self.sessions:  # the same id again: its earlier connection is over
            self.disconnect(client)
        self.sessions[client] = Session(layout, max_rows)

    def disconnect(self, client: str) -> None:
        """The client is gone: its unfinished step is rolled back (slots freed), its requests stay adopted
        (decode releases them, possibly over another connection)."""
        self.sessions.pop(client, None)
        self.executor.end_client(client)

    # ---- messages ----

    def control(self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor],
                client: str = DIRECT) -> tuple[Any, dict]:
        """One control op; an op that is not ready yet is retried here, blocking this caller only."""
        deadline = None
        while True:
            try:
                return self.try_control(op, args, tensors, client)
            except NotReadyError as wait:
                now = time.monotonic()
                deadline = deadline if deadline is not None else now + wait.wait_s
                if now >= deadline:
                    raise wait.final from None
                time.sleep(_RETRY_S)

    def try_control(self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor],
                    client: str = DIRECT) -> tuple[Any, dict]:
        """One attempt; raises `NotReadyError` for an op to retry (a server loop parks it and serves on)."""
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise OffloadError(f"unknown control op {op!r}")
        return handler(args, tensors, client)

    def layer(
        self, client: str, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer of `client`'s open step: q `[N, Hq, D]`, k, v `[N, Hkv, D]` -> (o `[N, Hq, D]`, lse `[N, Hq]`)."""
        return self.executor.run_layer(client, step_id, layer, q, k, v)

    # ---- control ops ----

    def _op_hello(self, args, tensors, client):
        layout = RowLayout.from_json(args["layout"])
        pool = self.executor.pool
        if int(args.get("num_layers", pool.num_layers)) != pool.num_layers:
            raise OffloadError(f"hello: client model has {args['num_layers']} layers, the pool {pool.num_layers}")
        session = self.sessions.get(client)
        if session is None:  # a transport without a connect handshake (inproc)
            self.connect(client, layout)
        elif session.layout != layout:
            raise OffloadError(f"hello: rows {layout} differ from the ones given at connect ({session.layout})")
        return {"num_layers": pool.num_layers, "num_slots": pool.num_slots, "attention": self.executor.ops.name}, {}

    def _op_adopt_copy(self, args, tensors, client):
        self.executor.adopt_copy(args["rid"], tensors["k"], tensors["v"])
        return None, {}

    def _op_release(self, args, tensors, client):
        self.executor.release(args["rid"])
        return None, {}

    def _op_begin_step(self, args, tensors, client):
        rids = args["rids"]
        session = self.sessions.get(client)
        if session is not None and session.max_rows is not None and len(rids) > session.max_rows:
            raise OffloadError(f"begin_step: {len(rids)} rows exceed this client's max_rows {session.max_rows}")
        return self.executor.begin_step(rids, client).step_id, {}

    def _op_abort_step(self, args, tensors, client):
        self.executor.abort_step(client)
        return None, {}

    def _op_stats(self, args, tensors, client):
        return asdict(self.executor.stats()), {}

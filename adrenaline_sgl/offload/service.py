"""The executor's side of the protocol, shared by every transport: control ops and the per-layer call.

Control ops (off the per-layer path): `hello`, `adopt_copy`, `release`, `begin_step`, `abort_step`,
`stats`. A transport delivers them as (op, JSON-able args, tensors) and returns (JSON-able result, tensors).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .errors import OffloadError
from .executor import AttentionExecutor
from .wire import RowLayout


class ExecutorService:
    """Dispatches protocol messages to one `AttentionExecutor` (one decode client at a time)."""

    def __init__(self, executor: AttentionExecutor):
        self.executor = executor
        self.layout: RowLayout | None = None
        self.step_id: int | None = None
        self.rids: tuple[str, ...] = ()

    def control(self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor]) -> tuple[Any, dict]:
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:
            raise OffloadError(f"unknown control op {op!r}")
        return handler(args, tensors)

    def layer(
        self, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One layer of the open step: q `[N, Hq, D]`, k, v `[N, Hkv, D]` -> (o `[N, Hq, D]`, lse `[N, Hq]`)."""
        if step_id != self.step_id:
            raise OffloadError(f"layer {layer}: step {step_id} is not the open step ({self.step_id})")
        return self.executor.step(layer, self.rids, q, k, v)

    # ---- control ops ----

    def _op_hello(self, args, tensors):
        layout = RowLayout.from_json(args["layout"])
        pool = self.executor.pool
        if (layout.num_kv_heads, layout.head_dim, layout.dtype) != (pool.num_kv_heads, pool.head_dim, pool.dtype):
            raise OffloadError(f"hello: client rows are Hkv={layout.num_kv_heads} D={layout.head_dim} "
                               f"{layout.dtype}, the executor pool is Hkv={pool.num_kv_heads} D={pool.head_dim} "
                               f"{pool.dtype}")
        if int(args.get("num_layers", pool.num_layers)) != pool.num_layers:
            raise OffloadError(f"hello: client model has {args['num_layers']} layers, the pool {pool.num_layers}")
        if self.executor.num_q_heads is None:
            self.executor.num_q_heads = layout.num_q_heads  # lets begin_step plan the kernel
        elif self.executor.num_q_heads != layout.num_q_heads:
            raise OffloadError(f"hello: client rows have Hq={layout.num_q_heads}, the executor "
                               f"Hq={self.executor.num_q_heads}")
        self.layout = layout
        return {"num_layers": pool.num_layers, "num_slots": pool.num_slots, "attention": self.executor.ops.name}, {}

    def _op_adopt_copy(self, args, tensors):
        self.executor.adopt_copy(args["rid"], tensors["k"], tensors["v"])
        return None, {}

    def _op_release(self, args, tensors):
        self.executor.release(args["rid"])
        return None, {}

    def _op_begin_step(self, args, tensors):
        plan = self.executor.begin_step(args["rids"])
        self.step_id, self.rids = plan.step_id, plan.rids
        return plan.step_id, {}

    def _op_abort_step(self, args, tensors):
        self.executor.abort_step()
        self.step_id, self.rids = None, ()
        return None, {}

    def _op_stats(self, args, tensors):
        return dataclasses.asdict(self.executor.stats()), {}

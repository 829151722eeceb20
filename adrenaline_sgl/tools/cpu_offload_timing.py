"""The executor's attention and the per-layer round trip over Mooncake TCP, for profile_cpu.

- `executor_attention`: `AttentionExecutor.step` (append + attention, the kernel the real executor runs
  here: `auto` is the torch reference on CPU) per layer, and `begin_step` per step, over a pool of the
  model's shapes holding `rows` requests of `context` random KV tokens, in this (pinned) process.
- `round_trips`: an executor process (`offload/process.py`, Mooncake TCP on loopback) started on the peer
  CPU, as in the pinned deployment (decode on one core, the executor inside prefill on the other); this
  process is the decode side: `begin_step`, then per layer `submit` -> `wait` with random q, k, v, no model
  in between (the round trip is measured submit to wait, so the model would not be inside it anyway). The
  executor's own time per layer comes from its stats over the same steps, so transfer = round trip - that.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.wire import RowLayout
from adrenaline_sgl.scheduler.specs import ModelSpec
from adrenaline_sgl.tools.offload_check import percentile

DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


@dataclass(frozen=True)
class Timing:
    """Samples of one point, ms."""

    samples_ms: list[float]

    @property
    def p50(self) -> float:
        return percentile(self.samples_ms, 50)

    @property
    def p99(self) -> float:
        return percentile(self.samples_ms, 99)


def _random_kv(m: ModelSpec, tokens: int, dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    shape = (m.num_layers, tokens, m.num_kv_heads, m.head_dim)
    return tuple(torch.randn(shape, generator=gen).to(dtype) for _ in range(2))


def _random_rows(m: ModelSpec, rows: int, dtype: torch.dtype, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    q = torch.randn(rows, m.num_q_heads, m.head_dim, generator=gen).to(dtype)
    k, v = (torch.randn(rows, m.num_kv_heads, m.head_dim, generator=gen).to(dtype) for _ in range(2))
    return q, k, v


def executor_attention(m: ModelSpec, rows: int, context: int, dtype: torch.dtype, steps: int, warmup: int,
                       attention: str = "auto") -> tuple[Timing, Timing]:
    """(per-layer `step`, per-step `begin_step`) of `rows` requests holding `context` tokens each."""
    pool = KVPool.standalone(m.num_layers, rows * (context + steps + warmup) + 16, m.num_kv_heads, m.head_dim,
                             dtype)
    executor = AttentionExecutor(pool, attention, num_q_heads=m.num_q_heads)
    gen = torch.Generator().manual_seed(rows * 100003 + context)
    rids = [f"r{i}" for i in range(rows)]
    for rid in rids:
        executor.adopt_copy(rid, *_random_kv(m, context, dtype, gen))
    q, k, v = _random_rows(m, rows, dtype, gen)
    layer_ms, begin_ms = [], []
    with torch.inference_mode():
        for step in range(warmup + steps):
            t0 = time.perf_counter()
            executor.begin_step(rids)
            t1 = time.perf_counter()
            per_layer = []
            for layer in range(m.num_layers):
                t_layer = time.perf_counter()
                executor.step(layer, rids, q, k, v)
                per_layer.append((time.perf_counter() - t_layer) * 1e3)
            if step >= warmup:
                begin_ms.append((t1 - t0) * 1e3)
                layer_ms += per_layer
    return Timing(layer_ms), Timing(begin_ms)


@contextmanager
def _spawning_on(cpus: set[int]):
    """Children started inside run on `cpus` (they inherit the calling thread's affinity); restored after."""
    own = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, own)


@dataclass(frozen=True)
class RoundTrip:
    rows: int
    round_trip: Timing  # per layer, submit -> wait
    executor_ms_per_layer: float  # the executor's own append + attention per layer (its stats), mean
    out_bytes: int  # q, k, v of one layer
    back_bytes: int  # o, lse of one layer


def round_trips(m: ModelSpec, rows_list: list[int], context: int, dtype: torch.dtype, steps: int, warmup: int,
                executor_cpu: int, attention: str = "auto", log=print) -> list[RoundTrip]:
    """Per-layer round trips over Mooncake TCP with the executor process pinned to `executor_cpu`."""
    from adrenaline_sgl.offload.process import ExecutorProcess
    from adrenaline_sgl.offload.transports.base import create_channel

    max_rows = max(rows_list)
    layout = RowLayout(m.num_q_heads, m.num_kv_heads, m.head_dim, dtype)
    num_slots = max_rows * (context + warmup + steps) + 64  # each point adopts fresh requests, releases them after
    gen = torch.Generator().manual_seed(context)
    with _spawning_on({executor_cpu}):
        proc = ExecutorProcess(m.num_layers, m.num_kv_heads, m.head_dim, num_slots, DTYPE_NAMES[dtype], attention,
                               transport="mooncake")
    results = []
    try:
        allowed = {int(tid): os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{proc.pid}/task")}
        if any(cpus != {executor_cpu} for cpus in allowed.values()):
            raise RuntimeError(f"executor process {proc.pid} is not pinned to CPU {executor_cpu}: {allowed}")
        log(f"profile_cpu: executor process {proc.pid} on CPU {executor_cpu} ({len(allowed)} threads) at "
            f"{proc.address}")
        channel = create_channel("mooncake", address=proc.address, layout=layout, max_rows=max_rows)
        client = OffloadClient(channel, layout, m.num_layers, ClientConfig(layer_timeout_s=60.0))
        try:
            for rows in rows_list:
                rids = [f"n{rows}-r{i}" for i in range(rows)]
                for rid in rids:
                    client.adopt_copy(rid, *_random_kv(m, context, dtype, gen))
                q, k, v = _random_rows(m, rows, dtype, gen)
                before = client.stats()
                for step in range(warmup + steps):
                    if step == warmup:
                        client.round_trip_ms.clear()
                        before = client.stats()
                    client.begin_step(rids)
                    for layer in range(m.num_layers):
                        client.submit(layer, q, k, v)
                        client.wait()
                after = client.stats()
                calls = after["layer_calls"] - before["layer_calls"]
                exec_ms = (after["attention_time_s"] - before["attention_time_s"]) * 1e3 / max(calls, 1)
                out_bytes = rows * (m.q_dim + 2 * m.kv_dim) * torch.finfo(dtype).bits // 8
                back_bytes = rows * (m.q_dim * torch.finfo(dtype).bits // 8 + m.num_q_heads * 4)
                results.append(RoundTrip(rows, Timing(list(client.round_trip_ms)), exec_ms, out_bytes, back_bytes))
                for rid in rids:
                    client.release(rid)
        finally:
            client.close()
    finally:
        proc.stop()
    return results

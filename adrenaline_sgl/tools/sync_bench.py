"""The offload sync path against its floor: our per-layer round trip vs a raw Mooncake transfer + the attention.

    python -m adrenaline_sgl.tools.sync_bench [--rows 1,2,4,8,16,32 --context 256 --steps 30]

The pinned setup of issue 14: the executor process (`offload/server.py`, Mooncake TCP on loopback) on
`--executor-cpu`, this process (the decode client) on `--client-cpu`, SmolLM2-135M shapes in bf16, every
row offloaded (F = 1.0). Per rows count N it measures, interleaved step by step so that drift hits all
three alike:
- (a) round trip: `OffloadClient.submit` -> `wait` of one layer (what decode's attention backend pays);
- (b) raw: one `batch_transfer_sync_write` of the layer's q|k|v bytes into the executor's registered request
  buffer plus one `batch_transfer_sync_read` of the o|lse bytes, on this process's engine, nothing else;
- (c) attention: the executor's `run_layer` (append + attention, the kernel it runs here) over the same
  shapes and context, in this process with the calling thread moved to the executor's CPU.
It prints p50/p99 of each, `ratio = rt_p50 / (raw_p50 + attn_p50)` (goal <= 1.3) and `rt_p99 / rt_p50`
(goal < 3), and, with `--out`, one CSV row per N. Quote it with `cat /proc/loadavg`: it needs a quiet machine.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

RATIO_GOAL = 1.3
TAIL_GOAL = 3.0
FIELDS = ["rows", "context", "samples", "rt_p50_ms", "rt_p99_ms", "raw_p50_ms", "raw_p99_ms", "attn_p50_ms",
          "attn_p99_ms", "exec_mean_ms", "ratio_p50", "rt_p99_over_p50"]


@dataclass(frozen=True)
class Point:
    rows: int
    context: int
    samples: int
    rt_p50_ms: float
    rt_p99_ms: float
    raw_p50_ms: float
    raw_p99_ms: float
    attn_p50_ms: float
    attn_p99_ms: float
    exec_mean_ms: float  # the executor process's own append + attention per layer (its stats), for comparison
    ratio_p50: float
    rt_p99_over_p50: float


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or any(not 1 <= v <= 256 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated row counts in [1, 256], got {text!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    from adrenaline_sgl.offload.cli_args import int_in

    p = argparse.ArgumentParser(prog="python -m adrenaline_sgl.tools.sync_bench", description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=_int_list, default=[1, 2, 4, 8, 16, 32], help="offloaded rows per step (N)")
    p.add_argument("--context", type=int_in("context", 1, 8192), default=256, help="KV tokens per request")
    p.add_argument("--steps", type=int_in("steps", 1, 10000), default=30, help="timed steps (x 30 layers) per N")
    p.add_argument("--warmup", type=int_in("warmup", 0, 1000), default=3, help="untimed steps first")
    p.add_argument("--executor-cpu", type=int, default=0, help="CPU of the executor process")
    p.add_argument("--client-cpu", type=int, default=1, help="CPU of this process (the decode client)")
    p.add_argument("--out", type=Path, default=None, help="CSV file to write (one row per N)")
    return p


def _check_cpus(args: argparse.Namespace) -> None:
    have = os.sched_getaffinity(0)
    for name in ("executor_cpu", "client_cpu"):
        if getattr(args, name) not in have:
            raise SystemExit(f"sync_bench: --{name.replace('_', '-')} {getattr(args, name)} is not one of this "
                             f"machine's usable CPUs {sorted(have)}")
    if args.executor_cpu == args.client_cpu:
        raise SystemExit("sync_bench: --executor-cpu and --client-cpu must differ (the pinned setup)")


def _quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


class _Bench:
    """The executor process, the client, the raw engine handles and an in-process executor for (c)."""

    def __init__(self, args: argparse.Namespace):
        import torch

        from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
        from adrenaline_sgl.offload.executor import AttentionExecutor
        from adrenaline_sgl.offload.pool import KVPool
        from adrenaline_sgl.offload.process import ExecutorProcess
        from adrenaline_sgl.offload.transports.base import create_channel
        from adrenaline_sgl.offload.wire import RowLayout
        from adrenaline_sgl.scheduler.specs import get_model
        from adrenaline_sgl.tools.cpu_offload_timing import _spawning_on

        self.args = args
        self.m = m = get_model("smollm2-135m")
        self.dtype = torch.bfloat16
        self.layout = RowLayout(m.num_q_heads, m.num_kv_heads, m.head_dim, self.dtype)
        max_rows = max(args.rows)
        per_request = args.context + args.warmup + args.steps + 1
        num_slots = sum(args.rows) * per_request + 64
        with _spawning_on({args.executor_cpu}):
            self.proc = ExecutorProcess(m.num_layers, m.num_kv_heads, m.head_dim, num_slots, "bfloat16", "auto",
                                        transport="mooncake")
        self.channel = create_channel("mooncake", address=self.proc.address, layout=self.layout, max_rows=max_rows)
        self.client = OffloadClient(self.channel, self.layout, m.num_layers, ClientConfig(layer_timeout_s=60.0))
        self.local = AttentionExecutor(KVPool.standalone(m.num_layers, max_rows * per_request + 64, m.num_kv_heads,
                                                         m.head_dim, self.dtype), "auto",
                                       num_q_heads=m.num_q_heads)
        self.gen = torch.Generator().manual_seed(args.context)

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            self.proc.stop()

    def _random_kv(self):
        import torch

        m = self.m
        shape = (m.num_layers, self.args.context, m.num_kv_heads, m.head_dim)
        return tuple(torch.randn(shape, generator=self.gen).to(self.dtype) for _ in range(2))

    def _random_rows(self, rows: int):
        import torch

        m = self.m
        q = torch.randn(rows, m.num_q_heads, m.head_dim, generator=self.gen).to(self.dtype)
        k, v = (torch.randn(rows, m.num_kv_heads, m.head_dim, generator=self.gen).to(self.dtype) for _ in range(2))
        return q, k, v

    def _round_trip_step(self, rids, q, k, v, out: list[float]) -> None:
        self.client.begin_step(rids)
        for layer in range(self.m.num_layers):
            t0 = time.perf_counter()
            self.client.submit(layer, q, k, v)
            self.client.wait()
            out.append((time.perf_counter() - t0) * 1e3)

    def _raw_step(self, rows: int, out: list[float]) -> None:
        ch = self.channel
        engine, session, peer = ch._engine, ch._peer_session, ch._peer_req_addr
        send_ptr, recv_ptr = ch._send_buf.data_ptr(), ch._recv_buf.data_ptr()
        out_bytes, back_bytes = self.layout.request_bytes(rows), self.layout.reply_bytes(rows)
        for _ in range(self.m.num_layers):
            t0 = time.perf_counter()
            rc_w = engine.batch_transfer_sync_write(session, [send_ptr], [peer], [out_bytes])
            rc_r = engine.batch_transfer_sync_read(session, [recv_ptr], [peer], [back_bytes])
            out.append((time.perf_counter() - t0) * 1e3)
            if rc_w != 0 or rc_r != 0:
                raise RuntimeError(f"sync_bench: raw mooncake write/read returned {rc_w}/{rc_r}")

    def _attention_step(self, rids, q, k, v, out: list[float]) -> None:
        own = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {self.args.executor_cpu})  # this thread only: the executor's core
        try:
            self.local.begin_step(rids)
            for layer in range(self.m.num_layers):
                t0 = time.perf_counter()
                self.local.step(layer, rids, q, k, v)
                out.append((time.perf_counter() - t0) * 1e3)
        finally:
            os.sched_setaffinity(0, own)

    def point(self, rows: int) -> Point:
        import torch

        args = self.args
        rids = [f"n{rows}-r{i}" for i in range(rows)]
        for rid in rids:
            k, v = self._random_kv()
            self.client.adopt_copy(rid, k, v)
            self.local.adopt_copy(rid, k, v)
        q, k, v = self._random_rows(rows)
        rt, raw, attn = [], [], []
        with torch.inference_mode():
            before = self.client.stats()
            for step in range(args.warmup + args.steps):
                if step == args.warmup:
                    rt, raw, attn = [], [], []
                    before = self.client.stats()
                self._round_trip_step(rids, q, k, v, rt)
                self._raw_step(rows, raw)
                self._attention_step(rids, q, k, v, attn)
            after = self.client.stats()
        for rid in rids:
            self.client.release(rid)
            self.local.release(rid)
        calls = max(after["layer_calls"] - before["layer_calls"], 1)
        exec_mean = (after["attention_time_s"] - before["attention_time_s"]) * 1e3 / calls
        p = {name: (_quantile(s, 0.5), _quantile(s, 0.99)) for name, s in (("rt", rt), ("raw", raw), ("attn", attn))}
        return Point(rows, args.context, len(rt), *p["rt"], *p["raw"], *p["attn"], exec_mean,
                     p["rt"][0] / (p["raw"][0] + p["attn"][0]), p["rt"][1] / p["rt"][0])


def _print(points: list[Point]) -> None:
    print(f"{'rows':>4} {'rt p50':>7} {'rt p99':>7} {'raw p50':>7} {'raw p99':>7} {'attn p50':>8} {'attn p99':>8} "
          f"{'exec':>6} {'ratio':>6} {'p99/p50':>7}   (ms; ratio = rt_p50/(raw_p50+attn_p50), goal <= "
          f"{RATIO_GOAL}; p99/p50 goal < {TAIL_GOAL})")
    for pt in points:
        print(f"{pt.rows:>4} {pt.rt_p50_ms:7.3f} {pt.rt_p99_ms:7.3f} {pt.raw_p50_ms:7.3f} {pt.raw_p99_ms:7.3f} "
              f"{pt.attn_p50_ms:8.3f} {pt.attn_p99_ms:8.3f} {pt.exec_mean_ms:6.3f} {pt.ratio_p50:6.2f} "
              f"{pt.rt_p99_over_p50:7.2f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _check_cpus(args)
    from adrenaline_sgl.tools.profile_cpu import pin_self

    pin_self(args.client_cpu)  # before any engine or ZMQ thread exists: they inherit it
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"sync_bench: SmolLM2-135M bf16, context {args.context}, {args.steps} steps x 30 layers per N; executor "
          f"on CPU {args.executor_cpu}, client on CPU {args.client_cpu}; loadavg {' '.join(load)}", flush=True)
    bench = _Bench(args)
    points = []
    try:
        for rows in args.rows:
            points.append(bench.point(rows))
    finally:
        bench.close()
    _print(points)
    with open("/proc/loadavg") as f:
        print(f"sync_bench: loadavg after {' '.join(f.read().split()[:3])}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            for pt in points:
                writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(pt).items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())

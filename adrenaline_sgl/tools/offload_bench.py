"""Decode-step cost of offloading: M local rows alone vs M local + N offloaded rows, per-layer round trips.

    python -m adrenaline_sgl.tools.offload_bench --model llama2-7b-random --dtype float16 --local 64 \
        --offloaded 0,16,64,128 --context 1024 --transport inproc --steps 20 --out results/offload_bench

For each N it runs the decode harness on M + N random prompts of `--context` tokens (the first M local, the
rest offloaded), times `--steps` decode steps after `--warmup`, and writes one CSV row: step time p50/p99,
its ratio to the N=0 row (does the remote work hide under the local one?), and the per-layer submit-to-wait
round trip p50/p99. A `.meta.json` beside the CSV records the machine, versions and command.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch

from adrenaline_sgl.offload.attention import ATTENTION_CHOICES
from adrenaline_sgl.offload.cli_args import int_in
from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.base import TRANSPORTS, create_channel
from adrenaline_sgl.offload.wire import RowLayout
from adrenaline_sgl.tools.decode_harness import DecodeHarness
from adrenaline_sgl.tools.harness_models import DTYPES, MODELS, load_model
from adrenaline_sgl.tools.offload_check import percentile

FIELDS = ["model", "dtype", "device", "transport", "attention", "local_rows", "offloaded_rows", "context",
          "steps", "step_ms_p50", "step_ms_p99", "step_vs_local_only", "round_trip_ms_p50", "round_trip_ms_p99"]


def _int_list(text: str) -> list[int]:
    values = [int(x) for x in text.split(",") if x.strip()]
    if not values or any(v < 0 or v > 4096 for v in values):
        raise argparse.ArgumentTypeError(f"--offloaded must be comma-separated counts in [0, 4096], got {text!r}")
    return values



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adrenaline_sgl.tools.offload_bench", description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="tiny-random", help="which Llama to drive")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model and KV dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="model device")
    p.add_argument("--transport", choices=tuple(TRANSPORTS), default="inproc",
                   help="client-executor transport (mooncake, cuda_ipc: the executor in a second process)")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto", help="decode attention kernel")
    p.add_argument("--local", type=int_in("local", 0, 4096), default=8, help="M: rows attended locally")
    p.add_argument("--offloaded", type=_int_list, default=[0, 8], help="N values, comma-separated (0 = baseline)")
    p.add_argument("--context", type=int_in("context", 1, 32768), default=64, help="prompt tokens per request")
    p.add_argument("--steps", type=int_in("steps", 1, 10000), default=8, help="timed decode steps")
    p.add_argument("--warmup", type=int_in("warmup", 0, 1000), default=2, help="untimed decode steps first")
    p.add_argument("--out", type=Path, required=True, help="output folder (bench.csv, bench.meta.json)")
    return p


def _sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(args: argparse.Namespace, loaded, offloaded_rows: int) -> dict:
    model, cfg = loaded.model, loaded.model.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layout = RowLayout(cfg.num_attention_heads, cfg.num_key_value_heads, head_dim, DTYPES[args.dtype])
    gen = torch.Generator().manual_seed(offloaded_rows)
    count = args.local + offloaded_rows
    prompts = torch.randint(0, cfg.vocab_size, (count, args.context), generator=gen).tolist()
    flags = [False] * args.local + [True] * offloaded_rows
    new_tokens = args.warmup + args.steps + 2
    num_slots = count * (args.context + new_tokens) + 64
    with ExitStack() as stack:
        client = None
        if offloaded_rows:
            if args.transport == "inproc":
                pool = KVPool.standalone(cfg.num_hidden_layers, num_slots, layout.num_kv_heads, head_dim,
                                         layout.dtype, args.device)
                executor = AttentionExecutor(pool, args.attention, num_q_heads=layout.num_q_heads)
                channel = create_channel("inproc", service=ExecutorService(executor))
            else:
                from adrenaline_sgl.offload.process import ExecutorProcess

                proc = stack.enter_context(ExecutorProcess(cfg.num_hidden_layers, layout.num_kv_heads, head_dim,
                                                           num_slots, args.dtype, args.attention,
                                                           transport=args.transport))
                channel = create_channel(args.transport, address=proc.address, layout=layout,
                                         max_rows=offloaded_rows)
            client = OffloadClient(channel, layout, cfg.num_hidden_layers, ClientConfig(layer_timeout_s=60.0))
            stack.callback(client.close)
        marks: list[float] = []

        def mark(step: int) -> None:
            _sync(args.device)
            marks.append(time.perf_counter())
            if client is not None and step == args.warmup:
                client.round_trip_ms.clear()  # keep only the timed steps' round trips

        DecodeHarness(model, client, args.attention, eos_token_id=None).generate(prompts, flags, new_tokens,
                                                                                  on_step=mark)
    step_ms = [(b - a) * 1e3 for a, b in zip(marks[args.warmup :], marks[args.warmup + 1 :])]
    return {
        "model": args.model, "dtype": args.dtype, "device": args.device, "transport": args.transport,
        "attention": args.attention, "local_rows": args.local, "offloaded_rows": offloaded_rows,
        "context": args.context, "steps": len(step_ms), "step_ms_p50": percentile(step_ms, 50),
        "step_ms_p99": percentile(step_ms, 99), "step_vs_local_only": None,
        "round_trip_ms_p50": percentile(client.round_trip_ms, 50) if client else None,
        "round_trip_ms_p99": percentile(client.round_trip_ms, 99) if client else None,
    }


def _environment(device: str) -> dict:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        sha = "unknown"
    env = {"python": platform.python_version(), "torch": torch.__version__, "machine": platform.machine(),
           "node": platform.node(), "cpu_threads": torch.get_num_threads(), "git_sha": sha,
           "command": " ".join([sys.executable, "-m", "adrenaline_sgl.tools.offload_bench", *sys.argv[1:]])}
    if torch.device(device).type == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        pass
    return env


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.local == 0 and 0 in args.offloaded:
        raise SystemExit("--local 0 with an N=0 row would time an empty batch; drop 0 from --offloaded")
    loaded = load_model(args.model, args.dtype, args.device)
    from tqdm import tqdm

    rows = [measure(args, loaded, n) for n in tqdm(args.offloaded, desc="offloaded rows")]
    base = next((r["step_ms_p50"] for r in rows if r["offloaded_rows"] == 0), None)
    for row in rows:
        if base:
            row["step_vs_local_only"] = round(row["step_ms_p50"] / base, 4)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "bench.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "bench.meta.json").write_text(json.dumps(_environment(args.device), indent=2) + "\n")
    for row in rows:
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

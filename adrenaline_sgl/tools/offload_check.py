"""Exact-token check of the offload runtime on a real model.

    python -m adrenaline_sgl.tools.offload_check --transport {inproc,mooncake} --offload-fraction F \
        --prompts P --max-new-tokens T [--model smollm2] [--dtype float32]

Runs the decode harness twice on the same prompts, greedy: without offload, then with a fraction F of the
requests offloaded (over `mooncake` the executor runs in a second process). Prints one JSON line with
`identical`, `tokens_compared`, `offloaded_requests`, `round_trip_ms_p50`, `round_trip_ms_p99` (per layer,
submit to wait) and the conditions; exits 1 when the tokens differ, 2 on an offload failure.
With `--kill-executor-at-step S` (mooncake) the executor is SIGKILLed before decode step S; the `fault`
entry then says how fast the client noticed and whether the local requests still decoded exactly.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from contextlib import ExitStack

import torch

from adrenaline_sgl.offload.attention import ATTENTION_CHOICES
from adrenaline_sgl.offload.cli_args import int_in
from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.errors import OffloadError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.base import TRANSPORTS, create_channel
from adrenaline_sgl.offload.wire import RowLayout
from adrenaline_sgl.tools.decode_harness import DecodeHarness
from adrenaline_sgl.tools.harness_models import DTYPES, MODELS, load_model


def offload_flags(fraction: float, count: int) -> list[bool]:
    """Which of `count` requests to offload: round(fraction * count) of them, spread evenly over the batch."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"offload fraction must lie in [0, 1], got {fraction}")
    n = round(fraction * count)
    chosen = {int(i * count / n) for i in range(n)} if n else set()
    return [i in chosen for i in range(count)]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return round(float(torch.tensor(values, dtype=torch.float64).quantile(q / 100.0)), 4)


def _fraction(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--offload-fraction must lie in [0, 1], got {value}")
    return value



def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"--layer-timeout-s must lie in (0, 3600], got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adrenaline_sgl.tools.offload_check", description=__doc__.split("\n")[0])
    p.add_argument("--transport", choices=tuple(TRANSPORTS), default="inproc",
                   help="client-executor transport (mooncake, cuda_ipc: the executor in a second process)")
    p.add_argument("--offload-fraction", type=_fraction, default=0.5, help="share of requests offloaded, in [0, 1]")
    p.add_argument("--prompts", type=int_in("prompts", 1, 8), default=8, help="number of chat prompts, 1..8")
    p.add_argument("--max-new-tokens", type=int_in("max-new-tokens", 1, 4096), default=32, help="tokens per request")
    p.add_argument("--model", choices=sorted(MODELS), default="smollm2", help="which Llama to drive")
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="model and KV dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="model device")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto",
                   help="decode attention on both sides (auto: triton on a GPU, reference on CPU)")
    p.add_argument("--layer-timeout-s", type=_seconds, default=30.0, help="per-layer wait timeout, seconds")
    p.add_argument("--kill-executor-at-step", type=int_in("kill-executor-at-step", 0, 4096), default=None,
                   help="fault check (mooncake): SIGKILL the executor before this decode step; then the local "
                        "requests must still match the baseline and every offloaded one still decoding must fail")
    p.add_argument("--progress", action="store_true", help="show a progress bar per run")
    return p


def run_check(args: argparse.Namespace) -> dict:
    if args.kill_executor_at_step is not None and args.transport == "inproc":
        raise SystemExit("--kill-executor-at-step needs --transport mooncake or cuda_ipc (a second process)")
    loaded = load_model(args.model, args.dtype, args.device)
    model, cfg = loaded.model, loaded.model.config
    prompts = loaded.prompts(args.prompts)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layout = RowLayout(cfg.num_attention_heads, cfg.num_key_value_heads, head_dim, DTYPES[args.dtype])
    flags = offload_flags(args.offload_fraction, len(prompts))
    num_slots = sum(len(p) + args.max_new_tokens for p in prompts) + 64

    start = time.perf_counter()
    baseline = DecodeHarness(model, None, args.attention, loaded.eos_token_id).generate(
        prompts, [False] * len(prompts), args.max_new_tokens, progress=args.progress)
    baseline_s = time.perf_counter() - start

    with ExitStack() as stack:
        if args.transport == "inproc":
            pool = KVPool.standalone(cfg.num_hidden_layers, num_slots, layout.num_kv_heads, head_dim,
                                     layout.dtype, args.device)
            channel = create_channel("inproc", service=ExecutorService(AttentionExecutor(pool, args.attention)))
        else:
            from adrenaline_sgl.offload.process import ExecutorProcess

            proc = stack.enter_context(ExecutorProcess(cfg.num_hidden_layers, layout.num_kv_heads, head_dim,
                                                       num_slots, args.dtype, args.attention,
                                                       transport=args.transport))
            channel = create_channel(args.transport, address=proc.address, layout=layout, max_rows=len(prompts))
        config = ClientConfig(layer_timeout_s=args.layer_timeout_s)
        client = OffloadClient(channel, layout, cfg.num_hidden_layers, config)
        stack.callback(client.close)
        killed_at = []

        def maybe_kill(step: int) -> None:
            if step == args.kill_executor_at_step:
                proc.kill()
                killed_at.append(time.perf_counter())

        start = time.perf_counter()
        offload = DecodeHarness(model, client, args.attention, loaded.eos_token_id).generate(
            prompts, flags, args.max_new_tokens, on_step=maybe_kill, progress=args.progress)
        offload_s = time.perf_counter() - start
        executor_stats = client.stats() if not offload.failed else None

    identical = baseline.tokens == offload.tokens and not offload.failed
    fault = None
    if args.kill_executor_at_step is not None:
        local = [i for i, f in enumerate(flags) if not f]
        # offloaded requests still decoding when the executor died (the others had finished before)
        live = {f"r{i}" for i, f in enumerate(flags) if f and len(baseline.tokens[i]) > args.kill_executor_at_step + 1}
        fault = {
            "killed": bool(killed_at),
            "detect_s": round(offload.failed_at - killed_at[0], 3) if killed_at and offload.failed_at else None,
            "failed_requests": sorted(offload.failed),
            "all_offloaded_failed": set(offload.failed) == live,
            "local_identical": all(offload.tokens[i] == baseline.tokens[i] for i in local),
            "local_tokens": sum(len(offload.tokens[i]) for i in local),
        }
    return {
        "identical": identical,
        "fault": fault,
        "tokens_compared": sum(len(t) for t in baseline.tokens),
        "offloaded_requests": sum(flags),
        "requests": len(prompts),
        "round_trip_ms_p50": percentile(client.round_trip_ms, 50),
        "round_trip_ms_p99": percentile(client.round_trip_ms, 99),
        "round_trips": len(client.round_trip_ms),
        "failed_requests": offload.failed,
        "baseline_s": round(baseline_s, 3),
        "offload_s": round(offload_s, 3),
        "executor": executor_stats,
        "executor_attention": client.executor_info.get("attention"),
        "transport": args.transport,
        "offload_fraction": args.offload_fraction,
        "max_new_tokens": args.max_new_tokens,
        "model": args.model,
        "dtype": args.dtype,
        "device": args.device,
        "machine": f"{platform.machine()} {platform.node()} torch {torch.__version__} threads "
                   f"{torch.get_num_threads()}",
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = run_check(args)
    except OffloadError as exc:
        print(json.dumps({"identical": False, "error": str(exc)}), flush=True)
        return 2
    print(json.dumps(result), flush=True)
    if result["fault"] is not None:
        fault = result["fault"]
        return 0 if fault["killed"] and fault["all_offloaded_failed"] and fault["local_identical"] else 1
    return 0 if result["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())

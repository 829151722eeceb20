"""Microbenchmarks of SGLang's own CPU engine for the simulator (`python -m experiments.real_cpu.calibrate`).

Why: the CPU profile (`make profile-cpu`) times transformers' Llama on our decode harness, not the forward the
servers run (SGLang's Llama, its scheduler, `torch_native` attention for local rows). This measures SGLang
itself, never the experiment's sweep:

1. `sglang_attention`: SGLang's `TorchNativeAttnBackend._run_sdpa_forward_decode` (the per-request SDPA loop
   decode runs for its local rows) on one pinned core with one torch thread, per layer, over a (batch,
   context per sequence) grid, on random KV in SGLang's pool layout. No server.
2. One stock PD pair, pinned as the experiment (`cluster` of config.yaml's pd stack) but with decode's pool
   opened to `calibration.decode_pool_tokens` so the batch can reach the grid's largest:
   - prefill: `prefill_repeats` lone requests per prompt length; SGLang's own cumulative prefill busy time
     (`total_prefill_busy_us` of /v1/loads) over their count = one prefill step of that many tokens;
   - decode: `b` requests of the workload's lengths sent at once (streamed, as the sweep's client does) for
     each batch b of the grid; SGLang's own decode step counters (`decode_moments` of /v1/loads: steps, sum
     of batch, sum of step time) over the polls where all b run, split in two halves (two mean contexts) =
     one decode step at (b, context).
3. One Adrenaline pair pinned the same way (the adrenaline stack, policy `always`, decode's pool opened as in
   2): `b` requests at once for each batch of `calibration.offload_batches`, every one offloaded; decode's step
   counters while all b run offloaded (`offload_step`: a step whose attention is all remote), and the
   executor's own attention time per layer inside the prefill server over the same polls (`executor_attn`).
   Why in the servers: the executor attends slower there than in `make profile-cpu`'s harness (it shares the
   prefill process and core), and the round trip costs more than the transport's microbenchmark.

Writes `calibration.csv` (what, rows, context_tokens, ms, samples; provenance lines with the machine, load
average, command, date, git sha) into the output folder; `profile.py` turns it and the CPU profile into the
simulator's table profiles. Load average is recorded at the start and end: numbers taken beside other work are
not this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from experiments import common

from . import server_stats, setup

CALIBRATION_FILE = "calibration.csv"
COLUMNS = ["what", "rows", "context_tokens", "ms", "samples"]


@dataclass(frozen=True)
class CalRow:
    what: str  # sglang_attn, executor_attn (per layer) | prefill_step | decode_step, offload_step (whole step)
    rows: int  # batch (decode, attention) or prompt tokens (prefill)
    context_tokens: int  # mean KV tokens per sequence (decode, attention); 0 for prefill
    ms: float
    samples: int


def sglang_attention(model_dir: str, grid_batches: list[int], grid_contexts: list[int], cpu: int,
                     iters: int = 30) -> list[CalRow]:
    """SGLang's torch_native decode attention per layer (module doc, 1) on CPU `cpu` with one torch thread."""
    import torch

    from adrenaline_sgl.support import torchvision_stub

    torchvision_stub.install()
    from sglang.srt.layers.attention.torch_native_backend import TorchNativeAttnBackend

    from adrenaline_sgl.scheduler.specs import get_model

    m = get_model("smollm2-135m")
    before, threads = os.sched_getaffinity(0), torch.get_num_threads()
    os.sched_setaffinity(0, {cpu})
    torch.set_num_threads(1)
    backend = TorchNativeAttnBackend.__new__(TorchNativeAttnBackend)  # the method uses no instance state here
    gen = torch.Generator().manual_seed(0)
    rows = []
    try:
        for b in grid_batches:
            for ctx in grid_contexts:
                slots = b * ctx + 1
                k, v = (torch.randn(slots, m.num_kv_heads, m.head_dim, generator=gen).bfloat16() for _ in range(2))
                req_to_token = torch.randperm(b * ctx, generator=gen).view(b, ctx).to(torch.int32)
                q = torch.randn(b, m.num_q_heads, m.head_dim, generator=gen).bfloat16()
                out = torch.empty_like(q)
                args = (q, out, k, v, req_to_token, torch.arange(b), torch.full((b,), ctx), None)
                kwargs = {"scaling": m.head_dim ** -0.5, "enable_gqa": True}
                for _ in range(3):
                    backend._run_sdpa_forward_decode(*args, **kwargs)
                times = []
                for _ in range(iters):
                    t0 = time.perf_counter()
                    backend._run_sdpa_forward_decode(*args, **kwargs)
                    times.append((time.perf_counter() - t0) * 1e3)
                times.sort()
                rows.append(CalRow("sglang_attn", b, ctx, times[len(times) // 2], iters))
    finally:
        os.sched_setaffinity(0, before)
        torch.set_num_threads(threads)
    return rows


def _generate(url: str, ids: list[int], new_tokens: int, timeout_s: float) -> None:
    """One request of `new_tokens` output tokens, streamed as bench_serving streams them: the decode server then
    detokenizes and sends every token, work its core does in the sweep too."""
    import requests

    body = {"input_ids": ids, "stream": True,
            "sampling_params": {"max_new_tokens": new_tokens, "ignore_eos": True, "temperature": 0.0}}
    got = 0
    with requests.post(f"{url}/generate", json=body, timeout=timeout_s, stream=True) as reply:
        if reply.status_code != 200:
            raise common.ExperimentError(f"calibration request failed: HTTP {reply.status_code} {reply.text[:200]}")
        for line in reply.iter_lines():
            if line.startswith(b"data: ") and line != b"data: [DONE]":
                got = json.loads(line[6:])["meta_info"]["completion_tokens"]
    if got != new_tokens:
        raise common.ExperimentError(f"calibration request returned {got} tokens, {new_tokens} asked")


def _ids(n: int, seed: int) -> list[int]:
    import random

    rng = random.Random(seed)
    return [rng.randrange(1000, 40000) for _ in range(n)]


def prefill_steps(proxy_url: str, prefill_url: str, prompt_lens: list[int], repeats: int) -> list[CalRow]:
    """Lone requests per prompt length; SGLang's prefill busy time per request (module doc, 2)."""
    rows = []
    for n in prompt_lens:
        before = server_stats.read_sample(0.0, prefill_url, prefill_url, False).prefill_busy_us
        for i in range(repeats):
            _generate(proxy_url, _ids(n, 1000 * n + i), 2, 300.0)
        time.sleep(0.5)  # the snapshot SGLang publishes trails the step a little
        after = server_stats.read_sample(0.0, prefill_url, prefill_url, False).prefill_busy_us
        rows.append(CalRow("prefill_step", n, 0, (after - before) / 1e3 / repeats, repeats))
    return rows


def _batch_polls(urls: dict, b: int, input_len: int, output_len: int, poll_s: float, adrenaline: bool) -> list:
    """The polls of both servers while all of `b` requests sent at once run in decode's batch (offloaded ones
    too, and then all offloaded, when `adrenaline`)."""
    poller = server_stats.Poller(urls["prefill"], urls["decode"], adrenaline=adrenaline, interval_s=poll_s).start()
    threads = [threading.Thread(target=_generate, args=(urls["proxy"], _ids(input_len, 7 * b + i), output_len,
                                                        1800.0)) for i in range(b)]  # fmt: skip
    errors: list[BaseException] = []
    for t in threads:
        t.run = _catching(t.run, errors)
        t.start()
    for t in threads:
        t.join()
    samples = poller.stop()
    if errors:
        raise common.ExperimentError(f"calibration at batch {b}: {errors[0]}")
    full = [s for s in samples if s.decode_running == b and (not adrenaline or s.decode_offloaded == b)]
    if len(full) < 4:
        what = "offloaded and running" if adrenaline else "running"
        raise common.ExperimentError(f"calibration at batch {b}: only {len(full)} polls saw all {b} requests "
                                     f"{what} (output too short for the poll interval?)")
    half = len(full) // 2
    return [full[: half + 1], full[half:]]  # two mean contexts


def _step_ms(part: list) -> tuple[float, int]:
    """Decode's mean step time over the polls of `part` (its own counters), and the step count."""
    steps = part[-1].decode_steps - part[0].decode_steps
    return ((part[-1].decode_step_us_sum - part[0].decode_step_us_sum) / steps / 1e3 if steps > 0 else 0.0,
            int(steps))


def decode_steps(urls: dict, batches: list[int], input_len: int, output_len: int, poll_s: float = 0.25) -> list[CalRow]:
    """b requests at once per batch b; SGLang's decode step counters while all b run (module doc, 2)."""
    rows = []
    for b in batches:
        for part in _batch_polls(urls, b, input_len, output_len, poll_s, adrenaline=False):
            ms, steps = _step_ms(part)
            if steps > 0:
                ctx = sum(s.decode_used_tokens for s in part) / len(part) / b
                rows.append(CalRow("decode_step", b, round(ctx), ms, steps))
    return rows


def offload_steps(urls: dict, batches: list[int], input_len: int, output_len: int,
                  poll_s: float = 0.25) -> list[CalRow]:
    """b requests at once per batch b, all offloaded (policy always; module doc, 3): decode's step with every
    row's attention remote (`offload_step`, whole step), and the executor's own attention per layer inside the
    prefill server over the same polls (`executor_attn`, its `attention_s` over its layer calls)."""
    rows = []
    for b in batches:
        try:
            parts = _batch_polls(urls, b, input_len, output_len, poll_s, adrenaline=True)
        except common.ExperimentError as err:  # the proxy decoded some locally (the executor's room): skip b
            print(f"calibrate: skipped offloaded batch {b}: {err}", flush=True)
            continue
        for part in parts:
            ms, steps = _step_ms(part)
            calls = part[-1].executor_layer_calls - part[0].executor_layer_calls
            if steps <= 0 or calls <= 0:
                continue
            ctx = round(sum(s.executor_kv_tokens for s in part) / len(part) / b)  # decode holds none of it
            rows.append(CalRow("offload_step", b, ctx, ms, steps))
            attn_ms = (part[-1].executor_attention_s - part[0].executor_attention_s) / calls * 1e3
            rows.append(CalRow("executor_attn", b, ctx, attn_ms, int(calls)))
    return rows


def _catching(fn, errors: list):
    def run():
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - reported by the caller, thread must not die silently
            errors.append(err)

    return run


def write(path: Path, rows: list[CalRow], provenance: dict) -> Path:
    lines = [f"# {k}: {v}" for k, v in provenance.items()]
    lines.append(",".join(COLUMNS))
    lines += [f"{r.what},{r.rows},{r.context_tokens},{r.ms:.6g},{r.samples}" for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def read(path: Path) -> tuple[list[CalRow], dict]:
    """calibration.csv back: (rows, provenance)."""
    prov, rows = {}, []
    for line in Path(path).read_text().splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            prov[key.strip()] = value.strip()
        elif line.strip() and not line.startswith("what,"):
            what, n, ctx, ms, samples = line.split(",")
            rows.append(CalRow(what, int(n), int(ctx), float(ms), int(samples)))
    if not rows:
        raise common.ExperimentError(f"{path} holds no calibration rows")
    return rows, prov


def run(cfg: dict, out: Path, argv: list[str]) -> Path:
    """Both parts; returns calibration.csv's path."""
    from adrenaline_sgl.launch import start_cluster

    cal = cfg["calibration"]
    wl = cfg["workload"]
    prov = setup.provenance("experiments.real_cpu.calibrate", argv)
    t0 = time.monotonic()
    print(f"calibrate: SGLang's torch_native decode attention on CPU {cal['attention_cpu']} "
          f"(load {prov['load_avg_start']})", flush=True)
    rows = sglang_attention(setup.model_dir(cfg), cal["batches"], cal["contexts"], int(cal["attention_cpu"]))
    cluster_cfg = setup.cluster_config(cfg, "pd", out / "launch", decode_pool_tokens=int(cal["decode_pool_tokens"]))
    with start_cluster(cluster_cfg) as running:
        urls = setup.urls(running)
        print("calibrate: prefill steps vs prompt tokens", flush=True)
        rows += prefill_steps(urls["proxy"], urls["prefill"], cal["prompt_lens"], int(cal["prefill_repeats"]))
        print("calibrate: decode steps vs batch", flush=True)
        rows += decode_steps(urls, cal["batches"], int(wl["input_len"]), int(wl["output_len"]))
    if cal.get("offload_batches"):
        offload_cfg = setup.cluster_config(cfg, "adrenaline", out / "launch",
                                           decode_pool_tokens=int(cal["decode_pool_tokens"]), policy="always")
        with start_cluster(offload_cfg) as running:
            print("calibrate: offloaded decode steps and the executor's attention vs batch", flush=True)
            rows += offload_steps(setup.urls(running), cal["offload_batches"], int(wl["input_len"]),
                                  int(wl["output_len"]))
    prov["load_avg_end"] = setup.load_avg()
    prov["wall_s"] = f"{time.monotonic() - t0:.0f}"
    return write(out / CALIBRATION_FILE, rows, prov)


@common.guarded
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="python -m experiments.real_cpu.calibrate", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a smaller grid (pipeline checks, not a calibration)")
    args = ap.parse_args(argv)
    cfg = setup.load(quick=args.quick)
    out = common.results_dir("real_cpu")
    path = run(cfg, out, argv)
    print(f"calibrate: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

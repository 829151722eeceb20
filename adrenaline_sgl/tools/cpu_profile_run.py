"""profile_cpu's measurement run and the three files it assembles (device spec, table, raw measurements).

Table rows (one layer, `table.py`'s format) from the harness points (cpu_model_timing.py):
- prefill, per prompt length T: qkv, o_proj, ffn, misc and attn (num_seqs 1) at num_tokens T; sampling at
  num_tokens 1 (one logits row per prompt), the median over the prompt lengths;
- decode, per batch B: qkv, o_proj, ffn, misc and sampling at num_tokens B (medians over the contexts:
  they do not depend on it), and attn on the complete (B, context per sequence) grid.
`misc` is the plain time's remainder (cpu_model_timing.py); where noise makes it <= 0 it is written as
MISC_FLOOR_MS and the count is in the provenance (`misc_floored`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

MISC_FLOOR_MS = 1e-4


def _log(msg: str) -> None:
    print(msg, flush=True)


def run(args: argparse.Namespace, argv: list[str], grid: dict) -> int:
    import torch

    from adrenaline_sgl.scheduler.cpu_profile import RawProfile, RawRow, fit_link, raw_profile_path
    from adrenaline_sgl.scheduler.specs import GPUSpec, get_model
    from adrenaline_sgl.scheduler.table import ProfileTable, TableRow
    from adrenaline_sgl.tools import cpu_model_timing as mt
    from adrenaline_sgl.tools import cpu_offload_timing as ot
    from adrenaline_sgl.tools.decode_harness import DecodeHarness
    from adrenaline_sgl.tools.harness_models import load_model
    from adrenaline_sgl.tools.profile_cpu import MODEL_SPEC, QUIET_LOAD_AVG, device_peaks, provenance
    from adrenaline_sgl.tools.profile_gpu import holdout_errors

    t_start = time.monotonic()
    prov = provenance(args.device, args, argv)
    quiet = float(prov["load_avg_start"].split()[0]) < QUIET_LOAD_AVG and not args.quick
    _log(f"profile_cpu: {prov['machine']}\nprofile_cpu: {prov['cpus']}; load average {prov['load_avg_start']}"
         f"{'' if quiet else ' (not quiet: the result is provisional)'}")
    spec_m = get_model(MODEL_SPEC)
    loaded = load_model("smollm2", "bfloat16", "cpu")
    harness = DecodeHarness(loaded.model, None, "auto")
    layers, warmup, iters = spec_m.num_layers, grid["warmup"], grid["iters"]
    raw: list[RawRow] = []
    rows: list[TableRow] = []
    floored = 0

    def misc(parts) -> float:
        nonlocal floored
        value = parts.misc_ms(layers)
        if value <= 0:
            floored += 1
        return max(value, MISC_FLOOR_MS)

    def p(samples, q):
        return ot.percentile(samples, q)

    # ---- prefill ----
    sampling_prefill = []
    for tokens in grid["prompts"]:
        parts = mt.prefill_parts(harness, tokens, warmup, iters)
        raw.append(RawRow("prefill_step", tokens, 0, p(parts.whole_ms, 50), p(parts.whole_ms, 99), iters))
        for op in ("qkv", "o_proj", "ffn"):
            rows.append(TableRow(op, "prefill", tokens, 0, 1, 1.0, parts.ops_ms[op]))
        rows.append(TableRow("misc", "prefill", tokens, 0, 1, 1.0, misc(parts)))
        rows.append(TableRow("attn", "prefill", tokens, 0, 1, 1.0, parts.ops_ms["attn"]))
        sampling_prefill.append(parts.ops_ms["sampling"])
        _log(f"profile_cpu: prefill {tokens:5d} tokens: {statistics.median(parts.whole_ms):9.2f} ms "
             f"(attention {parts.ops_ms['attn'] * layers:8.2f} ms over {layers} layers)")
    rows.append(TableRow("sampling", "prefill", 1, 0, 1, 1.0, statistics.median(sampling_prefill)))

    # ---- decode ----
    per_batch: dict[int, dict[str, list[float]]] = {}
    for batch in grid["batches"]:
        for context in grid["contexts"]:
            parts = mt.decode_parts(harness, batch, context, warmup, iters)
            raw.append(RawRow("decode_step", batch, parts.whole_context_tokens, p(parts.whole_ms, 50),
                              p(parts.whole_ms, 99), iters))
            raw.append(RawRow("decode_local_attn", batch, parts.context_tokens, p(parts.attn_samples_ms, 50),
                              p(parts.attn_samples_ms, 99), len(parts.attn_samples_ms)))
            rows.append(TableRow("attn", "decode", batch, batch * parts.context_tokens, batch, 1.0,
                                 parts.ops_ms["attn"]))
            ops = per_batch.setdefault(batch, {op: [] for op in ("qkv", "o_proj", "ffn", "sampling", "misc")})
            for op in ("qkv", "o_proj", "ffn", "sampling"):
                ops[op].append(parts.ops_ms[op])
            ops["misc"].append(misc(parts))
            _log(f"profile_cpu: decode batch {batch:3d} context {context:5d}: step "
                 f"{statistics.median(parts.whole_ms):9.2f} ms, local attention {parts.ops_ms['attn']:7.3f} ms/layer")
    for batch, ops in per_batch.items():
        rows += [TableRow(op, "decode", batch, 0, 1, 1.0, statistics.median(v)) for op, v in ops.items()]

    # ---- executor attention ----
    for n in grid["exec_rows"]:
        for context in grid["exec_contexts"]:
            if n * context > grid["max_exec_tokens"]:
                continue
            layer, begin = ot.executor_attention(spec_m, n, context, torch.bfloat16, iters, warmup)
            ctx = context + warmup + (iters + 1) // 2
            raw.append(RawRow("executor_attn", n, ctx, layer.p50, layer.p99, len(layer.samples_ms)))
            raw.append(RawRow("executor_begin_step", n, ctx, begin.p50, begin.p99, len(begin.samples_ms)))
            _log(f"profile_cpu: executor {n:3d} rows context {context:5d}: {layer.p50:7.3f} ms/layer p50, "
                 f"begin_step {begin.p50:6.3f} ms")

    # ---- round trip over Mooncake TCP ----
    trips = ot.round_trips(spec_m, list(grid["rt_rows"]), grid["rt_context"], torch.bfloat16, grid["rt_steps"],
                           warmup, args.peer_cpu, log=_log)
    points = []
    ctx = grid["rt_context"] + warmup + (grid["rt_steps"] + 1) // 2  # fresh requests per point
    for trip in trips:
        rt = trip.round_trip
        raw.append(RawRow("round_trip", trip.rows, ctx, rt.p50, rt.p99, len(rt.samples_ms)))
        points.append((trip.out_bytes + trip.back_bytes, max(rt.p50 - trip.executor_ms_per_layer, 1e-6)))
        _log(f"profile_cpu: round trip {trip.rows:3d} rows: p50 {rt.p50:7.3f} ms, p99 {rt.p99:7.3f} ms, "
             f"executor {trip.executor_ms_per_layer:6.3f} ms of it, {trip.out_bytes + trip.back_bytes} B")
    link = fit_link(points)
    gemm_tflops, copy_gbs = device_peaks()
    _log(f"profile_cpu: bf16 GEMM {gemm_tflops * 1e3:.1f} GFLOP/s, copy {copy_gbs:.1f} GB/s; link fit "
         f"{link.latency_us:.1f} us + bytes / {link.gbs:.3f} GB/s per message (max error {link.max_abs_rel_err:.0%})")

    # ---- assemble ----
    prov["load_avg_end"] = _load_avg_now()
    prov["status"] = "measured" if quiet else (
        "provisional: " + ("--quick grids" if args.quick else f"load average {prov['load_avg_start']} at the start "
                           f"(quiet means below {QUIET_LOAD_AVG}); timings beside other work are not this machine's"))
    prov["misc_floored"] = f"{floored} points where misc came out <= 0 were written as {MISC_FLOOR_MS} ms"
    prov["wall_s"] = f"{time.monotonic() - t_start:.0f}"
    mem_gib = _mem_total_gib()
    device = GPUSpec(args.device, peak_tflops=gemm_tflops, hbm_gbs=copy_gbs, hbm_gib=mem_gib, num_sms=1,
                     nvlink_gbs=link.gbs, link_latency_us=link.latency_us)
    table = ProfileTable(prov, tuple(rows))
    holdout = holdout_errors(table, device, MODEL_SPEC)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.device}__{MODEL_SPEC}.csv").write_text(table.to_csv())
    raw_profile_path(out, args.device, MODEL_SPEC).write_text(RawProfile(prov, tuple(raw)).to_csv())
    (out / f"{args.device}.device.json").write_text(_device_json(device, link, grid, holdout, prov))
    for key, errs in holdout.items():
        _log(f"profile_cpu: table held-out {key:16s} {errs['points']:3d} points, mean |err| "
             f"{errs['mean_abs_rel_err']:.1%}, max {errs['max_abs_rel_err']:.1%}")
    _log(f"profile_cpu: wrote {args.device}.device.json, {args.device}__{MODEL_SPEC}.csv and .raw.csv into {out} "
         f"({prov['status'].split(':')[0]}); {prov['wall_s']} s, load average now {prov['load_avg_end']}")
    return 0


def _device_json(device, link, grid: dict, holdout: dict, prov: dict) -> str:
    """`specs.load_device`'s format: the spec, what each field is here, the table's held-out errors, provenance."""
    spec = {"name": device.name, "peak_tflops": round(device.peak_tflops, 6), "hbm_gbs": round(device.hbm_gbs, 3),
            "hbm_gib": round(device.hbm_gib, 2), "num_sms": 1, "nvlink_gbs": round(device.nvlink_gbs, 6),
            "link_latency_us": round(device.link_latency_us, 2)}
    fields = {
        "peak_tflops": "bf16 GEMM 1024x1024x1024 on the pinned core, median (TFLOP/s)",
        "hbm_gbs": "copy of 256 MiB (read + written) on the pinned core, median (GB/s)",
        "hbm_gib": "MemTotal of the machine (KV pools are sized by --max-total-tokens)",
        "num_sms": "cores (one pinned core)",
        "nvlink_gbs, link_latency_us": (
            "per message between two pinned cores over Mooncake TCP loopback, fitted to round trip p50 minus "
            f"executor time; max error {link.max_abs_rel_err:.1%} over rows {list(grid['rt_rows'])}"),
    }
    body = {"spec": spec, "fields": fields, "table_holdout": holdout, "provenance": prov}
    return json.dumps(body, indent=1) + "\n"


def _load_avg_now() -> str:
    return Path("/proc/loadavg").read_text().strip()


def _mem_total_gib() -> float:
    with open("/proc/meminfo") as f:
        return int(next(line.split()[1] for line in f if line.startswith("MemTotal"))) / 2**20

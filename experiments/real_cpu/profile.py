"""The simulator's profiles of SGLang's engine on this CPU, from calibrate.py's microbenchmarks and the CPU
profile (`python -m experiments.real_cpu.profile`; `make calibrate-real-cpu` runs it after calibrate.py).

Two devices of one core type, one per role's software (the simulator's `gpu` and `prefill_gpu`):
- `<base>-sgl` (decode): decode steps as SGLang's decode server runs them. Local attention is SGLang's
  torch_native backend (calibrate.py, part 1). Everything else of the step (QKV, O projection, FFN, norms,
  RoPE, KV writes, sampling, SGLang's scheduler and batch bookkeeping) is what SGLang's server measured at that
  batch minus L x that attention, averaged over the step's two measured contexts; the table splits it over
  the ops in the CPU profile's proportions at that batch (each op x one factor per batch), so the predictor's
  non-attention sum is exactly the measured one and no op is left negative. Prefill the same way: SGLang's
  measured prefill step of a prompt length over the CPU profile's (all its ops x one factor per length).
- `<base>-sgl-exec` (prefill): the same rows, except decode attention, which is the executor's own kernel
  as the CPU profile measured it (`executor_attn` of its raw file), since on the prefill core the offloaded
  rows' attention runs in our executor; times the executor's slowdown inside the prefill server at that batch
  (calibrate.py, 3: its in-server attention over the harness's at the same rows and context).
Device specs (bf16 peak, copy bandwidth) are the base profile's: the same core. The link (the per-layer offload
transfer) is fitted to what the servers paid (calibrate.py, 3; `server_link`) when the calibration has it,
else the base profile's fit to the transport's microbenchmark.

The factors are in the provenance (`scale_decode`, `scale_prefill`, `scale_executor`): how far SGLang's engine
and the in-server executor are from the harness's, per batch and per prompt length.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from experiments import common

from . import calibrate, setup

BASE_DEVICE = "cpu-epyc-1core"
MODEL = "smollm2-135m"


def _base(profiles: Path, device: str):
    from adrenaline_sgl.scheduler.cpu_profile import RawProfile
    from adrenaline_sgl.scheduler.table import ProfileTable, TablePredictor

    table = ProfileTable.load(profiles / f"{device}__{MODEL}.csv")
    raw = RawProfile.load(profiles / f"{device}__{MODEL}.raw.csv")
    pred = TablePredictor(device, MODEL, table=table)
    return table, raw, pred


def table_rows(cal: list, raw, pred, num_layers: int, executor: bool) -> tuple[list, dict]:
    """(TableRow list, {what: scale factors}) of one role's table (module doc)."""
    from adrenaline_sgl.scheduler.table import TableRow

    rows, scales = [], {"prefill": {}, "decode": {}}

    def ms(op, phase, n, ctx=0, seqs=1):
        return pred.op_cost(op, phase, n, ctx, seqs, 1.0).ms

    prefills = sorted((r for r in cal if r.what == "prefill_step"), key=lambda r: r.rows)
    sampling = ms("sampling", "prefill", 1)
    for i, r in enumerate(prefills):
        t = r.rows
        parts = {op: ms(op, "prefill", t) for op in ("qkv", "o_proj", "ffn", "misc", "attn")}
        if i == 0:  # one prompt per measured batch: sampling takes the shortest prompt's factor
            sampling *= r.ms / (num_layers * sum(parts.values()) + sampling)
            rows.append(TableRow("sampling", "prefill", 1, 0, 1, 1.0, sampling))
        f = (r.ms - sampling) / (num_layers * sum(parts.values()))
        scales["prefill"][t] = f
        rows += [TableRow(op, "prefill", t, 0, 1, 1.0, v * f) for op, v in parts.items()]
    steps: dict[int, list] = {}
    for r in (r for r in cal if r.what == "decode_step"):
        steps.setdefault(r.rows, []).append(r)
    attn = {(r.rows, r.context_tokens): r.ms for r in cal if r.what == "sglang_attn"}
    local = _grid_predictor(attn)
    for b, measured in sorted(steps.items()):
        parts = {op: ms(op, "decode", b) for op in ("qkv", "o_proj", "ffn", "misc")}
        base = num_layers * sum(parts.values()) + ms("sampling", "decode", b)
        nonattn = [m.ms - num_layers * local(b, m.context_tokens) for m in measured]
        if min(nonattn) <= 0:
            raise common.ExperimentError(f"decode at batch {b}: SGLang's attention alone ({local(b, 0):.3f} ms per "
                                         f"layer) is longer than its measured step; recalibrate on a quiet machine")
        f = sum(nonattn) / len(nonattn) / base
        scales["decode"][b] = f
        rows += [TableRow(op, "decode", b, 0, 1, 1.0, v * f) for op, v in parts.items()]
        rows.append(TableRow("sampling", "decode", b, 0, 1, 1.0, ms("sampling", "decode", b) * f))
    if executor:
        grid = {(r.rows, r.context_tokens): r.ms_p50 for r in raw.of("executor_attn")}
        batches = sorted({b for b, _ in grid})
        contexts = sorted({c for _, c in grid})
        complete = [b for b in batches if all((b, c) in grid for c in contexts)]
        scales["executor"] = executor_scales(cal, {(b, c): grid[(b, c)] for b in complete for c in contexts})
        f = _nearest(scales["executor"])
        rows += [TableRow("attn", "decode", b, b * c, b, 1.0, grid[(b, c)] * f(b)) for b in complete for c in contexts]
    else:
        rows += [TableRow("attn", "decode", b, b * c, b, 1.0, v) for (b, c), v in sorted(attn.items())]
    return rows, scales


def executor_scales(cal: list, grid: dict) -> dict[int, float]:
    """{batch: the executor's attention inside the prefill server (calibrate.py, 3) over the harness's at the same
    rows and context (the CPU profile's grid, interpolated)}; {} without that calibration (factor 1)."""
    harness = _grid_predictor(grid)
    ratios: dict[int, list[float]] = {}
    for r in (r for r in cal if r.what == "executor_attn"):
        ratios.setdefault(r.rows, []).append(r.ms / harness(r.rows, r.context_tokens))
    return {b: sum(v) / len(v) for b, v in sorted(ratios.items())}


def _nearest(scales: dict[int, float]):
    """f(batch): the factor of the nearest calibrated batch (1.0 when none is)."""
    return lambda b: scales[min(scales, key=lambda c: (abs(c - b), c))] if scales else 1.0


def server_link(cal: list, pred, num_layers: int):
    """The per-layer offload transfer as the servers pay it (calibrate.py, 3), fitted like the CPU profile's link
    (scheduler.cpu_profile.fit_link: two messages per layer): (an offloaded step - SGLang's non-attention step
    at that batch) / layers - the executor's attention in the server, per batch and half; None without that
    calibration. Everything of a remote step that is not the model's non-attention work or the executor's
    attention (the doorbells, the wait, begin_step) lands here, as the simulator composes it."""
    from adrenaline_sgl.scheduler.cpu_profile import fit_link

    offload = [r for r in cal if r.what == "offload_step"]
    attn = [r for r in cal if r.what == "executor_attn"]
    if not offload:
        return None, []
    local = _grid_predictor({(r.rows, r.context_tokens): r.ms for r in cal if r.what == "sglang_attn"})
    nonattn: dict[int, list[float]] = {}
    for r in (r for r in cal if r.what == "decode_step"):
        nonattn.setdefault(r.rows, []).append(r.ms - num_layers * local(r.rows, r.context_tokens))
    points = []
    for step, exe in zip(offload, attn, strict=True):  # written pairwise, per batch and half
        if step.rows not in nonattn:
            raise common.ExperimentError(f"calibration: offloaded batch {step.rows} has no decode_step at that batch")
        base = sum(nonattn[step.rows]) / len(nonattn[step.rows])
        out_bytes, back_bytes = pred.offload_layer_bytes(step.rows)
        points.append((float(out_bytes + back_bytes), (step.ms - base) / num_layers - exe.ms))
    return fit_link([pt for pt in points if pt[1] > 0]), points


def _grid_predictor(attn: dict):
    """Bilinear interpolation of the torch_native attention grid (clamped to it), ms per layer."""
    from adrenaline_sgl.scheduler.table import _Grid2D

    grid = _Grid2D({(float(b), float(c)): v for (b, c), v in attn.items()}, "sglang_attn")

    def at(batch: int, ctx_per_seq: float) -> float:
        return grid(*grid.nearest(float(batch), float(ctx_per_seq)))

    return at


def build(cal_path: Path, profiles: Path, out: Path, base_device: str = BASE_DEVICE) -> list[Path]:
    """Write both devices' spec and table into `out`; returns the paths."""
    from adrenaline_sgl.scheduler.specs import get_model
    from adrenaline_sgl.scheduler.table import ProfileTable

    cal, cal_prov = calibrate.read(cal_path)
    base_table, raw, pred = _base(profiles, base_device)
    base_spec = json.loads((profiles / f"{base_device}.device.json").read_text())
    status = ("measured" if all(_quiet(cal_prov.get(k, "")) for k in ("load_avg_start", "load_avg_end"))
              and str(base_table.provenance.get("status", "")).startswith("measured") else "provisional")
    written = []
    link, link_points = server_link(cal, pred, get_model(MODEL).num_layers)
    for suffix, executor in (("-sgl", False), ("-sgl-exec", True)):
        device = f"{base_device}{suffix}"
        rows, scales = table_rows(cal, raw, pred, get_model(MODEL).num_layers, executor)
        prov = {**{k: base_table.provenance[k] for k in ("driver", "torch", "triton")},
                "gpu": device, "model": MODEL, "git_sha": cal_prov.get("git_sha", "unknown"),
                "date": cal_prov.get("date", "unknown"),
                "command": f"python -m experiments.real_cpu.profile (from {cal_path.name} and {base_device})",
                "role": "prefill instance: SGLang prefill, decode attention = our executor's kernel" if executor
                else "decode instance: SGLang decode, local attention = SGLang's torch_native backend",
                "calibration": f"{cal_prov.get('command', '?')} on {cal_prov.get('date', '?')}, load average "
                               f"{cal_prov.get('load_avg_start', '?')} .. {cal_prov.get('load_avg_end', '?')}",
                "base_profile": f"{base_device} ({base_table.provenance.get('date', '?')}, status "
                                f"{base_table.provenance.get('status', '?')})",
                "machine": cal_prov.get("machine", "?"),
                "scale_decode": " ".join(f"{b}:{f:.3f}" for b, f in scales["decode"].items()),
                "scale_prefill": " ".join(f"{t}:{f:.3f}" for t, f in scales["prefill"].items()),
                "status": status}  # fmt: skip
        if executor:
            prov["scale_executor"] = " ".join(f"{b}:{f:.3f}" for b, f in scales["executor"].items()) or "none"
        table = ProfileTable(prov, tuple(rows))
        path = out / f"{device}__{MODEL}.csv"
        path.write_text(table.to_csv())
        spec = {"spec": {**base_spec["spec"], "name": device},
                "fields": {**base_spec.get("fields", {}), "role": prov["role"]},
                "provenance": prov}
        if link is not None:  # the round trip as the servers pay it, not the transport's microbenchmark
            spec["spec"].update(nvlink_gbs=float(f"{link.gbs:.6g}"), link_latency_us=float(f"{link.latency_us:.6g}"))
            spec["fields"]["nvlink_gbs, link_latency_us"] = (
                "per message between the pinned servers, fitted to (offloaded decode step - SGLang's non-attention "
                "step) / layers - the executor's attention in the server (calibrate.py, 3), per batch "
                f"{[round(b) for b, _ in link_points]} bytes: {[round(ms, 3) for _, ms in link_points]} ms; max "
                f"error {100 * link.max_abs_rel_err:.0f}%")  # fmt: skip
        dev_path = out / f"{device}.device.json"
        dev_path.write_text(json.dumps(spec, indent=1) + "\n")
        written += [dev_path, path]
    return written


def _quiet(load_avg: str) -> bool:
    try:
        return float(load_avg.split()[0]) < 0.5
    except (IndexError, ValueError):
        return False


@common.guarded
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from adrenaline_sgl.scheduler.specs import MEASURED_DEVICES_DIR

    ap = argparse.ArgumentParser(prog="python -m experiments.real_cpu.profile", description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", help="calibration.csv (default: $RESULTS_DIR/real_cpu/calibration.csv)")
    ap.add_argument("--out", default=str(MEASURED_DEVICES_DIR), help="where the device and table files go "
                                                                     "(default: the package's profiles)")
    args = ap.parse_args(argv)
    cal = Path(args.calibration) if args.calibration else common.results_dir("real_cpu") / calibrate.CALIBRATION_FILE
    if not cal.is_file():
        raise common.ExperimentError(f"no calibration at {cal}: run `python -m experiments.real_cpu.calibrate` first")
    setup.check(setup.load())
    for path in build(cal, MEASURED_DEVICES_DIR, Path(args.out)):
        print(f"profile: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

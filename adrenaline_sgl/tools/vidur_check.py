"""Vidur's measured operator times as a profile table, and the roofline's error against them.

Vidur's `mlp.csv` (../shared/data/vidur/<gpu>/llama-2-7b/, see its README) has per-layer medians in ms for
Llama-2 7B at num_tokens 1..4096 and TP 1, 2, 4, 8 (one GPU's shard at that TP, no communication). Our
operators map onto its columns as:

    qkv    = attn_pre_proj                     o_proj = attn_post_proj
    ffn    = mlp_up_proj + mlp_act + mlp_down_proj
    misc   = input_layernorm + post_attention_layernorm + attn_rope + 2 x add

Vidur does not separate prefill and decode for these ops, so each row is entered for both phases. The
shared data is never copied into the repository: it is read from `shared_data_dir()`
(`$ADRENALINE_SHARED_DATA`, default `../shared/data` relative to the repository root).

    python -m adrenaline_sgl.tools.vidur_check                 # TP 1 table of docs/simulator.md
    python -m adrenaline_sgl.tools.vidur_check --tp            # TP 1/2/4/8 table (median / p90 abs error)
    python -m adrenaline_sgl.tools.vidur_check --allreduce-csv PATH
        # the comm model's ring all-reduce against a measured all-reduce table in Vidur's format (e.g. its
        # repository's data/profiling/network/a100_dgx/all_reduce.csv; not in the shared data)
"""

from __future__ import annotations

import argparse
import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from adrenaline_sgl.scheduler.collectives import CommModel, get_comm_model, shared_data_dir
from adrenaline_sgl.scheduler.cost_model import Predictor
from adrenaline_sgl.scheduler.roofline import RooflinePredictor
from adrenaline_sgl.scheduler.table import ProfileTable, TableRow

VIDUR_OPS = {
    "qkv": ("attn_pre_proj",),
    "o_proj": ("attn_post_proj",),
    "ffn": ("mlp_up_proj", "mlp_act", "mlp_down_proj"),
    "misc": ("input_layernorm", "post_attention_layernorm", "attn_rope", "add", "add"),
}
VIDUR_GPUS = {"a100-80g": "a100", "h100-sxm": "h100"}
VIDUR_TPS = (1, 2, 4, 8)


def vidur_mlp_path(gpu: str, root: Path | None = None) -> Path:
    if gpu not in VIDUR_GPUS:
        raise ValueError(f"gpu must be one of {sorted(VIDUR_GPUS)} for the Vidur tables, got {gpu!r}")
    return (root or shared_data_dir()) / "vidur" / VIDUR_GPUS[gpu] / "llama-2-7b" / "mlp.csv"


def vidur_times(path: Path, tp: int = 1) -> dict[str, dict[int, float]]:
    """{op: {num_tokens: median ms}} at tensor parallelism `tp` (duplicate rows: the first wins)."""
    out: dict[str, dict[int, float]] = {op: {} for op in VIDUR_OPS}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if int(r["num_tensor_parallel_workers"]) != tp:
                continue
            t = int(r["num_tokens"])
            for op, cols in VIDUR_OPS.items():
                out[op].setdefault(t, sum(float(r[f"time_stats.{c}.median"]) for c in cols))
    return out


def vidur_profile_table(gpu: str, path: Path | None = None, keep=lambda num_tokens: True, tp: int = 1) -> ProfileTable:
    """Vidur's Llama-2 7B times at `tp` as a ProfileTable (rows whose num_tokens passes `keep`)."""
    times = vidur_times(path or vidur_mlp_path(gpu), tp)
    rows = tuple(
        TableRow(op, phase, t, 0, 1, 1.0, ms)
        for op, series in times.items()
        for t, ms in sorted(series.items())
        if keep(t)
        for phase in ("prefill", "decode")
    )
    prov = {
        "gpu": gpu,
        "model": "llama2-7b",
        "driver": "unknown (Vidur public profile)",
        "torch": "unknown (Vidur public profile)",
        "triton": "n/a",
        "git_sha": "microsoft/vidur data/profiling",
        "command": "Vidur MLP profiling with CUDA timers; converted by adrenaline_sgl.tools.vidur_check",
        "tp": str(tp),
    }
    return ProfileTable(prov, rows)


def validation_errors(p: Predictor, times: dict[str, dict[int, float]]) -> dict[str, list[tuple[int, float]]]:
    """{op: [(num_tokens, relative error % of the prediction)]}; decode below 256 tokens, else prefill."""
    return {
        op: [
            (t, 100.0 * (p.op_cost(op, "decode" if t < 256 else "prefill", t).ms - ms) / ms)
            for t, ms in sorted(series.items())
        ]
        for op, series in times.items()
    }


def validation_markdown(root: Path | None = None) -> str:
    """Roofline vs Vidur per operator on A100 and H100 (the validation table of docs/simulator.md)."""
    lines = [
        "| GPU | op | points | mean abs err % | mean err % (1-127 tok) | (128-1023) | (1024-4096) | worst % |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for gpu in VIDUR_GPUS:
        errs = validation_errors(RooflinePredictor(gpu, "llama2-7b"), vidur_times(vidur_mlp_path(gpu, root)))
        for op, pts in errs.items():

            def band(lo: int, hi: int, pts=pts) -> str:
                sel = [e for t, e in pts if lo <= t < hi]
                return f"{statistics.mean(sel):+.1f}" if sel else "-"

            worst = max((e for _, e in pts), key=abs)
            mean_abs = statistics.mean(abs(e) for _, e in pts)
            lines.append(
                f"| {gpu} | {op} | {len(pts)} | {mean_abs:.1f} | {band(1, 128)} | {band(128, 1024)} | "
                f"{band(1024, 4097)} | {worst:+.1f} |"
            )
    return "\n".join(lines)


def _percentile(xs: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), q in [0, 100]."""
    xs = sorted(xs)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass(frozen=True)
class TPErrorRow:
    """The roofline's error against Vidur for one (GPU, TP, op), % of the measured time."""

    gpu: str
    tp: int
    op: str
    points: int
    median_abs: float
    p90_abs: float
    median_signed: float  # < 0: predicted short
    worst: float


def tp_error_rows(root: Path | None = None, tps=VIDUR_TPS) -> list[TPErrorRow]:
    """Per-op error of the roofline at each TP (one GPU's shard, no all-reduce: Vidur times none)."""
    rows = []
    for gpu in VIDUR_GPUS:
        path = vidur_mlp_path(gpu, root)
        for tp in tps:
            errs = validation_errors(RooflinePredictor(gpu, "llama2-7b", tp=tp), vidur_times(path, tp))
            for op, pts in errs.items():
                es = [e for _, e in pts]
                ab = [abs(e) for e in es]
                rows.append(
                    TPErrorRow(gpu, tp, op, len(es), statistics.median(ab), _percentile(ab, 90),
                               statistics.median(es), max(es, key=abs))
                )  # fmt: skip
    return rows


def tp_validation_markdown(root: Path | None = None) -> str:
    """Roofline vs Vidur per operator at TP 1/2/4/8 on A100 and H100 (docs/simulator.md)."""
    lines = [
        "| GPU | TP | op | points | median abs err % | p90 abs err % | median err % | worst % |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in tp_error_rows(root):
        lines.append(
            f"| {r.gpu} | {r.tp} | {r.op} | {r.points} | {r.median_abs:.1f} | {r.p90_abs:.1f} | "
            f"{r.median_signed:+.1f} | {r.worst:+.1f} |"
        )
    return "\n".join(lines)


def load_allreduce_csv(path: str | Path) -> dict[int, dict[float, float]]:
    """{num_workers: {size bytes: median ms}} of a Vidur `all_reduce.csv`, workers all on one node."""
    out: dict[int, dict[float, float]] = {}
    try:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r["devices_per_node"] != r["num_workers"]:
                    continue
                out.setdefault(int(r["num_workers"]), {}).setdefault(
                    float(r["size"]), float(r["time_stats.all_reduce.median"])
                )
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"all-reduce table {path}: {err}") from err
    if not out:
        raise ValueError(f"all-reduce table {path}: no rows with all workers on one node")
    return out


ALLREDUCE_BANDS = ((0, 1 << 20), (1 << 20, 8 << 20), (8 << 20, 1 << 40))


def allreduce_markdown(measured: dict[int, dict[float, float]], comm: CommModel) -> str:
    """The comm model's NCCL ring all-reduce (custom all-reduce off: the table measures NCCL) against
    measured medians, per TP and message-size band."""
    comm = comm.nccl_only()
    lines = [
        f"comm model: {comm.source}; NCCL ring (custom all-reduce off)",
        "",
        "| TP | sizes | points | median measured ms | median model ms | median err % | median abs err % |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for tp in sorted(measured):
        for lo, hi in ALLREDUCE_BANDS:
            pts = [(s, ms) for s, ms in sorted(measured[tp].items()) if lo <= s < hi]
            if not pts or tp < 2:
                continue
            model = [comm.allreduce_ms(s, tp) for s, _ in pts]
            errs = [100.0 * (m - ms) / ms for m, (_, ms) in zip(model, pts)]
            band = f"{lo / 2**20:g}-{hi / 2**20:g} MiB" if hi < 1 << 40 else f">= {lo / 2**20:g} MiB"
            lines.append(
                f"| {tp} | {band} | {len(pts)} | {statistics.median(ms for _, ms in pts):.3f} | "
                f"{statistics.median(model):.3f} | {statistics.median(errs):+.1f} | "
                f"{statistics.median(abs(e) for e in errs):.1f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adrenaline_sgl.tools.vidur_check", description=__doc__.splitlines()[0])
    ap.add_argument("--tp", action="store_true", help="the TP 1/2/4/8 table instead of the TP 1 one")
    ap.add_argument("--allreduce-csv", default=None, help="compare the comm model with this all_reduce.csv")
    ap.add_argument("--gpu", default="a100-80g", help="GPU whose comm model --allreduce-csv checks")
    args = ap.parse_args(argv)
    try:
        if args.allreduce_csv:
            print(allreduce_markdown(load_allreduce_csv(args.allreduce_csv), get_comm_model(args.gpu)))
        else:
            print(tp_validation_markdown() if args.tp else validation_markdown())
    except (ValueError, FileNotFoundError) as err:
        print(f"{ap.prog}: error: {err}", file=__import__("sys").stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

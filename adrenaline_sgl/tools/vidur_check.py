"""Vidur's measured operator times as a profile table, and the roofline's error against them.

Vidur's `mlp.csv` (../shared/data/vidur/<gpu>/llama-2-7b/, see its README) has per-layer medians in ms for
Llama-2 7B at num_tokens 1..4096 and TP 1..8. Our operators map onto its columns as:

    qkv    = attn_pre_proj                     o_proj = attn_post_proj
    ffn    = mlp_up_proj + mlp_act + mlp_down_proj
    misc   = input_layernorm + post_attention_layernorm + attn_rope + 2 x add

Vidur does not separate prefill and decode for these ops, so each row is entered for both phases. The
shared data is never copied into the repository: it is read from `shared_data_dir()`
(`$ADRENALINE_SHARED_DATA`, default `../shared/data` relative to the repository root).

    python -m adrenaline_sgl.tools.vidur_check     # the validation table of docs/simulator.md
"""

from __future__ import annotations

import csv
import os
import statistics
from pathlib import Path

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
_REPO_ROOT = Path(__file__).resolve().parents[2]


def shared_data_dir() -> Path:
    """$ADRENALINE_SHARED_DATA, else ../shared/data relative to the repository root."""
    env = os.environ.get("ADRENALINE_SHARED_DATA")
    return Path(env).expanduser() if env else _REPO_ROOT.parent / "shared" / "data"


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


def vidur_profile_table(gpu: str, path: Path | None = None, keep=lambda num_tokens: True) -> ProfileTable:
    """Vidur's Llama-2 7B TP 1 times as a ProfileTable (rows whose num_tokens passes `keep`)."""
    times = vidur_times(path or vidur_mlp_path(gpu))
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


if __name__ == "__main__":
    print(validation_markdown())

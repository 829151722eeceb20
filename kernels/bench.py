"""Decode-attention benchmark: time, achieved GB/s and the fraction of the measured copy bandwidth, for our
kernel and every baseline that imports here. Writes a CSV and a `.meta.json` beside it (GPU, driver,
torch/triton versions, command, copy bandwidth, skipped baselines).

    python -m adrenaline_kernels.bench --out results/kernels/bench.csv            # grid: auto
    python -m adrenaline_kernels.bench --grid paper --dtypes float16 bfloat16     # GPU: the issue's grid
    python -m adrenaline_kernels.bench --grid paper --page-sizes 1 16             # also SGLang's 16-token pages

Grid `cpu` (default without CUDA) is tiny and runs in the Triton interpreter: its times measure Python
emulation, not HBM, and say so in the `note` column. Grid `paper` (default with CUDA): Llama-2 7B and 13B
(32 and 40 heads, D=128) and a GQA 32/8 shape, batch 1..128, context 512..4096, every request of a batch
at the same context. Bytes counted are the minimum traffic: K and V of every token read once, plus q, o,
lse and the slot indices. `--page-sizes`: slot layouts, 1 = token-granular (slots scattered one by one), P =
pages of P consecutive slots scattered (inputs.py). Rows are appended to the CSV as they are measured (a run
cut short keeps them); the `.meta.json` says `complete: false` until the grid is done.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from tqdm import tqdm

from .bench_goals import check_goals, format_goals
from .bench_impls import IMPLS, Impl, _prepare_adrenaline
from .bench_timing import copy_bandwidth_gbs, environment, time_us
from .inputs import DecodeBatch, make_decode_batch
from .splits import KernelConfig, default_num_sms

MODELS = {  # name: (num_qo_heads, num_kv_heads, head_dim)
    "llama2-7b": (32, 32, 128),
    "llama2-13b": (40, 40, 128),
    "gqa-32-8": (32, 8, 128),
    "tiny-gqa-8-2": (8, 2, 64),
}


@dataclass(frozen=True)
class Grid:
    models: tuple[str, ...]
    batches: tuple[int, ...]
    contexts: tuple[int, ...]
    warmup: int
    reps: int


GRIDS = {
    "cpu": Grid(("tiny-gqa-8-2",), (1, 4), (64, 256), warmup=1, reps=2),
    "paper": Grid(("llama2-7b", "llama2-13b", "gqa-32-8"), (1, 8, 32, 64, 128), (512, 1024, 2048, 4096), 3, 20),
}
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
TORCH_REF_MAX_REPS = 3  # the per-request Python loop is slow; its time only anchors the comparison
INTERPRETER_NOTE = "Triton interpreter on CPU: time is Python emulation, not HBM bandwidth"

FIELDS = [
    "device", "grid", "model", "impl", "dtype", "page_size", "batch", "ctx", "num_qo_heads", "num_kv_heads", "head_dim",
    "num_sms", "max_splits", "time_us", "kv_bytes", "total_bytes", "gbs", "copy_gbs", "frac_copy_bw",
    "max_abs_diff_o", "max_abs_diff_lse", "note",
]  # fmt: skip


def parse_config(text: str) -> KernelConfig:
    """'64x4x2' -> KernelConfig(block_n=64, num_warps=4, num_stages=2)."""
    try:
        bn, w, s = (int(x) for x in text.split("x"))
    except ValueError:
        msg = f"--configs entries look like BLOCKNxWARPSxSTAGES (64x4x2), got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    return KernelConfig(block_n=bn, num_warps=w, num_stages=s)


def _page_size(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"--page-sizes entries must be >= 1, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adrenaline_kernels.bench", description=__doc__.split("\n")[0])
    default_out = Path(os.environ.get("RESULTS_DIR", "results")) / "kernels" / "bench.csv"
    p.add_argument("--out", type=Path, default=default_out, help="CSV path (a .meta.json is written beside it)")
    p.add_argument("--grid", choices=["auto", *GRIDS], default="auto", help="auto: paper with CUDA, else cpu")
    p.add_argument("--dtypes", nargs="+", choices=list(DTYPES), default=["float16"], help="KV/query dtypes")
    p.add_argument("--page-sizes", nargs="+", type=_page_size, default=[1],
                   help="slot layouts: 1 token-granular, P pages of P consecutive slots (SGLang --page-size)")
    p.add_argument("--impls", nargs="+", choices=list(IMPLS), default=list(IMPLS), help="what to time")
    p.add_argument("--models", nargs="+", choices=list(MODELS), help="override the grid's models")
    p.add_argument("--batches", nargs="+", type=int, help="override the grid's batch sizes")
    p.add_argument("--contexts", nargs="+", type=int, help="override the grid's context lengths (tokens)")
    p.add_argument("--reps", type=int, help="timed repetitions per point (median reported)")
    p.add_argument("--num-sms", type=int, help="SMs given to the split heuristics (default: the whole GPU)")
    p.add_argument("--configs", nargs="+", type=parse_config, help="extra kernel configs to time, e.g. 128x8x3")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    return p


def _impls(names: list[str], configs: list[KernelConfig] | None) -> list[Impl]:
    out = [IMPLS[n] for n in names]
    for cfg in configs or []:
        name = f"adrenaline[bn{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}]"
        prepare = partial(_prepare_adrenaline, config=cfg)
        out.append(Impl(name, f"ours with {cfg}", IMPLS["adrenaline"].unavailable, prepare))
    return out


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    finite = torch.isfinite(a) & torch.isfinite(b)
    same_inf = (a == b) | finite
    if not bool(same_inf.all()):
        return float("inf")
    return float((a[finite].float() - b[finite].float()).abs().max()) if bool(finite.any()) else 0.0


def _bytes(batch: DecodeBatch) -> tuple[int, int]:
    kv = batch.kv_bytes()
    q = batch.q.numel() * batch.q.element_size()
    total = kv + 2 * q + batch.q.shape[0] * batch.q.shape[1] * 4 + batch.kv_indices.numel() * 4
    return kv, total


def _git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def run(args: argparse.Namespace, argv_for_meta: list[str] | None = None) -> list[dict]:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    grid_name = args.grid if args.grid != "auto" else ("paper" if device.type == "cuda" else "cpu")
    grid = GRIDS[grid_name]
    models = args.models or list(grid.models)
    batches, contexts = args.batches or list(grid.batches), args.contexts or list(grid.contexts)
    reps = args.reps or grid.reps
    num_sms = args.num_sms or default_num_sms(device)
    impls, skipped = [], {}
    for impl in _impls(args.impls, args.configs):
        why = impl.unavailable(device)
        (skipped.__setitem__(impl.name, why) if why else impls.append(impl))
    for name, why in skipped.items():
        print(f"skip {name}: {why}", file=sys.stderr)
    sglang_origin = ""
    if any(impl.name == "sglang_triton" for impl in impls):
        from .sglang_loader import load_default

        sglang_origin = load_default().origin  # "sglang" (imported) or "files:<dir>" (standalone, see loader)
    copy_gbs = copy_bandwidth_gbs(device)
    print(f"device copy bandwidth: {copy_gbs:.1f} GB/s ({device})", file=sys.stderr)
    note = INTERPRETER_NOTE if device.type != "cuda" else ""
    if device.type != "cuda":  # SGLang's grouped kernel computes -inf - -inf in masked rows; numpy warns
        warnings.filterwarnings("ignore", "invalid value encountered in subtract", RuntimeWarning)

    argv = sys.argv[1:] if argv_for_meta is None else argv_for_meta
    meta = dict(
        command=shlex.join(["python", "-m", "adrenaline_kernels.bench", *argv]),
        date_utc=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), git_sha=_git_sha(), grid=grid_name,
        copy_gbs=round(copy_gbs, 1), num_sms=num_sms, skipped=skipped, sglang_kernel=sglang_origin,
        note=note or "CUDA events, L2 flushed", page_sizes=list(args.page_sizes), complete=False,
        **environment(device),
    )  # fmt: skip
    meta_path = args.out.with_suffix(".meta.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    # NOTE: dtype and layout outermost, so a run cut short has whole (dtype, layout) grids, fp16 token-granular first.
    points = [(dt, ps, m, b, c) for dt in args.dtypes for ps in args.page_sizes for m in models for b in batches
              for c in contexts]  # fmt: skip
    rows: list[dict] = []
    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        f.flush()
        for dtype_name, page_size, model, batch_size, ctx in tqdm(points, desc="bench", unit="shape", file=sys.stderr):
            new_rows = _measure_point(model, dtype_name, page_size, batch_size, ctx, impls, device, grid, grid_name,
                                      reps, num_sms, copy_gbs, note)  # fmt: skip
            writer.writerows(new_rows)
            f.flush()
            rows += new_rows
    meta["goals"] = check_goals(rows)
    meta["complete"] = True
    meta_path.write_text(json.dumps(meta, indent=2) + "\n")
    return rows


def _measure_point(model, dtype_name, page_size, batch_size, ctx, impls, device, grid, grid_name, reps, num_sms,
                   copy_gbs, note) -> list[dict]:  # fmt: skip
    """Every implementation on one shape; the first one (ours) is the accuracy reference."""
    hq, hkv, d = MODELS[model]
    batch = make_decode_batch([ctx] * batch_size, hq, hkv, d, DTYPES[dtype_name], device=device, seed=ctx,
                              page_size=page_size)  # fmt: skip
    kv_bytes, total_bytes = _bytes(batch)
    ours_o = ours_lse = None
    rows = []
    for impl in impls:
        fn = impl.prepare(batch, num_sms)
        o, lse = fn()
        lse = torch.logsumexp(lse, dim=-1) if lse.dim() == 3 else lse
        if ours_o is None:
            ours_o, ours_lse = o.clone(), lse.clone()
        n_reps = min(reps, TORCH_REF_MAX_REPS) if impl.name == "torch_ref" else reps
        t_us = time_us(fn, device, warmup=grid.warmup, reps=n_reps)
        gbs = total_bytes / (t_us * 1e-6) / 1e9
        plan = getattr(fn, "plan", None)
        max_splits = plan.max_splits if plan is not None else ""
        rows.append(
            dict(
                device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                grid=grid_name, model=model, impl=impl.name, dtype=dtype_name, page_size=page_size,
                batch=batch_size, ctx=ctx, num_qo_heads=hq, num_kv_heads=hkv, head_dim=d, num_sms=num_sms,
                max_splits=max_splits, time_us=round(t_us, 2), kv_bytes=kv_bytes, total_bytes=total_bytes,
                gbs=float(f"{gbs:.4g}"), copy_gbs=round(copy_gbs, 1), frac_copy_bw=float(f"{gbs / copy_gbs:.4g}"),
                max_abs_diff_o=_diff(o, ours_o), max_abs_diff_lse=_diff(lse, ours_lse), note=note,
            )
        )  # fmt: skip
    del batch
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    rows = run(args, argv)
    for r in rows:
        print(
            f"{r['model']:>13} {r['dtype']:>8} P={r['page_size']:<2} B={r['batch']:<4} ctx={r['ctx']:<5} "
            f"{r['impl']:<26} "
            f"{r['time_us']:>11.1f} us {r['gbs']:>9.4g} GB/s {100 * r['frac_copy_bw']:6.3g}% of copy"
        )
    goals = format_goals(check_goals(rows))
    print(goals if rows and rows[0]["device"] != "cpu" else f"{goals}\n(CPU interpreter: these verdicts mean nothing)")
    print(f"wrote {args.out} ({len(rows)} rows) and {args.out.with_suffix('.meta.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Explain the offload bounds for one model on one GPU type (1 decode instance, N prefill instances).

    python -m adrenaline_sgl.tools.explain --model llama2-13b --gpu a100-80g \\
        [--prefill-instances N] [--tpot-slo-ms X] [--executor-sm-share S] [--context-tokens C] [--json]

Capacities are static (no live load): decode KV capacity = mem_fraction x HBM - weights; each prefill
instance offers the same minus `--prefill-reserve-tokens` of KV for its own batches. Bad input prints one
line naming the field and its valid range, and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from adrenaline_sgl.scheduler.bounds import (
    DEFAULT_MEM_FRACTION,
    DEFAULT_PREFILL_RESERVE_TOKENS,
    DEFAULT_TPOT_SLO_MS,
    Bounds,
    BoundsInput,
    PrefillCapacity,
    compute_bounds,
    kv_capacity_bytes,
)
from adrenaline_sgl.scheduler.cost_model import get_predictor, predictor_names

_GIB = 1024**3


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _OneLineParser(prog="python -m adrenaline_sgl.tools.explain", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama2-13b", help="model spec name (specs.MODELS)")
    ap.add_argument("--gpu", default="a100-80g", help="GPU spec name (specs.GPUS)")
    ap.add_argument("--prefill-instances", type=int, default=1, help="prefill instances serving the decode one")
    ap.add_argument("--tpot-slo-ms", type=float, default=DEFAULT_TPOT_SLO_MS, help="TPOT SLO, ms (> 0)")
    ap.add_argument("--executor-sm-share", type=float, default=0.3, help="executor SM share on prefill, (0, 1]")
    ap.add_argument(
        "--bw-contention",
        type=float,
        default=0.0,
        help="share of the executor's HBM bandwidth taken by the colocated prefill, [0, 1)",
    )
    ap.add_argument("--context-tokens", type=float, default=512.0, help="mean KV tokens per decoding sequence")
    ap.add_argument("--mem-fraction", type=float, default=DEFAULT_MEM_FRACTION, help="HBM share for weights+KV")
    ap.add_argument(
        "--prefill-reserve-tokens",
        type=int,
        default=DEFAULT_PREFILL_RESERVE_TOKENS,
        help="KV tokens each prefill instance keeps for its own work",
    )
    ap.add_argument("--predictor", default="roofline", help=f"cost predictor: {predictor_names()}")
    ap.add_argument("--profile", default=None, help="profile CSV for --predictor table")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    return ap


def explain(args: argparse.Namespace) -> tuple[BoundsInput, Bounds]:
    if args.prefill_instances < 0:
        raise ValueError(f"prefill_instances must be >= 0, got {args.prefill_instances}")
    if args.prefill_reserve_tokens < 0:
        raise ValueError(f"prefill_reserve_tokens must be >= 0, got {args.prefill_reserve_tokens}")
    kw = {"path": args.profile} if args.predictor == "table" and args.profile else {}
    p = get_predictor(args.predictor, args.gpu, args.model, **kw)
    decode_kv = kv_capacity_bytes(p.gpu, p.model, args.mem_fraction)
    spare = max(0.0, decode_kv - args.prefill_reserve_tokens * p.model.kv_bytes_per_token)
    cap = PrefillCapacity(spare, args.executor_sm_share, args.bw_contention)
    inp = BoundsInput(p, args.tpot_slo_ms, decode_kv, (cap,) * args.prefill_instances, args.context_tokens)
    return inp, compute_bounds(inp)


def render_text(inp: BoundsInput, b: Bounds) -> str:
    p = inp.predictor
    prefill_gib = sum(c.spare_kv_bytes for c in inp.prefill) / _GIB
    return "\n".join(
        [
            f"{p.model.name} on {p.gpu.name} ({p.name} predictor), 1 decode + {len(inp.prefill)} prefill instance(s), "
            f"TPOT SLO {inp.tpot_slo_ms:g} ms, mean context {inp.avg_context_tokens:g} tokens",
            f"  decode KV capacity HBM_d      {inp.decode_kv_capacity_bytes / _GIB:8.2f} GiB "
            f"({inp.decode_kv_capacity_bytes / p.model.kv_bytes_per_token:,.0f} tokens)",
            f"  spare prefill KV sum HBM_p    {prefill_gib:8.2f} GiB",
            f"  B_slo (SLO-bound local batch)  {b.b_slo:7d}",
            f"  B_mem (memory-bound batch)     {b.b_mem:7d}",
            f"  B_TPOT = min(B_slo, B_mem)     {b.b_tpot:7d}",
            f"  B_max                          {b.b_max:7d}",
            f"  OB_mem = min(HBM {b.ob_mem_hbm:.3f}, BW {b.ob_mem_bw:.3f}) = {b.ob_mem:.3f}",
            f"  OB_comp = (B_max - B_TPOT) / B_TPOT = {b.ob_comp:.3f}",
            f"  OB = min(OB_mem, OB_comp) = {b.ob:.3f}  -> offload ratio N/M <= {b.ob:.3f}"
            f" (at most {b.ob / (1 + b.ob) if b.ob > 0 else 0.0:.1%} of requests offloaded)",
            f"  binding: {b.binding}: {b.reason}",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        inp, b = explain(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"{ap.prog}: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        out = {
            **b.as_dict(),
            "model": inp.predictor.model.name,
            "gpu": inp.predictor.gpu.name,
            "predictor": inp.predictor.name,
            "prefill_instances": len(inp.prefill),
            "tpot_slo_ms": inp.tpot_slo_ms,
            "avg_context_tokens": inp.avg_context_tokens,
            "decode_kv_capacity_bytes": inp.decode_kv_capacity_bytes,
            "offload_ratio": b.ob,
        }
        print(json.dumps(out, sort_keys=True))
    else:
        print(render_text(inp, b))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

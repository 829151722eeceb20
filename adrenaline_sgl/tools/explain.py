"""Explain the offload bounds for one model on one GPU type (1 decode instance, N prefill instances).

    python -m adrenaline_sgl.tools.explain --model llama2-13b --gpu a100-80g \\
        [--tp T] [--prefill-instances N] [--tpot-slo-ms X] [--executor-sm-share S] [--context-tokens C] [--json]

`--model` is a known name or the path of a Llama `config.json`. Every instance (decode and prefill) is
`--tp` GPUs of tensor parallelism; the text prints the memory arithmetic per GPU (weights / TP, KV heads
/ TP) and which all-reduce curve the step times use. Capacities are static (no live load): decode KV
capacity = mem_fraction x HBM - weights per GPU, in tokens of the whole instance; each prefill instance
offers the same minus `--prefill-reserve-tokens` of KV for its own batches. A model whose weights leave
less than one full context of KV is refused with the smallest TP that fits. Bad input prints one line
naming the field and its valid range, and exits 2.
"""

from __future__ import annotations

import argparse
import json
import sys

from adrenaline_sgl.scheduler.bounds import (
    DEFAULT_EXECUTOR_SM_SHARE,
    DEFAULT_MEM_FRACTION,
    DEFAULT_PREFILL_RESERVE_TOKENS,
    DEFAULT_TPOT_SLO_MS,
    Bounds,
    BoundsInput,
    PrefillCapacity,
    compute_bounds,
)
from adrenaline_sgl.scheduler.cost_model import get_predictor, predictor_names

_GIB = 1024**3


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse prints usage + message; we want one line
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    ap = _OneLineParser(prog="python -m adrenaline_sgl.tools.explain", description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="llama2-13b", help="model spec name (specs.MODELS) or a Llama config.json")
    ap.add_argument("--gpu", default="a100-80g", help="GPU spec name (specs.GPUS)")
    ap.add_argument("--tp", type=int, default=1, help="tensor parallelism of every instance (GPUs per instance)")
    ap.add_argument("--prefill-instances", type=int, default=1, help="prefill instances serving the decode one")
    ap.add_argument("--tpot-slo-ms", type=float, default=DEFAULT_TPOT_SLO_MS, help="TPOT SLO, ms (> 0)")
    ap.add_argument("--executor-sm-share", type=float, default=DEFAULT_EXECUTOR_SM_SHARE,
                    help="executor SM share on prefill, (0, 1] (1: unpartitioned)")  # fmt: skip
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
    p = get_predictor(args.predictor, args.gpu, args.model, tp=args.tp, **kw)
    p.shard.check_fits(p.gpu, args.mem_fraction, min_kv_tokens=p.model.max_context_tokens)
    # the instance's KV in model bytes (whole tokens x the whole model's KV per token), so that HBM_p /
    # HBM_d and the batch bounds count tokens at any TP
    decode_kv = p.kv_capacity_tokens(args.mem_fraction) * float(p.model.kv_bytes_per_token)
    spare = max(0.0, decode_kv - args.prefill_reserve_tokens * p.model.kv_bytes_per_token)
    cap = PrefillCapacity(spare, args.executor_sm_share, args.bw_contention)
    inp = BoundsInput(p, args.tpot_slo_ms, decode_kv, (cap,) * args.prefill_instances, args.context_tokens)
    return inp, compute_bounds(inp)


def memory_lines(p, mem_fraction: float) -> list[str]:
    """The per-GPU memory arithmetic behind the KV capacity, and the collectives' source at TP > 1."""
    s, m, g = p.shard, p.model, p.gpu
    usable = mem_fraction * g.hbm_bytes
    kv_tok = s.kv_bytes_per_token
    rep = f", each replicated on {s.kv_replicas} GPUs" if s.kv_replicas > 1 else ""
    lines = [
        f"  memory per GPU (TP {p.tp}): {mem_fraction:g} x {g.hbm_gib:g} GiB = {usable / _GIB:.2f} GiB "
        "for weights + KV",
        f"    weights per GPU             {s.weight_bytes / _GIB:8.2f} GiB (model {m.weight_bytes / _GIB:.2f} GiB, "
        f"{m.num_params / 1e9:.2f} B params; {s.q_heads} of {m.num_q_heads} q heads, FFN {s.intermediate_size} of "
        f"{m.intermediate_size}, vocab {s.vocab_size} of {m.vocab_size})",
        f"    KV per token per GPU        {kv_tok / 1024:8.2f} KiB ({m.num_layers} layers x K,V x {s.kv_heads} of "
        f"{m.num_kv_heads} KV heads{rep} x {m.head_dim} x {m.bytes_per_param} B; "
        f"model {m.kv_bytes_per_token / 1024:g} KiB)",
        f"    KV per GPU                  {s.kv_capacity_bytes(g, mem_fraction) / _GIB:8.2f} GiB -> "
        f"{p.kv_capacity_tokens(mem_fraction):,} tokens per instance",
    ]
    if p.tp > 1:
        ar = p.comm.allreduce_ms(m.hidden_size * m.bytes_per_param * 64, p.tp)
        lines.append(
            f"  collectives: {2 * m.num_layers + 1} all-reduces + 1 logits all-gather per step; NVLink curve "
            f"{p.comm.source}; one all-reduce of 64 rows {ar * 1e3:.1f} us"
        )
    return lines


def render_text(inp: BoundsInput, b: Bounds, mem_fraction: float = DEFAULT_MEM_FRACTION) -> str:
    p = inp.predictor
    prefill_gib = sum(c.spare_kv_bytes for c in inp.prefill) / _GIB
    tp = f", TP {p.tp} per instance" if p.tp > 1 else ""
    return "\n".join(
        [
            f"{p.model.name} on {p.gpu.name} ({p.name} predictor), 1 decode + {len(inp.prefill)} prefill instance(s)"
            f"{tp}, TPOT SLO {inp.tpot_slo_ms:g} ms, mean context {inp.avg_context_tokens:g} tokens",
            *memory_lines(p, mem_fraction),
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
            "tp": inp.predictor.tp,
            "weight_bytes_per_gpu": inp.predictor.shard.weight_bytes,
            "kv_bytes_per_token_per_gpu": inp.predictor.shard.kv_bytes_per_token,
            "kv_capacity_tokens": inp.predictor.kv_capacity_tokens(args.mem_fraction),
            "comm_source": inp.predictor.comm.source if inp.predictor.tp > 1 else None,
        }
        print(json.dumps(out, sort_keys=True))
    else:
        print(render_text(inp, b, args.mem_fraction))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

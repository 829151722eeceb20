"""Measure a profile table on the local GPU: GEMMs through torch, decode attention through our kernel.

    python -m adrenaline_sgl.tools.profile_gpu --gpu h100-sxm --model llama2-7b --out DIR

writes `DIR/<gpu>__<model>.csv` (a `table.ProfileTable` with provenance) and `DIR/<gpu>__<model>.holdout.json`
(the table predictor's error on held-out grid points: every other point is left out, predicted from the
rest). Commit the CSV under `adrenaline_sgl/scheduler/profiles/`. Random weights of the model's shapes,
fp16 (`--dtype`), one layer, median of `--iters` timed calls after warm-up (CUDA events on GPU).

Operators: qkv, o_proj, ffn (gate+up GEMM, SiLU-mul, down), sampling (LM head, softmax, argmax) at the
token grid, for both phases; prefill attention (torch SDPA, causal, one prompt) at the prompt grid; decode
attention through `adrenaline_kernels.decode_attention` (or `--attn-impl reference`, the plain-torch one,
for CPU smoke runs) over the (batch x context) grid, KV slots scattered as in SGLang's pool.
`--quick` shrinks every grid (CPU tests). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from adrenaline_sgl.scheduler.specs import get_gpu, get_model
from adrenaline_sgl.scheduler.table import ProfileTable, TablePredictor, TableRow

TOKENS = (1, 2, 4, 8, 16, 24, 32, 48, 64, 80, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096)
PROMPTS = (128, 256, 512, 768, 1024, 1536, 2048, 3072, 4096)
BATCHES = (1, 2, 4, 8, 16, 32, 64, 96, 128, 192, 256)
CONTEXTS = (128, 256, 512, 1024, 2048, 3072, 4096)
QUICK = {"tokens": (1, 4, 16, 64), "prompts": (16, 32, 64), "batches": (1, 2, 4), "contexts": (16, 32, 64)}


def _cmd(args: list[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=20, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(gpu: str, model: str, argv: list[str] | None = None) -> dict:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    driver = _cmd(["nvidia-smi", "--query-gpu=driver_version,name", "--format=csv,noheader"]).splitlines()
    return {
        "gpu": gpu,
        "model": model,
        "driver": driver[0] if driver else "unknown",
        "torch": torch.__version__,
        "triton": triton_version,
        "git_sha": _cmd(["git", "rev-parse", "--short", "HEAD"]),
        "command": "python -m adrenaline_sgl.tools.profile_gpu " + " ".join(sys.argv[1:] if argv is None else argv),
    }


class _Timer:
    def __init__(self, device, warmup: int, iters: int) -> None:
        import torch

        self.torch, self.device, self.warmup, self.iters = torch, device, warmup, iters
        self.cuda = device.type == "cuda"

    def median_ms(self, fn) -> float:
        torch = self.torch
        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.iters):
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


def measure(
    gpu: str,
    model_name: str,
    device: str = "cuda",
    dtype: str = "float16",
    quick: bool = False,
    attn_impl: str = "kernel",
    warmup: int = 3,
    iters: int = 20,
    progress: bool = True,
    argv: list[str] | None = None,
) -> ProfileTable:
    import torch
    from tqdm import tqdm

    get_gpu(gpu)
    m = get_model(model_name)
    dev, dt = torch.device(device), getattr(torch, dtype)
    timer = _Timer(dev, warmup, iters)
    grid = QUICK if quick else {"tokens": TOKENS, "prompts": PROMPTS, "batches": BATCHES, "contexts": CONTEXTS}
    h, inter = m.hidden_size, m.intermediate_size
    w_qkv = torch.randn(h, m.qkv_out_dim, device=dev, dtype=dt) * 0.02
    w_o = torch.randn(m.q_dim, h, device=dev, dtype=dt) * 0.02
    w_up = torch.randn(h, 2 * inter, device=dev, dtype=dt) * 0.02
    w_down = torch.randn(inter, h, device=dev, dtype=dt) * 0.02
    w_lm = torch.randn(h, m.vocab_size, device=dev, dtype=dt) * 0.02
    rows: list[TableRow] = []

    def ffn(x):
        gu = x @ w_up
        return (torch.nn.functional.silu(gu[:, :inter]) * gu[:, inter:]) @ w_down

    def sampling(x):
        return torch.argmax(torch.softmax((x @ w_lm).float(), dim=-1), dim=-1)

    jobs = [(op, t) for t in grid["tokens"] for op in ("qkv", "o_proj", "ffn", "sampling")]
    jobs += [("attn-prefill", n) for n in grid["prompts"]]
    jobs += [("attn-decode", (b, c)) for b in grid["batches"] for c in grid["contexts"]]
    for op, size in tqdm(jobs, desc=f"profile {gpu} {model_name}", disable=not progress):
        if op == "attn-prefill":
            q = torch.randn(1, m.num_q_heads, size, m.head_dim, device=dev, dtype=dt)
            kv = torch.randn(1, m.num_kv_heads, size, m.head_dim, device=dev, dtype=dt)
            group = m.num_q_heads // m.num_kv_heads
            ms = timer.median_ms(
                lambda q=q, kv=kv, g=group: torch.nn.functional.scaled_dot_product_attention(
                    q, kv.repeat_interleave(g, 1), kv.repeat_interleave(g, 1), is_causal=True
                )
            )
            rows.append(TableRow("attn", "prefill", size, 0, 1, 1.0, ms))
            continue
        if op == "attn-decode":
            b, c = size
            ms = _decode_attn_ms(m, b, c, dev, dt, attn_impl, timer)
            rows.append(TableRow("attn", "decode", b, b * c, b, 1.0, ms))
            continue
        x = torch.randn(size, m.q_dim if op == "o_proj" else h, device=dev, dtype=dt)
        fn = {
            "qkv": lambda x=x: x @ w_qkv,
            "o_proj": lambda x=x: x @ w_o,
            "ffn": lambda x=x: ffn(x),
            "sampling": lambda x=x: sampling(x),
        }[op]
        ms = timer.median_ms(fn)
        rows += [TableRow(op, phase, size, 0, 1, 1.0, ms) for phase in ("prefill", "decode")]
    return ProfileTable(provenance(gpu, model_name, argv), tuple(rows))


def _decode_attn_ms(m, batch: int, ctx: int, dev, dt, attn_impl: str, timer: _Timer) -> float:
    from adrenaline_kernels import decode_attention, decode_attention_ref
    from adrenaline_kernels.inputs import make_decode_batch

    d = make_decode_batch([ctx] * batch, m.num_q_heads, m.num_kv_heads, m.head_dim, dt, device=dev)
    impl = decode_attention if attn_impl == "kernel" else decode_attention_ref
    return timer.median_ms(lambda: impl(d.q, d.k_buffer, d.v_buffer, d.kv_indptr, d.kv_indices))


def holdout_errors(table: ProfileTable, gpu: str, model: str) -> dict:
    """Leave out every other point of each 1-D series (and every other batch of the attention grid),
    predict them from the rest with TablePredictor; relative errors per (op, phase)."""
    groups: dict[tuple[str, str], list[TableRow]] = {}
    for r in table.rows:
        groups.setdefault((r.op, r.phase), []).append(r)
    train, test = [], []
    for (op, phase), rs in groups.items():
        if op == "attn" and phase == "decode":
            batches = sorted({r.num_seqs for r in rs})
            held = set(batches[1:-1:2])
            train += [r for r in rs if r.num_seqs not in held]
            test += [r for r in rs if r.num_seqs in held]
        else:
            rs = sorted(rs, key=lambda r: r.num_tokens)
            held_idx = set(range(1, len(rs) - 1, 2))
            train += [r for i, r in enumerate(rs) if i not in held_idx]
            test += [r for i, r in enumerate(rs) if i in held_idx]
    p = TablePredictor(gpu, model, table=ProfileTable(table.provenance, tuple(train)))
    errs: dict[str, list[float]] = {}
    for r in test:
        pred = p.op_cost(r.op, r.phase, r.num_tokens, r.context_tokens, r.num_seqs, r.sm_share).ms
        errs.setdefault(f"{r.op}/{r.phase}", []).append(abs(pred - r.ms) / r.ms)
    return {
        k: {"points": len(v), "mean_abs_rel_err": statistics.mean(v), "max_abs_rel_err": max(v)}
        for k, v in sorted(errs.items())
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", required=True, help="GPU spec name this machine is (specs.GPUS)")
    ap.add_argument("--model", required=True, help="model spec name (specs.MODELS)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    ap.add_argument("--attn-impl", default="kernel", choices=["kernel", "reference"])
    ap.add_argument("--quick", action="store_true", help="tiny grids (CPU smoke test)")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per point (median)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls per point first")
    args = ap.parse_args(argv)
    table = measure(
        args.gpu,
        args.model,
        args.device,
        args.dtype,
        args.quick,
        args.attn_impl,
        warmup=args.warmup,
        iters=args.iters,
        argv=sys.argv[1:] if argv is None else argv,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.gpu}__{args.model}"
    (out / f"{stem}.csv").write_text(table.to_csv())
    errs = holdout_errors(table, args.gpu, args.model)
    (out / f"{stem}.holdout.json").write_text(json.dumps(errs, indent=1))
    for k, v in errs.items():
        print(
            f"{k:16s} held-out points {v['points']:3d}  mean |err| {v['mean_abs_rel_err']:.1%}  "
            f"max {v['max_abs_rel_err']:.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Step kernels: the decode-attention grid, ours vs SGLang's Triton kernel, copy bandwidth as reference.

Llama-2 7B / 13B and GQA 32/8 shapes (D=128), fp16 then bf16, token-granular then 16-token-page slot
layouts, batch 1..128, context 512..4096 (`adrenaline_kernels.bench --grid paper`). SGLang's kernel runs from
the three files the bundle carries (`sglang_kernels/`, through `kernels/sglang_loader.py`). If a goal is
missed (>= 85% of copy bandwidth at batch >= 32 and context >= 2048; never slower than SGLang's kernel), the
time left goes to tuning on the shapes that missed: other stage-1 tiles (`--configs`), then the split
heuristic's SM count halved and doubled (`--num-sms`), each a separate CSV (tune-*.csv).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from experiments.gpu_campaign.steps import common

TUNE_CONFIGS = ("64x4x3", "128x8x2", "128x4x2", "32x4x2")
TUNE_RESERVE_S = 45.0  # kept back from the grid for tuning, when the grid would leave less
SMOKE = ["--grid", "cpu", "--device", "cpu", "--models", "tiny-gqa-8-2", "--batches", "2", "--contexts", "16",
         "--reps", "1"]  # fmt: skip


def bench(args: common.StepArgs, name: str, extra: list[str], timeout_s: float) -> tuple[int, dict]:
    out = args.out / f"{name}.csv"
    rc = common.run([common.python(), "-m", "adrenaline_kernels.bench", "--out", out, *extra], timeout_s)
    meta_path = out.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    return rc, meta


def tune_args(goals: dict) -> list[str]:
    """The shapes that missed a goal (at most 2 models, 2 batches, 2 contexts), fp16."""
    missed = list(goals.get("never_slower_than_sglang", {}).get("slower_shapes", []))
    if goals.get("bandwidth", {}).get("met") is False:
        missed.append(dict(model="llama2-7b", batch=32, ctx=4096))
        missed.append(dict(model="gqa-32-8", batch=128, ctx=4096))
    models = sorted({m["model"] for m in missed})[:2]
    batches = sorted({int(m["batch"]) for m in missed})[-2:]
    contexts = sorted({int(m["ctx"]) for m in missed})[-2:]
    return ["--models", *models, "--batches", *map(str, batches), "--contexts", *map(str, contexts),
            "--dtypes", "float16", "--impls", "adrenaline"]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(argv, __doc__.splitlines()[0])
    smoke = args.smoke or not common.has_cuda()
    kernel_src = args.bundle / "sglang_kernels"
    if not (kernel_src / "decode_attention.py").is_file():
        print(f"NOTE: {kernel_src} has no SGLang kernel files: the SGLang baseline will be skipped", flush=True)
    grid = [*SMOKE] if smoke else ["--grid", "paper"]
    grid += ["--dtypes", "float16", *([] if smoke else ["bfloat16"]), "--page-sizes", "1", "16",
             "--impls", "adrenaline", "sglang_triton"]  # fmt: skip
    rcs = []
    rc, meta = bench(args, "bench", grid, args.remaining_s(min(TUNE_RESERVE_S, args.budget_s / 4)))
    rcs.append(rc)
    goals = meta.get("goals", {})
    verdicts = {"goals": goals, "complete": meta.get("complete", False), "skipped_impls": meta.get("skipped", {}),
                "copy_gbs": meta.get("copy_gbs"), "sglang_kernel": meta.get("sglang_kernel", "")}  # fmt: skip
    missed = goals.get("bandwidth", {}).get("met") is False or goals.get("never_slower_than_sglang", {}).get(
        "met") is False  # fmt: skip
    tuned = []
    if missed or smoke:  # smoke: rehearse the first tuning command too
        base = [*SMOKE, "--dtypes", "float16", "--impls", "adrenaline"] if smoke else tune_args(goals)
        sms = int(meta.get("num_sms") or 132)
        runs = [("tune-configs", ["--configs", *(TUNE_CONFIGS[-1:] if smoke else TUNE_CONFIGS)]),
                ("tune-sms-half", ["--num-sms", str(max(1, sms // 2))]),
                ("tune-sms-double", ["--num-sms", str(2 * sms)])]
        for name, extra in runs[:1] if smoke else runs:
            if args.remaining_s(5) < 10:
                break
            rc, _ = bench(args, name, base + extra, args.remaining_s(5))
            rcs.append(rc)
            tuned.append(name)
    verdicts["tuned"] = tuned
    bw, bl = goals.get("bandwidth", {}), goals.get("never_slower_than_sglang", {})
    summary = (f"bandwidth goal met={bw.get('met')} (min {bw.get('min_frac_copy_bw')}), never slower than SGLang "
               f"met={bl.get('met')} (min speedup {bl.get('min_speedup_vs_sglang')}); tuned: {tuned or 'no'}")
    if smoke:
        summary = "CPU interpreter stand-in (times mean nothing): " + summary
    if not meta:
        status = "failed"
    elif not meta.get("complete") or any(rc != 0 for rc in rcs):
        status = "partial"
    else:
        status = "ok"
    reason = "" if status == "ok" else f"exit codes {rcs}, grid complete={meta.get('complete', False)}"
    common.write_status(args.out, status, summary, reason, **verdicts)
    return 0 if rcs[0] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

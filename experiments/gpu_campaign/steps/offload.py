"""Step offload: the decode step with M local rows vs M local + N offloaded, Llama-2-7B shapes (random weights,
fp16), the executor in a second process over `cuda_ipc`; per-layer round trip p50/p99 for N = 16, 64, 128.

The offload bench sizes two KV pools (the client's and the executor's) for all M + N rows each, so the
context is the largest of CANDIDATES that fits the GPU's memory by `fits()`; N runs largest first, so the
smaller pools that follow reuse the first one's memory. If time is left, the same run with the executor
in-process on its own CUDA stream (`inproc`) gives the transport's share of the round trip.
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections.abc import Sequence

from experiments.gpu_campaign.steps import common

OFFLOADED = (128, 64, 16, 0)  # largest first (see module doc); 0 = the local-only baseline
CANDIDATES = ((64, 1024), (64, 512), (32, 512), (64, 256), (32, 256), (16, 256))  # (M local rows, context)
NEW_TOKENS = 25  # what the bench adds to every prompt: warm-up 3 + steps 20 + 2
LLAMA2_7B = dict(layers=32, kv_heads=32, head_dim=128, params=6.74e9)
MEM_MARGIN = 0.85  # of the GPU's memory, for CUDA contexts, activations, fragmentation
SMOKE = ["--model", "tiny-random", "--dtype", "float32", "--device", "cpu", "--transport", "inproc", "--local", "2",
         "--offloaded", "2,0", "--context", "16", "--steps", "2", "--warmup", "1"]  # fmt: skip


def pool_bytes(rows: int, context: int, dtype_bytes: int = 2) -> int:
    m = LLAMA2_7B
    slots = rows * (context + NEW_TOKENS) + 64
    return slots * m["layers"] * 2 * m["kv_heads"] * m["head_dim"] * dtype_bytes


def fits(local: int, context: int, gpu_bytes: int) -> bool:
    """Client process: fp16 weights plus the fp32 copy they were made from (cached by torch's allocator), and a
    pool for M + max N rows; executor process: another such pool."""
    weights = LLAMA2_7B["params"] * (2 + 4)
    return weights + 2 * pool_bytes(local + max(OFFLOADED), context) <= MEM_MARGIN * gpu_bytes


def gpu_memory_bytes() -> int | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True)  # fmt: skip
        return int(out.stdout.split()[0]) << 20  # MiB
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


BENCH = "adrenaline_sgl.tools.offload_bench"


def read_rows(path) -> list[dict]:
    return list(csv.DictReader(open(path))) if path.is_file() else []


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(argv, __doc__.splitlines()[0])
    smoke = args.smoke or not common.has_cuda()
    verdicts: dict = {}
    if smoke:
        runs = [("cuda_ipc", ["--transport", "cuda_ipc"], "skipped: no GPU"), ("inproc", SMOKE, None)]
    else:
        total = gpu_memory_bytes()
        choice = next(((m, c) for m, c in CANDIDATES if total and fits(m, c, total)), None)
        verdicts.update(gpu_memory_bytes=total, local_rows=choice and choice[0], context=choice and choice[1])
        if choice is None:
            common.write_status(args.out, "failed", "no (M, context) fits the GPU memory", f"memory {total}")
            return 1
        base = ["--model", "llama2-7b-random", "--dtype", "float16", "--local", str(choice[0]), "--offloaded",
                ",".join(map(str, OFFLOADED)), "--context", str(choice[1]), "--steps", "20", "--warmup", "3"]
        runs = [("cuda_ipc", [*base, "--transport", "cuda_ipc"], None), ("inproc", [*base, "--transport", "inproc"],
                                                                         None)]  # fmt: skip
    rcs, done = [], {}
    for name, extra, skip in runs:
        if skip:
            print(f"{name}: {skip}", flush=True)
            (args.out / name).mkdir(exist_ok=True)
            (args.out / name / "SKIPPED").write_text(skip + "\n")
            continue
        if name == "inproc" and not smoke and args.remaining_s() < 45:
            print("inproc: skipped, less than 45 s left", flush=True)
            continue
        rc = common.run([common.python(), "-m", BENCH, "--out", args.out / name, *extra], args.remaining_s(3))
        rcs.append(rc)
        done[name] = read_rows(args.out / name / "bench.csv")
    for name, rows in done.items():
        verdicts[name] = {r["offloaded_rows"]: {k: r[k] for k in ("step_ms_p50", "step_vs_local_only",
                                                                  "round_trip_ms_p50", "round_trip_ms_p99")}
                          for r in rows}  # fmt: skip
    main_run = "inproc" if smoke else "cuda_ipc"
    rows = done.get(main_run, [])
    ratios = {r["offloaded_rows"]: r["step_vs_local_only"] for r in rows if r["offloaded_rows"] != "0"}
    summary = f"{main_run}: step ratio (M+N)/M by N {ratios or 'not measured'}"
    if smoke:
        summary = "CPU stand-in (inproc, tiny model; cuda_ipc skipped: no GPU): " + summary
    status = "failed" if not rows else ("ok" if all(rc == 0 for rc in rcs) else "partial")
    common.write_status(args.out, status, summary, "" if status == "ok" else f"exit codes {rcs}", **verdicts)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())

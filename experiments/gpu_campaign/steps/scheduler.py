"""Step scheduler: the scheduler's profile table on this GPU (GEMMs through torch, decode attention through our
kernel, prefill attention through SDPA) for Llama-2-7B, and its held-out prediction error.

The GPU's spec name (adrenaline_sgl.scheduler.specs) comes from its device name; a GPU without a spec is
skipped with the reason. Smoke mode: the `--quick` grids on the CPU with the reference attention, SmolLM2-135M.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence

from experiments.gpu_campaign.steps import common

SPEC_BY_NAME = (("H200", "h200"), ("H100", "h100-sxm"), ("A100", "a100-80g"))
MODEL = "llama2-7b"
SMOKE_MODEL = "smollm2-135m"  # the CPU rehearsal's quick grid: Llama-2-7B's weights take seconds to draw on a CPU


def gpu_spec(device_name: str) -> str | None:
    from adrenaline_sgl.scheduler.specs import GPUS

    for needle, spec in SPEC_BY_NAME:
        if needle in device_name.upper() and spec in GPUS:
            return spec
    return None


def device_name() -> str:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30, check=True)  # fmt: skip
        return out.stdout.strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return ""


PROFILER = "adrenaline_sgl.tools.profile_gpu"


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(argv, __doc__.splitlines()[0])
    smoke = args.smoke or not common.has_cuda()
    model = SMOKE_MODEL if smoke else MODEL
    if smoke:
        spec, extra = "h200", ["--device", "cpu", "--quick", "--attn-impl", "reference", "--iters", "1", "--warmup",
                               "0", "--dtype", "float32"]  # fmt: skip
    else:
        name = device_name()
        spec, extra = gpu_spec(name), []
        if spec is None:
            common.write_status(args.out, "skipped", "no scheduler spec for this GPU", f"GPU {name!r}")
            return 0
    rc = common.run([common.python(), "-m", PROFILER, "--gpu", spec, "--model", model, "--out", args.out,
                     *extra], args.remaining_s(3))  # fmt: skip
    table, holdout = args.out / f"{spec}__{model}.csv", args.out / f"{spec}__{model}.holdout.json"
    errs = json.loads(holdout.read_text()) if holdout.is_file() else {}
    worst = max((v["mean_abs_rel_err"] for v in errs.values()), default=None)
    summary = f"{table.name}: {'written' if table.is_file() else 'missing'}; worst mean held-out error {worst}"
    if smoke:
        summary = "CPU quick grid (times mean nothing): " + summary
    status = "ok" if rc == 0 and table.is_file() else ("partial" if table.is_file() else "failed")
    common.write_status(args.out, status, summary, "" if status == "ok" else f"rc {rc}", spec=spec, holdout=errs)
    return 0 if table.is_file() else 1


if __name__ == "__main__":
    sys.exit(main())

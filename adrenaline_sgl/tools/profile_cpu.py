"""Measure this machine's CPU profile on one pinned core, so the cost model and the simulator can describe it.

    python -m adrenaline_sgl.tools.profile_cpu --out adrenaline_sgl/scheduler/profiles      # make profile-cpu

Pins itself to `--cpu` (every thread, before any work), one torch thread, and measures SmolLM2-135M in
bf16 as the CPU demo serves it, on the decode harness (`tools/decode_harness.py`, transformers' Llama with our
attention function; tools/cpu_model_timing.py) and the executor (tools/cpu_offload_timing.py):
- prefill time vs prompt tokens, and decode step time vs batch and context, each split per operator with
  local attention separate;
- the executor's attention (append + attention per layer, the kernel it runs here) vs rows and context;
- the per-layer round trip vs rows over Mooncake TCP, the executor process pinned to `--peer-cpu`;
- a bf16 GEMM and a memory copy (the device spec's peak and bandwidth).
Writes into `--out` (file names: scheduler/cpu_profile.py): `<device>.device.json` (the spec `get_gpu`
registers, with the link fitted to the round trips), `<device>__smollm2-135m.csv` (the `table` predictor's
profile) and `<device>__smollm2-135m.raw.csv` (every measurement as taken). Each carries provenance:
machine (/proc/cpuinfo), command, date, git sha, torch version, CPUs, and the load average before and
after. `status: measured` needs a quiet machine (1-minute load average below QUIET_LOAD_AVG at the start);
otherwise `status: provisional`: timings taken beside other work are not this machine's.
About 2 minutes on a quiet machine; `--quick` (tiny grids, for tests) about 30 s.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

QUIET_LOAD_AVG = 0.5
MODEL_SPEC = "smollm2-135m"  # scheduler/specs.py name of the model the harness loads as `smollm2`
DEFAULT_DEVICE = "cpu-epyc-1core"
FULL = {"prompts": (16, 32, 64, 128, 256, 512), "batches": (1, 2, 4, 8, 16, 32), "contexts": (64, 256, 1024),
        "exec_rows": (1, 2, 4, 8, 16, 32, 64), "exec_contexts": (64, 256, 1024), "rt_rows": (1, 2, 4, 8, 16, 32),
        "rt_context": 256, "warmup": 1, "iters": 3, "rt_steps": 5, "max_exec_tokens": 32768}
QUICK = {"prompts": (8, 16), "batches": (1, 2), "contexts": (16, 32), "exec_rows": (1, 2), "exec_contexts": (16, 32),
         "rt_rows": (1, 2), "rt_context": 16, "warmup": 1, "iters": 1, "rt_steps": 2, "max_exec_tokens": 32768}


def pin_self(cpu: int) -> None:
    """Every thread of this process onto `cpu`, one thread for torch, OpenMP and MKL (children too)."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), {cpu})
    import torch

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only before the first inter-op work; intra-op threads are what matter here
        pass


def machine() -> str:
    """One line from /proc/cpuinfo and /proc/meminfo: model, family/model, CPUs, the flags that matter."""
    info: dict[str, str] = {}
    cpus = 0
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "processor":
                cpus += 1
            info.setdefault(key, value.strip())
    flags = set(info.get("flags", "").split())
    wanted = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    with open("/proc/meminfo") as f:
        mem_kib = int(next(line.split()[1] for line in f if line.startswith("MemTotal")))
    return (f"{info.get('model name', '?')} (vendor {info.get('vendor_id', '?')}, family {info.get('cpu family', '?')} "
            f"model {info.get('model', '?')}, {cpus} CPUs, cache {info.get('cache size', '?')}, "
            f"{mem_kib / 2**20:.1f} GiB RAM, flags {' '.join(wanted) or 'none of avx2/avx512/amx'}), {platform.node()}")


def affinity_readback() -> str:
    """What /proc says this process runs on: every thread's Cpus_allowed_list, and torch's thread count."""
    import torch

    lists = set()
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/status") as f:
            lists.update(line.split(":", 1)[1].strip() for line in f if line.startswith("Cpus_allowed_list"))
    return f"Cpus_allowed_list {' / '.join(sorted(lists))} on all threads; torch threads {torch.get_num_threads()}"


def _tracked_changes() -> bool:
    import subprocess

    try:
        done = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                              text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return bool(done.stdout.strip())


def _load_avg() -> str:
    return Path("/proc/loadavg").read_text().strip()


def provenance(device: str, args: argparse.Namespace, argv: list[str]) -> dict:
    import torch

    from adrenaline_sgl.tools.profile_gpu import provenance as gpu_provenance

    prov = gpu_provenance(device, MODEL_SPEC, argv)
    if _tracked_changes():
        prov["git_sha"] += " + uncommitted changes"
    prov.update(
        driver="none (CPU)",
        command="python -m adrenaline_sgl.tools.profile_cpu " + " ".join(argv),
        machine=machine(),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        cpus=f"measured on CPU {args.cpu} (sched_setaffinity, every thread), executor process on CPU {args.peer_cpu}",
        threads=f"torch {torch.get_num_threads()}, OMP_NUM_THREADS {os.environ.get('OMP_NUM_THREADS')}",
        affinity=affinity_readback(),
        dtype="bfloat16 (SmolLM2-135M as served by the CPU demo)",
        load_avg_start=_load_avg(),
    )
    return prov


def device_peaks(iters: int = 5) -> tuple[float, float]:
    """(bf16 GEMM TFLOP/s at 1024^3, copy GB/s of 256 MiB read + written), medians on this core."""
    import torch

    a = torch.randn(1024, 1024).to(torch.bfloat16)
    b = torch.randn(1024, 1024).to(torch.bfloat16)
    src = torch.empty(2**28, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)

    def median_s(fn) -> float:
        fn()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    gemm_s = median_s(lambda: a @ b)
    copy_s = median_s(lambda: dst.copy_(src))
    return 2 * 1024**3 / gemm_s / 1e12, 2 * src.numel() / copy_s / 1e9


def _check_cpus(args: argparse.Namespace) -> None:
    have = os.sched_getaffinity(0)
    for name in ("cpu", "peer_cpu"):
        if getattr(args, name) not in have:
            raise SystemExit(f"profile_cpu: --{name.replace('_', '-')} {getattr(args, name)} is not available "
                             f"here (available: {sorted(have)})")
    if args.cpu == args.peer_cpu and len(have) > 1:
        raise SystemExit("profile_cpu: --cpu and --peer-cpu must differ (the executor runs on its own core)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adrenaline_sgl.tools.profile_cpu", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="folder for the device, table and raw files")
    p.add_argument("--device", default=DEFAULT_DEVICE, help="device spec name to write (must start with cpu-)")
    p.add_argument("--cpu", type=int, default=0, help="CPU this process is pinned to")
    p.add_argument("--peer-cpu", type=int, default=None, help="CPU of the executor process (default: another one)")
    p.add_argument("--quick", action="store_true", help="tiny grids (tests); the result is marked provisional")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if not args.device.startswith("cpu-"):
        raise SystemExit(f"profile_cpu: --device must start with 'cpu-', got {args.device!r}")
    if args.peer_cpu is None:
        others = sorted(os.sched_getaffinity(0) - {args.cpu})
        args.peer_cpu = others[0] if others else args.cpu
    _check_cpus(args)
    pin_self(args.cpu)
    from adrenaline_sgl.tools.cpu_profile_run import run

    return run(args, argv, grid=QUICK if args.quick else FULL)


if __name__ == "__main__":
    sys.exit(main())

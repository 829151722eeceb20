"""Timing and hardware reference points for the kernel benchmark (GPU: CUDA events with an L2 flush before
every repetition; CPU: wall clock). Reported numbers are medians."""

from __future__ import annotations

import platform
import statistics
import subprocess
import time
from collections.abc import Callable

import torch
import triton

L2_FLUSH_BYTES = 256 << 20  # larger than any current L2 (H100: 50 MiB), so every rep reads KV from HBM
COPY_BYTES_GPU = 1 << 30
COPY_BYTES_CPU = 64 << 20


def time_us(fn: Callable[[], object], device: torch.device, *, warmup: int, reps: int) -> float:
    """Median time of one call of `fn` in microseconds."""
    for _ in range(warmup):
        fn()
    if device.type != "cuda":
        samples = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t0) * 1e6)
        return statistics.median(samples)
    flush = torch.empty(L2_FLUSH_BYTES, dtype=torch.uint8, device=device)
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    torch.cuda.synchronize(device)
    for start, end in zip(starts, ends):
        flush.zero_()
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize(device)
    return statistics.median(s.elapsed_time(e) * 1e3 for s, e in zip(starts, ends))


def copy_bandwidth_gbs(device: torch.device, *, reps: int = 10) -> float:
    """Measured device-to-device copy bandwidth: (read + write bytes) / time of `dst.copy_(src)`, in GB/s."""
    n = COPY_BYTES_GPU if device.type == "cuda" else COPY_BYTES_CPU
    src = torch.empty(n, dtype=torch.uint8, device=device).fill_(1)
    dst = torch.empty_like(src)
    t_us = time_us(lambda: dst.copy_(src), device, warmup=3, reps=reps)
    return 2 * n / (t_us * 1e-6) / 1e9


def environment(device: torch.device) -> dict[str, str | int]:
    """GPU, driver, torch and triton versions (what every reported number must carry)."""
    info: dict[str, str | int] = {
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "host_cpu": platform.processor() or platform.machine(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, sm_count=props.multi_processor_count, cuda=str(torch.version.cuda))
        info["gpu_mem_gib"] = round(props.total_memory / 2**30, 1)
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            info["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 else "unknown"
        except (OSError, subprocess.TimeoutExpired, IndexError):
            info["driver"] = "unknown"
    else:
        info["gpu"] = "none (CPU, Triton interpreter)"
    return info

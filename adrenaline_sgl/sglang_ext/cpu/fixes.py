"""The two CPU fixes that real SGLang 0.5.23 PD servers need on a machine without CUDA.

Called by the plugin entry point (`plugin.load()`) in every SGLang process when
`SGLANG_USE_CPU_ENGINE=1`; development and test support, off unless asked for (docs/sglang.md).

1. `MooncakeKVSender.supports_host_tensor_indices = False`: otherwise the prefill scheduler copies each
   request's page indices into pinned host memory and records a CUDA event on the first request
   ("pin_memory=True requires a CUDA or other accelerator backend"). With False it sends the indices the
   way every other transfer backend does.
2. Where CUDA is absent, `torch.cuda.Event` becomes `torch.cpu.Event`: a cached-prefix early send
   (srt/disaggregation/prefill.py) creates a CUDA event unconditionally when overlap scheduling is on.
   CPU work is synchronous, so an event that is complete when recorded is exact, not an approximation.
"""

from __future__ import annotations

import os
import sys

import torch

_applied: list[str] = []


def apply() -> list[str]:
    """Apply both fixes once per process; return the names of what was changed (for logs and tests)."""
    if _applied:
        return list(_applied)
    from sglang.srt.disaggregation.mooncake.conn import MooncakeKVSender

    if not hasattr(MooncakeKVSender, "supports_host_tensor_indices"):
        raise RuntimeError(
            "sglang.srt.disaggregation.mooncake.conn.MooncakeKVSender has no supports_host_tensor_indices; "
            "the CPU fixes target sglang 0.5.23 only"
        )
    MooncakeKVSender.supports_host_tensor_indices = False
    _applied.append("MooncakeKVSender.supports_host_tensor_indices=False")
    if not torch.cuda.is_available():
        torch.cuda.Event = torch.cpu.Event
        _applied.append("torch.cuda.Event=torch.cpu.Event")
    # NOTE: SGLang loads plugins before it configures logging, so an INFO record would be dropped; one
    # stderr line per SGLang process keeps the fixes visible in the server logs (the e2e suite checks it).
    print(f"adrenaline_sgl CPU fixes applied (pid {os.getpid()}): {', '.join(_applied)}; {threads_line()}",
          file=sys.stderr, flush=True)
    return list(_applied)


def threads_line() -> str:
    """What this process runs with: CPUs, torch's intra-op threads and the thread variables. Printed from
    inside, because `/proc/<pid>/environ` of SGLang's retitled processes (`sglang::scheduler`) is blank:
    setproctitle overwrites the block the kernel shows (tests/e2e/test_pinned_pair.py reads both)."""
    from adrenaline_sgl.configs.cpus import THREAD_ENV_NAMES, format_cpu_list

    env = ", ".join(f"{name}={os.environ.get(name, '')}" for name in THREAD_ENV_NAMES)
    return f"CPUs {format_cpu_list(os.sched_getaffinity(0))}, torch threads {torch.get_num_threads()}, {env}"

"""CPU pinning of one server process tree: the `cpus` lists of the cluster YAML, and what pinning sets.

A CPU list is Linux's cpulist syntax (as in `taskset -c` and `/proc/<pid>/status` `Cpus_allowed_list`):
"0", "0-3", "0,2,4-7". The launcher applies it to a server before exec (`os.sched_setaffinity` in the
child), so SGLang's scheduler and detokenizer processes inherit it, and gives the server thread counts that
match (`thread_env`): without them a one-core server keeps the thread count of an unpinned one and its
OpenMP workers fight over that core (decode fell from ~20 to ~1 tok/s when the demo servers were pinned
one core each without them).

Thread variables: torch's intra-op pool (OpenMP) and MKL read `OMP_NUM_THREADS` and `MKL_NUM_THREADS`
at start-up. SGLang's own `SGLANG_CPU_OMP_THREADS_BIND` is NOT set: without AMX (this machine) it is only
logged, with AMX SGLang's default ("all") already takes the process's allowed CPUs of NUMA node 0, and
setting it makes SGLang skip its CPU memory capacity probe, which changes other defaults (chunked prefill
size, memory fraction) between pinned and unpinned runs. Set it in a role's `env` when the pinned cores
lie outside NUMA node 0 on an AMX machine.
"""

from __future__ import annotations

import os
import re

THREAD_ENV_NAMES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
_RANGE = re.compile(r"^(\d+)(?:-(\d+))?$")
MAX_CPU_ID = 4095


def parse_cpu_list(text: str | int, where: str) -> tuple[int, ...]:
    """Sorted CPU ids of `text` ("0", "0-3", "0,2-3"; an int is one CPU). Errors name `where`."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ValueError(f"{where} must be a CPU list string such as \"0\", \"0-3\" or \"0,2-3\", got {text!r}")
    if isinstance(text, int):
        text = str(text)
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        m = _RANGE.match(part)
        if not m:
            raise ValueError(f"{where} = {text!r} is not a CPU list (use e.g. \"0\", \"0-3\" or \"0,2-3\")")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if lo > hi or hi > MAX_CPU_ID:
            raise ValueError(f"{where} = {text!r}: range {part!r} must go up, within CPU ids 0..{MAX_CPU_ID}")
        cpus.update(range(lo, hi + 1))
    return tuple(sorted(cpus))


def format_cpu_list(cpus: tuple[int, ...] | set[int] | list[int]) -> str:
    """The cpulist form of `cpus`, ranges collapsed: (0, 1, 2, 5) -> "0-2,5" (as the kernel writes it)."""
    out, run = [], []
    for cpu in sorted(set(cpus)):
        if run and cpu == run[-1] + 1:
            run.append(cpu)
            continue
        if run:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
        run = [cpu]
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def thread_env(cpus: tuple[int, ...]) -> dict[str, str]:
    """Environment that sizes a pinned server's thread pools to its cores."""
    return {name: str(len(cpus)) for name in THREAD_ENV_NAMES}


def available_cpus() -> set[int]:
    """CPUs this process may run on (what a child can be pinned to)."""
    return set(os.sched_getaffinity(0))


def check_available(cpus: tuple[int, ...], where: str, available: set[int] | None = None) -> None:
    """Raise when a CPU of `cpus` does not exist here (or lies outside this process's allowed set)."""
    have = available_cpus() if available is None else available
    missing = sorted(set(cpus) - have)
    if missing:
        raise ValueError(f"{where}: CPU {format_cpu_list(missing)} is not available on this machine "
                         f"(available: {format_cpu_list(have)})")

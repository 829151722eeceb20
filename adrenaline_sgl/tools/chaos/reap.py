"""`python -m adrenaline_sgl.tools.chaos.reap FOLDER`: stop every process a chaos run under FOLDER left running.

The Make target runs it on exit whatever happened (a hard timeout, Ctrl-C, a crash of the harness itself). A
process belongs to the run when its PYTHONPATH names one of the run's CPU support folders (the launcher gives
every process it starts its run's folder). SIGTERM, then SIGKILL after `grace_s`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

from adrenaline_sgl.tools.chaos.stack import strays


def reap(folder: Path, grace_s: float = 10.0) -> list[int]:
    """Stop the run's leftover processes; returns their pids."""
    found = strays(folder)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in found:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace_s
        while strays(folder) and time.monotonic() < deadline:
            time.sleep(0.2)
        if not strays(folder):
            break
    return found


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m adrenaline_sgl.tools.chaos.reap FOLDER", file=sys.stderr)
        return 2
    folder = Path(args[0])
    if not folder.exists():
        return 0
    found = reap(folder)
    if found:
        print(f"chaos reap: stopped {len(found)} leftover processes of {folder}: {found}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What every step shares: its arguments, running a command under a deadline, and its status file.

A step's `status.json` holds `status` (ok, failed, partial, skipped), `reason` (why, for anything but ok),
`summary` (one line for the campaign's summary) and whatever verdicts the step measured. The runner adds
the exit code, the duration and whether the step ran out of time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[3]
TIMEOUT_RC = 124  # what coreutils `timeout` returns; the runner and steps use it for "ran out of time"
KILL_GRACE_S = 5.0


@dataclass(frozen=True)
class StepArgs:
    out: Path  # the step's folder (created)
    budget_s: float  # wall-clock seconds the step may take, sub-commands included
    smoke: bool  # CPU rehearsal: tiny shapes, CPU stand-ins
    bundle: Path  # the carried .gpu folder (bundle.json, sglang_kernels/, wheels/)
    started: float  # time.monotonic() at start

    def remaining_s(self, reserve_s: float = 0.0) -> float:
        return self.budget_s - (time.monotonic() - self.started) - reserve_s


def parse_args(argv: Sequence[str] | None, description: str) -> StepArgs:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--out", type=Path, required=True, help="the step's output folder")
    ap.add_argument("--budget-s", type=float, required=True, help="wall-clock budget of the step, seconds")
    ap.add_argument("--smoke", action="store_true", help="CPU rehearsal: tiny shapes, CPU stand-ins")
    ap.add_argument("--bundle", type=Path, default=REPO_ROOT / ".gpu", help="the carried bundle folder")
    a = ap.parse_args(argv)
    if a.budget_s <= 0:
        ap.error(f"--budget-s must be > 0, got {a.budget_s}")
    a.out.mkdir(parents=True, exist_ok=True)
    return StepArgs(a.out, a.budget_s, a.smoke, a.bundle, time.monotonic())


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def run(argv: Sequence[str], timeout_s: float, env: dict[str, str] | None = None, cwd: Path = REPO_ROOT) -> int:
    """Run `argv` in its own process group with the step's stdout/stderr; past `timeout_s` the whole group
    gets SIGTERM, then SIGKILL, and the result is TIMEOUT_RC. Never raises for the command's own failure."""
    print(f"$ {' '.join(str(a) for a in argv)}   # timeout {timeout_s:.0f} s", flush=True)
    if timeout_s <= 1:
        print("(not started: no time left)", flush=True)
        return TIMEOUT_RC
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen([str(a) for a in argv], cwd=cwd, env=env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        print(f"(killed after {timeout_s:.0f} s)", flush=True)
        return TIMEOUT_RC
    except BaseException:
        kill_group(proc)
        raise


def kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group, SIGKILL what is left after KILL_GRACE_S."""
    for sig, wait_s in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def python() -> str:
    return sys.executable


def write_status(out: Path, status: str, summary: str, reason: str = "", **verdicts) -> dict:
    if status not in ("ok", "failed", "partial", "skipped"):
        raise ValueError(f"status must be ok, failed, partial or skipped, got {status!r}")
    record = {"status": status, "summary": summary, "reason": reason, **verdicts}
    (out / "status.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    print(f"status: {status}: {summary}{f' ({reason})' if reason else ''}", flush=True)
    return record


def status_of(rcs: Sequence[int]) -> str:
    """ok when every command exited 0, partial when some did, failed when none did."""
    good = sum(rc == 0 for rc in rcs)
    return "ok" if good == len(rcs) else ("partial" if good else "failed")


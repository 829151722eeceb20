"""Run the GPU campaign: every step in order under its own time limit, one tarball of all results.

    python -m experiments.gpu_campaign.run --out $OUT            # on the GPU machine (campaign.sh sets it up)
    python -m experiments.gpu_campaign.run --out DIR --smoke     # CPU rehearsal (tiny shapes, stand-ins)

Steps, most valuable first (budgets in STEPS; the whole run stops starting steps at `--budget-s`):
tests, kernels, colocation, offload, scheduler, sglang. Each runs as `python -m
experiments.gpu_campaign.steps.NAME` in its own process group; its stdout/stderr go to its `log.txt`. A
failed or timed-out step is recorded and the next one runs. After every step the tarball
`$OUT/campaign.tar.gz` (folder `campaign/`: provenance.json, summary.txt, nvidia-smi.txt, one folder per
step) is rewritten, so a run killed from outside still returns what finished; SIGTERM/SIGINT end the current
step and write it once more. `$OUT` also gets provenance.json and summary.txt (3 files in all).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from experiments.gpu_campaign import provenance
from experiments.gpu_campaign.steps.common import REPO_ROOT, TIMEOUT_RC, kill_group

TARBALL = "campaign.tar.gz"
TOP = "campaign"
GRACE_S = 10.0  # a step gets this long past its budget to write its status before it is killed
PACK_RESERVE_S = 10.0  # kept back at the end of the run for the last packing


@dataclass(frozen=True)
class Step:
    name: str
    budget_s: float  # on the GPU machine; the smoke run gives every step SMOKE_BUDGET_S
    what: str

    @property
    def module(self) -> str:
        return f"experiments.gpu_campaign.steps.{self.name}"


STEPS = (
    Step("tests", 100, "gpu-marked tests of kernels, offload, colocation"),
    Step("kernels", 130, "decode-attention grid vs SGLang's kernel and copy bandwidth; tuning if a goal is missed"),
    Step("colocation", 80, "green-context probe; SM-share curves; prefill beside a loaded executor"),
    Step("offload", 80, "decode step M vs M+N over cuda_ipc; per-layer round trip"),
    Step("scheduler", 45, "scheduler profile table for Llama-2-7B"),
    Step("sglang", 45, "the SGLang plugin's gpu tests with sglang carried"),
)
DEFAULT_BUDGET_S = 480.0
SMOKE_BUDGET_S = 120.0


def _utc() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Campaign:
    def __init__(self, out: Path, work: Path, bundle: Path, smoke: bool, budget_s: float, only: list[str] | None,
                 argv: list[str]):  # fmt: skip
        self.out, self.bundle, self.smoke, self.budget_s = out, bundle, smoke, budget_s
        self.steps = [s for s in STEPS if not only or s.name in only]
        self.dir = work / TOP
        self.dir.mkdir(parents=True, exist_ok=True)
        self.out.mkdir(parents=True, exist_ok=True)
        self.started = time.monotonic()
        self.current: subprocess.Popen | None = None
        bundle_meta = self._bundle_meta()
        digest, missing = provenance.tree_digest(REPO_ROOT, bundle_meta.get("files", []))
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        self.prov: dict = {
            "schema": provenance.SCHEMA,
            "campaign_id": f"{stamp}-{str(bundle_meta.get('git_sha', 'nosha'))[:10]}",
            "mode": "smoke" if smoke else "gpu",
            "command": shlex.join(["python", "-m", "experiments.gpu_campaign.run", *argv]),
            "budget_s": budget_s,
            "started_utc": _utc(),
            "finished_utc": None,
            "bundle": {k: v for k, v in bundle_meta.items() if k != "files"},
            "tree_matches_bundle": bool(bundle_meta.get("files")) and digest == bundle_meta.get("tree_digest"),
            "tree_files_missing": missing[:20],
            "steps": [],
            "complete": False,
        }
        software, gpu, smi = provenance.environment(sys.executable)
        self.prov.update(software=software, gpu=gpu)
        (self.dir / "nvidia-smi.txt").write_text(smi or "nvidia-smi: not available\n")
        (self.dir / "environment.txt").write_text(
            "\n".join(f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith(("PYTHON", "CUDA", "TRITON",
                      "ADRENALINE", "PYTORCH", "OMP"))) + "\n")  # fmt: skip

    def _bundle_meta(self) -> dict:
        path = self.bundle / "bundle.json"
        if not path.is_file():
            return {"error": f"no bundle.json in {self.bundle}"}
        return json.loads(path.read_text())

    def remaining_s(self) -> float:
        return self.budget_s - (time.monotonic() - self.started)

    def step_argv(self, step: Step, folder: Path, budget_s: float) -> list[str]:
        return [sys.executable, "-m", step.module, "--out", str(folder), "--budget-s", f"{budget_s:.0f}",
                "--bundle", str(self.bundle), *(["--smoke"] if self.smoke else [])]  # fmt: skip

    def run_step(self, index: int, step: Step) -> dict:
        folder = self.dir / f"{index}-{step.name}"
        folder.mkdir(exist_ok=True)
        budget = min(SMOKE_BUDGET_S if self.smoke else step.budget_s, self.remaining_s() - PACK_RESERVE_S)
        record = {"name": step.name, "what": step.what, "folder": folder.name, "budget_s": round(budget, 1),
                  "started_utc": _utc(), "rc": None, "duration_s": 0.0}  # fmt: skip
        if budget < 5:
            record.update(status="skipped", reason=f"campaign budget {self.budget_s:.0f} s spent")
            return record
        argv = self.step_argv(step, folder, budget)
        t0 = time.monotonic()
        with open(folder / "log.txt", "w") as log:
            log.write(f"$ {shlex.join(argv)}\n")
            log.flush()
            self.current = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)  # fmt: skip
            try:
                rc = self.current.wait(timeout=budget + GRACE_S)
            except subprocess.TimeoutExpired:
                kill_group(self.current)
                rc = TIMEOUT_RC
            finally:
                self.current = None
        record.update(rc=rc, duration_s=round(time.monotonic() - t0, 1))
        status_file = folder / "status.json"
        status = json.loads(status_file.read_text()) if status_file.is_file() else {}
        if rc == TIMEOUT_RC:
            record.update(status="timeout", reason=f"killed after {budget + GRACE_S:.0f} s")
        elif not status:
            record.update(status="failed", reason=f"exit {rc}, no status.json (see log.txt)")
        else:
            record.update(status=status["status"] if rc == 0 or status["status"] != "ok" else "failed",
                          reason=status.get("reason", ""))  # fmt: skip
        record["summary"] = status.get("summary", "")
        return record

    def summary(self) -> str:
        p, gpu = self.prov, self.prov.get("gpu") or {}
        head = [f"GPU campaign {p['campaign_id']} ({p['mode']}), {p['started_utc']} .. "
                f"{p['finished_utc'] or 'running'}",
                f"gpu: {gpu.get('name', 'none')}, driver {gpu.get('driver', '-')}, CUDA {gpu.get('cuda', '-')}; "
                f"torch {p['software'].get('torch')}, triton {p['software'].get('triton')}",
                f"bundle: git {p['bundle'].get('git_sha')} (dirty: {p['bundle'].get('dirty')}), tree matches: "
                f"{p['tree_matches_bundle']}", ""]  # fmt: skip
        lines = [f"{s['name']:<11} {s['status']:<8} {s['duration_s']:6.1f} s / {s['budget_s']:5.0f} s  "
                 f"{s.get('summary') or s.get('reason', '')}" for s in p["steps"]]  # fmt: skip
        return "\n".join(head + lines) + "\n"

    def pack(self) -> Path:
        """Write provenance.json and summary.txt, then the tarball (atomically), and copy both files to OUT."""
        text = json.dumps(self.prov, indent=2) + "\n"
        summary = self.summary()
        for folder in (self.dir, self.out):
            (folder / "provenance.json").write_text(text)
            (folder / "summary.txt").write_text(summary)
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix=".campaign-", suffix=".tmp")
        os.close(fd)
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(self.dir, arcname=TOP)
        os.replace(tmp, self.out / TARBALL)
        return self.out / TARBALL

    def finish(self) -> None:
        self.prov["finished_utc"] = _utc()
        self.prov["wall_s"] = round(time.monotonic() - self.started, 1)
        self.pack()

    def run(self) -> int:
        self.pack()  # something comes back even if the first step hangs the machine
        for i, step in enumerate(self.steps, 1):
            print(f"[{time.monotonic() - self.started:6.1f} s] step {step.name} ...", flush=True)
            record = self.run_step(i, step)
            self.prov["steps"].append(record)
            print(f"[{time.monotonic() - self.started:6.1f} s] step {step.name}: {record['status']} "
                  f"{record.get('summary') or record.get('reason', '')}", flush=True)  # fmt: skip
            self.pack()
        self.prov["complete"] = True
        self.finish()
        print(self.summary(), flush=True)
        return 0

    def interrupted(self, signum, _frame) -> None:
        if self.current is not None:
            kill_group(self.current)
        self.prov["interrupted"] = f"signal {signal.Signals(signum).name}"
        self.finish()
        print(f"campaign interrupted by {signal.Signals(signum).name}; wrote {self.out / TARBALL}", flush=True)
        raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="the folder that comes back (3 files land there)")
    ap.add_argument("--work", type=Path, help="scratch folder for the results before packing (default: a temp dir)")
    ap.add_argument("--bundle", type=Path, default=REPO_ROOT / ".gpu", help="the carried bundle (make gpu-bundle)")
    ap.add_argument("--smoke", action="store_true", help="CPU rehearsal: tiny shapes, CPU stand-ins")
    ap.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S, help="stop starting steps after this")
    ap.add_argument("--only", nargs="+", choices=[s.name for s in STEPS], help="run only these steps")
    args = ap.parse_args(argv)
    if args.budget_s <= PACK_RESERVE_S:
        ap.error(f"--budget-s must exceed {PACK_RESERVE_S} s")
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-campaign-"))
    campaign = Campaign(args.out, work, args.bundle, args.smoke, args.budget_s, args.only, argv)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, campaign.interrupted)
    return campaign.run()


if __name__ == "__main__":
    sys.exit(main())

"""What a campaign records about where and how it ran, and what the importer requires of it.

`provenance.json` (top of the tarball) holds: schema, campaign_id, mode (gpu or smoke), command, start and
end times, the GPU (name, driver, CUDA, SM count, memory, compute capability; null in smoke mode), the
software (python, torch, triton, numpy, transformers, cuda-bindings), the bundle it ran from (git sha of the
checkout that built it, whether that tree was dirty, its tree digest) and whether the tree on the GPU
machine matched that digest, and one record per step (status, exit code, budget, duration, reason).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

SCHEMA = 1
REQUIRED = ("schema", "campaign_id", "mode", "command", "started_utc", "finished_utc", "software", "bundle",
            "tree_matches_bundle", "steps", "complete")  # fmt: skip
REQUIRED_GPU = ("name", "driver", "cuda", "sm_count", "compute_capability")
REQUIRED_SOFTWARE = ("python", "torch", "triton")
REQUIRED_BUNDLE = ("git_sha", "tree_digest", "built_utc")
REQUIRED_STEP = ("name", "status", "rc", "budget_s", "duration_s")

_ENV_SNIPPET = r"""
import json, platform
import importlib.metadata as md
info = {"python": platform.python_version()}
for dist in ("torch", "triton", "numpy", "transformers", "cuda-bindings", "cuda-core", "pyzmq"):
    try:
        info[dist] = md.version(dist)  # no import: transformers alone takes seconds
    except md.PackageNotFoundError:
        info[dist] = "missing"
gpu = None
try:
    import torch
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        gpu = {"name": p.name, "sm_count": p.multi_processor_count, "compute_capability": f"{p.major}.{p.minor}",
               "mem_gib": round(p.total_memory / 2**30, 1), "cuda": str(torch.version.cuda),
               "l2_mib": round(getattr(p, "L2_cache_size", 0) / 2**20, 1)}
except Exception as exc:
    info["gpu_error"] = repr(exc)
print(json.dumps({"software": info, "gpu": gpu}))
"""


def _run(cmd: list[str], timeout_s: float = 60) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        return out.stdout if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def environment(python: str) -> tuple[dict, dict | None, str]:
    """(software, gpu or None, nvidia-smi -q text). Versions come from a child interpreter, so the runner
    itself never opens a CUDA context beside the steps."""
    raw = _run([python, "-c", _ENV_SNIPPET], timeout_s=120).strip().splitlines()
    parsed = json.loads(raw[-1]) if raw else {"software": {"error": "version probe failed"}, "gpu": None}
    gpu = parsed["gpu"]
    smi = _run(["nvidia-smi", "-q"])
    if gpu is not None:
        line = _run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,clocks.max.mem,power.limit",
                     "--format=csv,noheader"]).strip().splitlines()  # fmt: skip
        fields = [x.strip() for x in line[0].split(",")] if line else []
        gpu["driver"] = fields[0] if fields else "unknown"
        if len(fields) >= 4:
            gpu.update(max_sm_clock=fields[1], max_mem_clock=fields[2], power_limit=fields[3])
    return parsed["software"], gpu, smi


def tree_digest(root: Path, files: list[str]) -> tuple[str, list[str]]:
    """sha256 over (path, content) of `files` in order; also the files that are missing under `root`."""
    h, missing = hashlib.sha256(), []
    for rel in files:
        path = root / rel
        h.update(rel.encode() + b"\0")
        if path.is_file():
            h.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            missing.append(rel)
    return h.hexdigest(), missing


def problems(prov: dict | None) -> list[str]:
    """What makes a provenance record unfit for import (empty: fit)."""
    if not isinstance(prov, dict):
        return ["provenance.json is missing or not a JSON object"]
    out = [f"missing key {k!r}" for k in REQUIRED if k not in prov]
    if out:
        return out
    if prov["schema"] != SCHEMA:
        out.append(f"schema {prov['schema']!r}, this importer reads {SCHEMA}")
    if prov["mode"] not in ("gpu", "smoke"):
        out.append(f"mode must be gpu or smoke, got {prov['mode']!r}")
    if prov["mode"] == "gpu":
        gpu = prov.get("gpu") or {}
        out += [f"gpu.{k} missing or unknown" for k in REQUIRED_GPU if gpu.get(k) in (None, "", "unknown")]
    out += [f"software.{k} missing" for k in REQUIRED_SOFTWARE if not str(prov["software"].get(k, "")).strip()
            or str(prov["software"].get(k)).startswith("missing")]  # fmt: skip
    out += [f"bundle.{k} missing" for k in REQUIRED_BUNDLE if not prov["bundle"].get(k)]
    if not isinstance(prov["steps"], list) or not prov["steps"]:
        out.append("no step records")
    else:
        for i, step in enumerate(prov["steps"]):
            out += [f"steps[{i}].{k} missing" for k in REQUIRED_STEP if k not in step]
    return out

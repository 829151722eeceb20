"""What the real CPU experiment's steps share: its config, the two stacks' cluster configs, URLs, provenance."""

from __future__ import annotations

import copy
import datetime
import os
import subprocess
from pathlib import Path

import yaml

from experiments import common

HERE = Path(__file__).resolve().parent
SYSTEMS = ("pd", "adrenaline")


def load(quick: bool = False) -> dict:
    """config.yaml, with its `quick:` section merged (one level deep) when `quick`."""
    cfg = common.load_config(HERE)
    q = cfg.pop("quick", None) or {}
    if quick:
        for key, value in q.items():
            cfg[key] = {**cfg[key], **value} if isinstance(value, dict) and isinstance(cfg.get(key), dict) else value
    check(cfg)
    return cfg


def check(cfg: dict) -> None:
    """One-line errors for a config the experiment cannot run."""
    systems = cfg.get("systems") or []
    bad = [s for s in systems if s not in SYSTEMS]
    if not systems or bad:
        raise common.ExperimentError(f"systems must be a non-empty subset of {list(SYSTEMS)}, got {systems!r}")
    for s in systems:
        path = common.REPO_ROOT / cfg["clusters"][s]
        if not path.is_file():
            raise common.ExperimentError(f"clusters.{s}: {path} does not exist")
    wl = cfg["workload"]
    for key in ("input_len", "output_len"):
        if not isinstance(wl.get(key), int) or wl[key] < 1:
            raise common.ExperimentError(f"workload.{key} must be an integer >= 1, got {wl.get(key)!r}")
    rates = cfg.get("request_rates") or []
    if not rates or not all(isinstance(r, int | float) and r > 0 for r in rates):
        raise common.ExperimentError(f"request_rates must be numbers > 0 (req/s), got {rates!r}")
    if not float(cfg.get("point_duration_s", 0)) > 0 or not 2 <= int(cfg.get("min_requests", 0)) <= int(
            cfg.get("max_requests", 0)):
        raise common.ExperimentError("point_duration_s must be > 0 and 2 <= min_requests <= max_requests")


def num_requests(cfg: dict, rate: float) -> int:
    """Requests of one point: `point_duration_s` of arrivals at this rate, within [min_requests, max_requests]."""
    n = round(float(rate) * float(cfg["point_duration_s"]))
    return min(int(cfg["max_requests"]), max(int(cfg["min_requests"]), n))


def cluster_config(cfg: dict, system: str, run_dir: Path, decode_pool_tokens: int | None = None,
                   policy: str | None = None):
    """The system's ClusterConfig (its YAML), logs under run_dir; decode's pool and the proxy's policy replaced
    when asked (calibration: the last `--max-total-tokens` SGLang reads, and the last `--policy`, win)."""
    from adrenaline_sgl.configs import cluster

    data = yaml.safe_load((common.REPO_ROOT / cfg["clusters"][system]).read_text())
    data = copy.deepcopy(data)
    data["run_dir"] = str(run_dir)
    if decode_pool_tokens is not None:
        data["decode"]["extra_args"] = [*data["decode"].get("extra_args", []), "--max-total-tokens",
                                        str(decode_pool_tokens)]
    if policy is not None:
        data["proxy"]["extra_args"] = [*data["proxy"].get("extra_args", []), "--policy", policy]
    return cluster.from_dict(data)


def urls(running) -> dict[str, str]:
    return {"proxy": running.proxy_url, "prefill": running.spec("prefill-0").url,
            "decode": running.spec("decode-0").url}


def model_dir(cfg: dict) -> str:
    """The served checkpoint (the pd stack's `model`), converted on first use."""
    from adrenaline_sgl.configs import cluster

    data = yaml.safe_load((common.REPO_ROOT / cfg["clusters"][cfg["systems"][0]]).read_text())
    return cluster.resolve_model(data["model"])


def load_avg() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=common.REPO_ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=common.REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return f"{sha}{' (uncommitted changes)' if dirty else ''}" or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs"


def provenance(module: str, argv: list[str]) -> dict:
    return {"machine": machine(), "command": " ".join(["python -m", module, *argv]),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"), "git_sha": git_sha(),
            "load_avg_start": load_avg()}

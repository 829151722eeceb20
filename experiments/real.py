"""MODE=real: the same experiment against live servers, through SGLang's benchmark tool.

Interface (documented in experiments/README.md):
- select it with `MODE=real make reproduce-fig5` (or `make reproduce-fig5 ARGS="--mode real"`);
- the servers are the proxies of two stacks started by the SGLang integration (`adrenaline_sgl.launch`):
  a PD baseline (offload never) at `$ADRENALINE_PD_URL` (default http://127.0.0.1:30040) and Adrenaline at
  `$ADRENALINE_URL` (default http://127.0.0.1:30050); both must serve `$ADRENALINE_MODEL_PATH` (the model
  directory the benchmark's tokenizer is read from);
- per (system, rate) it runs `python -m sglang.benchmark.serving --backend sglang --base-url URL
  --dataset-name sharegpt|random-ids --num-prompts N --request-rate R --seed S --output-file F` (through
  `adrenaline_sgl.support.run_with_stub`, which makes torchvision importable on CPU machines) and maps
  its JSON line to the same CSV columns as the simulator (TTFT, mean and P99 TPOT, output throughput).
Before anything runs, each URL must answer GET /health within 3 s, else one line says which is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from .common import ExperimentError

DEFAULT_URLS = {"pd": "http://127.0.0.1:30040", "adrenaline": "http://127.0.0.1:30050"}
URL_ENV = {"pd": "ADRENALINE_PD_URL", "adrenaline": "ADRENALINE_URL"}
HEALTH_TIMEOUT_S = 3.0
BENCH_TIMEOUT_S = 3600.0


def server_url(system: str) -> str:
    if system not in URL_ENV:
        raise ExperimentError(f"MODE=real has no server for system {system!r}; valid: {', '.join(URL_ENV)}")
    return os.environ.get(URL_ENV[system]) or DEFAULT_URLS[system]


def check_servers(systems: list[str], timeout_s: float = HEALTH_TIMEOUT_S) -> dict[str, str]:
    """{system: url} after checking every server answers /health; one-line error naming the first that does not."""
    urls = {}
    for system in systems:
        url = server_url(system)
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=timeout_s) as resp:
                if resp.status != 200:
                    raise OSError(f"HTTP {resp.status}")
        except (OSError, urllib.error.URLError, ValueError) as err:
            reason = getattr(err, "reason", err)
            raise ExperimentError(
                f"MODE=real: no {system} server reachable at {url} ({reason}); start the stack with "
                f"`python -m adrenaline_sgl.launch --config <cluster.yaml>` or set {URL_ENV[system]}"
            ) from None
        urls[system] = url
    return urls


def model_path() -> str:
    """The served model's directory ($ADRENALINE_MODEL_PATH): the benchmark's tokenizer, and the CSVs' model."""
    model = os.environ.get("ADRENALINE_MODEL_PATH")
    if not model:
        raise ExperimentError("MODE=real needs ADRENALINE_MODEL_PATH (the served model's directory, for the tokenizer)")
    return model


def bench_command(url: str, workload: str, rate: float, num_prompts: int, seed: int, out_file: Path,
                  dataset_path: str | None = None) -> list[str]:
    """The sglang.benchmark.serving command line for one (server, rate) point."""
    model = model_path()
    # run_with_stub: the benchmark imports sglang, which needs torchvision importable (a stand-in on CPU).
    cmd = [sys.executable, "-m", "adrenaline_sgl.support.run_with_stub", "sglang.benchmark.serving",
           "--backend", "sglang", "--base-url", url,
           "--model", model, "--tokenizer", model, "--num-prompts", str(num_prompts),
           "--request-rate", str(rate), "--seed", str(seed), "--output-file", str(out_file)]  # fmt: skip
    if workload == "sharegpt" and dataset_path:
        cmd += ["--dataset-name", "sharegpt", "--dataset-path", dataset_path]
    else:  # no download allowed: random token ids with the mean lengths of the simulator's default sample
        from adrenaline_sgl.sim.workloads import mean_lengths

        prompt, output = mean_lengths(workload)
        cmd += ["--dataset-name", "random-ids", "--random-input-len", str(round(prompt)),
                "--random-output-len", str(round(output)), "--random-range-ratio", "0.0"]  # fmt: skip
    return cmd


def parse_bench_line(line: str) -> dict[str, float]:
    """The simulator's e2e columns from one JSON line of bench_serving's --output-file."""
    try:
        d = json.loads(line)
        return {
            "mean_ttft_s": float(d["mean_ttft_ms"]) / 1e3,
            "mean_tpot_ms": float(d["mean_tpot_ms"]),
            "p99_tpot_ms": float(d["p99_tpot_ms"]),
            "decode_throughput_tok_s": float(d["output_throughput"]),
        }
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise ExperimentError(f"bench_serving output is not what MODE=real expects ({err})") from None


def run_bench(cmd: list[str], out_file: Path) -> dict[str, float]:
    """Run one benchmark point (with a timeout) and parse its last JSON line."""
    try:
        done = subprocess.run(cmd, timeout=BENCH_TIMEOUT_S, stdout=subprocess.PIPE, text=True)
    except subprocess.TimeoutExpired:
        raise ExperimentError(f"bench_serving did not finish within {BENCH_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:  # it explains itself on stdout (e.g. "Server ... is not ready"): keep its last line
        last = next((ln.strip() for ln in reversed(done.stdout.splitlines()) if ln.strip()), "no output")
        raise ExperimentError(f"bench_serving failed with exit status {done.returncode}: {last}")
    lines = [ln for ln in out_file.read_text().splitlines() if ln.strip()]
    if not lines:
        raise ExperimentError(f"bench_serving wrote nothing to {out_file}")
    return parse_bench_line(lines[-1])


def unsupported(fig: str) -> ExperimentError:
    return ExperimentError(
        f"MODE=real is not available for {fig}: it needs GPU utilization counters; MODE=real supports fig5"
    )

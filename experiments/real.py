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

Exact-length points with recorded arrivals (experiments/real_cpu): `fixed_bench_command` runs the same tool with
`random-ids` at `--random-range-ratio 1.0` and `--tokenize-prompt` (every prompt sent as exactly that many token
ids, every output exactly the given length: bench_serving sends `ignore_eos` by default) and `--output-details`
(per-request TTFT and inter-token latencies), through this module's own entry point: `python -m experiments.real
--record-arrivals FILE <bench_serving args>` runs `sglang.benchmark.serving` unchanged except that the times its
Poisson generator (`get_request`) releases each request are written to FILE (JSON list, seconds from the first), so
a simulator can replay exactly the arrivals the servers saw. `parse_bench_details` turns the output line into
per-request records (`adrenaline_sgl.sim.records.RequestRecord`, the simulator's own) and checks that every request
completed with its exact output length.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
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
    elif workload == "sharegpt_multiturn" and dataset_path:  # bench_serving samples a file's first turns only
        raise ExperimentError("MODE=real: bench_serving sends a ShareGPT file's first turns, not every answer: "
                              "use --workload sharegpt with --dataset-path")
    else:  # no download allowed: random token ids with the mean lengths of the simulator's default sample
        from adrenaline_sgl.sim.workloads import mean_lengths

        prompt, output = mean_lengths(workload)
        cmd += ["--dataset-name", "random-ids", "--random-input-len", str(round(prompt)),
                "--random-output-len", str(round(output)), "--random-range-ratio", "0.0"]  # fmt: skip
    return cmd


def fixed_bench_command(url: str, input_len: int, output_len: int, rate: float, num_prompts: int, seed: int,
                        out_file: Path, arrivals_file: Path) -> list[str]:
    """One exact-length point (module doc): random-ids of `input_len` prompt and `output_len` output tokens,
    Poisson `rate` req/s, per-request details in `out_file` and the release times in `arrivals_file`."""
    for name, value in (("input_len", input_len), ("output_len", output_len), ("num_prompts", num_prompts)):
        if not isinstance(value, int) or value < 1:
            raise ExperimentError(f"{name}={value!r} must be an integer >= 1")
    if not rate > 0:
        raise ExperimentError(f"request rate {rate!r} must be > 0 (requests/s)")
    model = model_path()
    return [sys.executable, "-m", "experiments.real", "--record-arrivals", str(arrivals_file),
            "--backend", "sglang", "--base-url", url, "--model", model, "--tokenizer", model,
            "--num-prompts", str(num_prompts), "--request-rate", str(rate), "--seed", str(seed),
            "--output-file", str(out_file), "--output-details", "--disable-tqdm", "--tokenize-prompt",
            "--dataset-name", "random-ids", "--random-input-len", str(input_len),
            "--random-output-len", str(output_len), "--random-range-ratio", "1.0"]  # fmt: skip


@dataclass(frozen=True)
class BenchPoint:
    """One exact-length point as measured: bench_serving's summary and the per-request records."""

    summary: dict  # parse_bench_line's columns plus completed, duration_s, p99_ttft_s, total_throughput_tok_s
    requests: list  # RequestRecord per request, in send order (times in s from the first arrival)
    itls_s: list  # per request: its inter-token (inter-chunk) latencies as the client saw them, s


def token_times(arrival_s: float, ttft_s: float, itls_s: list[float], tokens: int) -> list[float]:
    """Client-side times of a request's output tokens: the first at arrival + TTFT, then one per inter-token
    latency; when the stream merged tokens into fewer chunks (len(itls) != tokens - 1), spread evenly
    between the first token and the last chunk."""
    first = arrival_s + ttft_s
    if len(itls_s) == tokens - 1:
        out, t = [first], first
        for gap in itls_s:
            t += gap
            out.append(t)
        return out
    last = first + sum(itls_s)
    return [first + (last - first) * i / max(tokens - 1, 1) for i in range(tokens)]


def parse_bench_details(line: str, arrivals_s: list[float], input_len: int, output_len: int) -> BenchPoint:
    """Per-request records of one `fixed_bench_command` point. Every request must have completed with exactly
    `output_len` tokens (else ExperimentError naming how many did not): a point with a lost or short request
    is not a measurement of this workload."""
    from adrenaline_sgl.sim.records import RequestRecord

    summary = parse_bench_line(line)
    d = json.loads(line)
    try:
        ttfts, itls, outs, errors = d["ttfts"], d["itls"], d["output_lens"], d["errors"]
    except KeyError as err:
        raise ExperimentError(f"bench_serving output has no per-request details ({err}); "
                              "run it with --output-details") from None
    n = len(ttfts)
    if not (len(itls) == len(outs) == len(errors) == len(arrivals_s) == n):
        raise ExperimentError(f"bench_serving details disagree: {n} TTFTs, {len(itls)} ITL lists, {len(outs)} "
                              f"output lengths, {len(errors)} errors, {len(arrivals_s)} recorded arrivals")
    failed = [i for i in range(n) if errors[i] or outs[i] != output_len]
    if failed or int(d.get("completed", -1)) != n:
        first = failed[0] if failed else 0
        raise ExperimentError(f"{len(failed)} of {n} requests did not complete with {output_len} output tokens "
                              f"(first: #{first}, {outs[first]} tokens, error {errors[first]!r})")
    records = []
    for i in range(n):
        arrival, ttft = float(arrivals_s[i]), float(ttfts[i])
        rec = RequestRecord(i, arrival, input_len, output_len)
        rec.first_token_s = arrival + ttft
        rec.finish_s = arrival + ttft + sum(float(x) for x in itls[i])
        rec.tokens_out = output_len
        records.append(rec)
    summary.update(completed=n, duration_s=float(d["duration"]), p99_ttft_s=float(d["p99_ttft_ms"]) / 1e3,
                   total_throughput_tok_s=float(d["total_throughput"]))
    return BenchPoint(summary, records, [[float(x) for x in gaps] for gaps in itls])


def steady_client_throughput(point: BenchPoint, lo: float = 0.1) -> float:
    """Output tokens/s the client received inside the steady-state window (arrivals of the requests at
    quantiles lo..100%, `adrenaline_sgl.sim.metrics.steady_window`, the drain after the last arrival excluded):
    figure 5's steady-state throughput, counted from each token's arrival at the client."""
    from adrenaline_sgl.sim import metrics

    start, end = metrics.steady_window(point.requests, lo, 1.0)
    count = 0
    for rec, gaps in zip(point.requests, point.itls_s):
        times = token_times(rec.arrival_s, rec.first_token_s - rec.arrival_s, gaps, rec.tokens_out)
        count += sum(1 for t in times if start <= t < end)
    return count / (end - start)


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


def read_arrivals(path: Path) -> list[float]:
    """The release times `--record-arrivals` wrote (seconds from the first request)."""
    try:
        times = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ExperimentError(f"no recorded arrivals in {path} ({err})") from None
    if not isinstance(times, list) or not all(isinstance(t, int | float) for t in times):
        raise ExperimentError(f"{path}: recorded arrivals must be a JSON list of seconds")
    return [float(t) for t in times]


def _run_recording(arrivals_file: str, bench_argv: list[str]) -> None:
    """`sglang.benchmark.serving` as its CLI runs it, with the release time of every request recorded."""
    from adrenaline_sgl.support import torchvision_stub

    torchvision_stub.install()
    from sglang.benchmark import serving

    released: list[float] = []
    original = serving.get_request

    async def recording(*args, **kwargs):
        async for request in original(*args, **kwargs):
            released.append(time.perf_counter())
            yield request

    serving.get_request = recording
    sys.argv = ["sglang.benchmark.serving", *bench_argv]
    try:
        serving.cli_main()
    finally:
        t0 = released[0] if released else 0.0
        Path(arrivals_file).write_text(json.dumps([round(t - t0, 6) for t in released]) + "\n")


def unsupported(fig: str, mode: str = "real") -> ExperimentError:
    if mode == "emulated":
        return ExperimentError(f"MODE=emulated is not available for {fig} yet; MODE=emulated supports fig5")
    return ExperimentError(
        f"MODE=real is not available for {fig}: it needs GPU utilization counters; MODE=real supports fig5"
    )


if __name__ == "__main__":  # python -m experiments.real --record-arrivals FILE <bench_serving args>
    if len(sys.argv) < 3 or sys.argv[1] != "--record-arrivals":
        sys.exit("usage: python -m experiments.real --record-arrivals FILE <sglang.benchmark.serving args>")
    _run_recording(sys.argv[2], sys.argv[3:])

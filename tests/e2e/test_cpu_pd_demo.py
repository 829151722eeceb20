"""Real SGLang prefill + decode servers (SmolLM2-135M on CPU, KV over Mooncake TCP on loopback) behind
SGLang's mini load balancer, started by our launcher: `make demo-check`, and `make demo` stopped by
Ctrl-C. Each test starts the whole stack (1.5 to 3 minutes on 2 shared cores)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from adrenaline_sgl.configs.commands import port_is_free

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CPU_DEMO = ROOT / "adrenaline_sgl" / "configs" / "cpu_demo_pd.yaml"  # stock PD, no plugin
LAUNCH_TIMEOUT_S = 900


def _launcher(tmp_path: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "adrenaline_sgl.launch", "--config", str(CPU_DEMO), "--run-dir", str(tmp_path),
           *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop_launcher(proc: subprocess.Popen) -> None:
    """If a test fails mid-way: SIGTERM lets the launcher stop its groups; SIGKILL as the last resort."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def _run_record(tmp_path: Path) -> tuple[Path, dict]:
    (folder,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    return folder, json.loads((folder / "run.json").read_text())


def _strays(support_dir: Path) -> list[int]:
    """Live processes that inherited the run's CPU support dir on PYTHONPATH (every process we started)."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and str(support_dir) in proc.environ().get("PYTHONPATH", ""):
                found.append(proc.info["pid"])
        except psutil.Error:
            continue
    return found


def _assert_nothing_left(folder: Path, record: dict) -> None:
    assert record["leftovers"] == []
    assert _strays(folder.resolve() / "cpu_support") == []
    for spec in record["processes"]:
        for port in spec["ports"]:
            assert port_is_free("127.0.0.1", port), f"{spec['name']} port {port} still bound"


def _assert_real_pd(folder: Path) -> None:
    prefill, decode = ((folder / f"{r}-0.log").read_text(errors="replace") for r in ("prefill", "decode"))
    for log in (prefill, decode):  # the plugin applied the CPU fixes inside the servers' processes
        assert "adrenaline_sgl CPU fixes applied" in log
        assert "listening on 127.0.0.1:" in log  # Mooncake TCP on loopback
    assert re.search(r"Prefill batch, #new-seq: 1, #new-token: [2-9]\d", prefill)  # the chat prompt
    assert "Prefill batch" not in decode  # decode got the KV from prefill, it computed none


def test_demo_check_answers_paris_and_leaves_nothing(tmp_path):
    t0 = time.monotonic()
    proc = _launcher(tmp_path, "--check")
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        _stop_launcher(proc)
    wall_s = time.monotonic() - t0
    assert proc.returncode == 0, out[-4000:]
    assert "PASS" in out and "stopped everything, ports freed" in out
    folder, record = _run_record(tmp_path)
    assert "Paris" in record["check_answer"]
    _assert_nothing_left(folder, record)
    _assert_real_pd(folder)
    print(f"demo-check wall {wall_s:.0f} s; healthy after {record['all_healthy_s']} s; "
          f"answer {record['check_answer']!r} in {record['check_request_s']} s")


def test_demo_serves_until_ctrl_c_then_stops_everything(tmp_path):
    proc = _launcher(tmp_path)
    try:
        url, lines = None, []
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while url is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if m := re.search(r"serving at (http://127\.0\.0\.1:\d+)", line):
                url = m.group(1)
        assert url, "".join(lines)[-4000:]
        reply = requests.post(f"{url}/generate", json={
            "text": "The capital of France is",
            "sampling_params": {"temperature": 0, "max_new_tokens": 8, "ignore_eos": True}}, timeout=300)
        assert reply.status_code == 200, reply.text
        assert reply.json()["meta_info"]["completion_tokens"] == 8 and reply.json()["text"].strip(), reply.text
        proc.send_signal(signal.SIGINT)  # what Ctrl-C on `make demo` delivers
        out, _ = proc.communicate(timeout=120)
    finally:
        _stop_launcher(proc)
    assert proc.returncode == 0, ("".join(lines) + out)[-4000:]
    assert "KeyboardInterrupt" in out and "stopped everything, ports freed" in out
    folder, record = _run_record(tmp_path)
    _assert_nothing_left(folder, record)


def test_a_server_that_cannot_start_fails_fast_with_its_log_and_leaves_nothing(tmp_path):
    import yaml

    data = yaml.safe_load(CPU_DEMO.read_text())
    data["prefill"] = {"extra_args": ["--no-such-sglang-flag"]}
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "adrenaline_sgl.launch", "--config", str(bad), "--run-dir", str(runs), "--check"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=LAUNCH_TIMEOUT_S)
    finally:
        _stop_launcher(proc)
    assert proc.returncode == 1, out[-4000:]
    assert "prefill-0 exited with code" in out and "before it was healthy" in out
    assert "--no-such-sglang-flag" in out  # the tail of SGLang's own error, from prefill-0.log
    folder, record = _run_record(runs)
    _assert_nothing_left(folder, record)

"""`python -m adrenaline_sgl.proxy` starts, binds 127.0.0.1, answers, and stops on SIGTERM."""

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.timeout(60)  # readline below has no timeout of its own
def test_cli_serves_and_stops_on_sigterm():
    port, dead = _free_port(), _free_port()
    cmd = [sys.executable, "-m", "adrenaline_sgl.proxy", "--prefill", f"http://127.0.0.1:{dead}", "8998",
           "--decode", f"http://127.0.0.1:{dead}", "--port", str(port), "--policy", "always"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # the proxy prints one line once it listens
        assert f"listening on http://127.0.0.1:{port}" in line, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as resp:
            assert resp.status == 200
        req = urllib.request.Request(f"http://127.0.0.1:{port}/generate", data=b"[]", method="POST")
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError("a malformed request was accepted")
        except urllib.error.HTTPError as err:
            assert err.code == 400 and "error" in json.loads(err.read())
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)

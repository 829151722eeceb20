"""Process-group handling of the launcher with tiny fake servers (plain Python HTTP, no SGLang):
health wait, failure with the log tail, a stop that leaves no process and no bound port, and CPU pinning
of the whole process tree (read back from /proc)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import psutil
import pytest

from adrenaline_sgl.configs.commands import ProcessSpec, port_is_free
from adrenaline_sgl.configs.cpus import format_cpu_list
from adrenaline_sgl.launch import LaunchError, ProcessGroupSet

# A server that answers /health, with a child process in its group (like SGLang's scheduler).
# argv: port, mode ("ok" | "crash" | "stubborn": ignores SIGTERM | "bindfail": uvicorn's bind error, stays up).
FAKE_SERVER = r"""
import http.server, signal, subprocess, sys
port, mode = int(sys.argv[1]), sys.argv[2]
if mode == "crash":
    print("fake server: exploding on purpose", flush=True)
    sys.exit(3)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "bindfail":  # as SGLang's HTTP server does when its port is taken: the process does not exit
    print(f"ERROR:    [Errno 98] error while attempting to bind on address ('127.0.0.1', {port}): "
          "address already in use", flush=True)
    signal.pause()
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
print("child", child.pid, flush=True)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec(tmp_path, name, mode):
    script = tmp_path / "fake_server.py"
    script.write_text(FAKE_SERVER)
    port = _free_port()
    return ProcessSpec(name, "prefill", "127.0.0.1", (sys.executable, str(script), str(port), mode),
                       ports=(port,), port=port)


def _children_of_group(pgid):
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p.pid)
        except (OSError, psutil.Error):
            continue
    return found


def test_healthy_then_stop_leaves_nothing(tmp_path):
    procs = ProcessGroupSet(tmp_path, stop_timeout_s=5)
    specs = [_spec(tmp_path, "a", "ok"), _spec(tmp_path, "b", "ok")]
    try:
        procs.start(specs)
        assert procs.wait_healthy(specs, timeout_s=30) < 30
        leaders = [popen.pid for _, popen in procs.running]
        assert all(len(_children_of_group(pid)) == 2 for pid in leaders)  # server + its child
    finally:
        leftovers = procs.stop_all()
    assert leftovers == []
    assert all(_children_of_group(pid) == [] for pid in leaders)
    assert all(port_is_free("127.0.0.1", s.port) for s in specs)


def test_a_crash_before_health_reports_the_log_tail(tmp_path):
    procs = ProcessGroupSet(tmp_path, stop_timeout_s=5)
    spec = _spec(tmp_path, "bad", "crash")
    try:
        procs.start([spec])
        expected = r"(?s)bad exited with code 3 before it was healthy.*exploding on purpose"
        with pytest.raises(LaunchError, match=expected):
            procs.wait_healthy([spec], timeout_s=30)
    finally:
        assert procs.stop_all() == []


def test_a_server_that_could_not_bind_its_port_fails_at_once_not_at_the_startup_timeout(tmp_path):
    procs = ProcessGroupSet(tmp_path, stop_timeout_s=5)
    spec = _spec(tmp_path, "taken", "bindfail")
    try:
        procs.start([spec])
        t0 = time.monotonic()
        with pytest.raises(LaunchError, match=r"taken could not bind its port \(.*address already in use"):
            procs.wait_healthy([spec], timeout_s=120)
        assert time.monotonic() - t0 < 30  # before: the whole startup timeout (600 s in the e2e flake)
    finally:
        assert procs.stop_all() == []


def test_a_process_ignoring_sigterm_is_killed_with_its_group(tmp_path):
    procs = ProcessGroupSet(tmp_path, stop_timeout_s=1)
    spec = _spec(tmp_path, "stubborn", "stubborn")
    procs.start([spec])
    procs.wait_healthy([spec], timeout_s=30)
    leader = procs.running[0][1].pid
    t0 = time.monotonic()
    assert procs.stop_all() == []
    assert time.monotonic() - t0 < 15
    assert _children_of_group(leader) == []
    assert port_is_free("127.0.0.1", spec.port)


def _allowed(pid: int) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith("Cpus_allowed_list"))


def test_started_process_tree_is_pinned_with_its_thread_env(tmp_path):
    """The launcher's own start path (ProcessGroupSet): the server and the child it spawns (as SGLang spawns
    its scheduler) run on the spec's CPU only, with the thread variables in their environment."""
    cpu = max(os.sched_getaffinity(0))
    base = _spec(tmp_path, "pinned", "ok")
    spec = ProcessSpec(base.name, base.role, base.host, base.argv, {"OMP_NUM_THREADS": "1"}, base.ports, base.port,
                       cpus=(cpu,))
    procs = ProcessGroupSet(tmp_path, stop_timeout_s=5)
    try:
        procs.start([spec])
        procs.wait_healthy([spec], timeout_s=30)
        leader = procs.running[0][1].pid
        children = subprocess.run(["pgrep", "-P", str(leader)], capture_output=True, text=True).stdout.split()
        assert children, "the fake server's child did not start"
        for pid in [leader, *map(int, children)]:
            assert _allowed(pid) == str(cpu)
            environ = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
            assert b"OMP_NUM_THREADS=1" in environ
    finally:
        assert procs.stop_all() == []
    assert _allowed(os.getpid()) == format_cpu_list(os.sched_getaffinity(0))  # the launcher itself: unchanged


def test_a_prefill_restarts_only_after_decode_instances_have_dropped_the_dead_one(tmp_path, monkeypatch):
    """SGLang's decode heartbeat drops a prefill after 2 missed 5 s polls; a prefill back sooner is taken for the
    old process (the first request after a quick restart hung 60 s in make e2e), so its restart waits that out."""
    from adrenaline_sgl import launch

    assert launch.prefill_forget_s({}) == 15.0
    assert launch.prefill_forget_s({"SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL": "3",
                                    "SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE": "1"}) == 6.0  # fmt: skip
    slept = []
    monkeypatch.setattr(launch, "prefill_forget_s", lambda env=None: 2.0)
    real_sleep = time.sleep
    monkeypatch.setattr(launch.time, "sleep", lambda s: slept.append(s) or real_sleep(min(s, 0.2)))
    procs = ProcessGroupSet(tmp_path, stop_timeout_s=5)
    spec = _spec(tmp_path, "prefill-0", "ok")
    try:
        procs.start([spec])
        procs.wait_healthy([spec], timeout_s=30)
        procs.restart(spec, startup_timeout_s=30)
    finally:
        assert procs.stop_all() == []
    assert any(1.0 < s <= 2.0 for s in slept)  # the rest of the 2 s after the kill

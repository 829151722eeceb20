"""Issue 18: the launcher supervises what it started. One process death does not take the stack down: the dead
server (or proxy) is started again on the same ports (`restart`, at most `restart_limit` times) or marked down
while the rest keep serving; only a proxy down for good stops the launcher. Fake servers (plain Python HTTP) stand
in for SGLang and the proxy, as in test_launch_run.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import threading
import time

import pytest
import requests

from adrenaline_sgl import launch
from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import ProcessSpec

# argv: port. Answers /health (200) and anything else 404; prints one line naming an error when it starts.
FAKE = r"""
import http.server, sys
port = int(sys.argv[1])
print("RuntimeError: a line a crash would leave", flush=True)
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


@pytest.fixture
def fake_plan(tmp_path, monkeypatch):
    script = tmp_path / "fake.py"
    script.write_text(FAKE)

    def plan(cfg, model_dir, ports, python, support_dir, bind_shim=None):
        specs = []
        for name, role in (("prefill-0", "prefill"), ("decode-0", "decode"), ("proxy", "proxy")):
            port = _free_port()
            specs.append(ProcessSpec(name, role, "127.0.0.1", (sys.executable, str(script), str(port)), ports=(port,),
                                     port=port))  # fmt: skip
        return specs

    monkeypatch.setattr(launch, "build_plan", plan)
    monkeypatch.setattr(cluster, "resolve_model", lambda model: model)
    return tmp_path


def _kill(running, name: str) -> int:
    pid = running.pid(name)
    os.killpg(pid, signal.SIGKILL)
    popen = next(p for s, p in running.procs.running if s.name == name)
    popen.wait(timeout=10)
    return pid


def _healthy(running, name: str) -> bool:
    return _up(running.spec(name).health_url)


def _health_urls(procs) -> dict[str, str]:
    return {spec.name: spec.health_url for spec, _ in list(procs.running)}


def test_a_dead_server_is_restarted_on_its_ports_and_the_rest_keep_serving(fake_plan, capsys):
    cfg = cluster.from_dict({"model": "m", "stop_timeout_s": 5, "restart_limit": 1})
    assert cfg.restart  # on by default
    with launch.start_cluster(cfg, run_dir=fake_plan / "runs") as running:
        proxy_pid = running.pid("proxy")
        old = _kill(running, "decode-0")
        assert running.procs.supervise(cfg.restart, cfg.restart_limit, 30) == ["decode-0"]
        assert running.pid("decode-0") != old and _healthy(running, "decode-0")  # same port, new process
        assert running.pid("proxy") == proxy_pid and _healthy(running, "proxy") and _healthy(running, "prefill-0")
        assert (running.folder / "decode-0.log.1").exists()  # the dead one's log is kept
        _kill(running, "decode-0")  # a second death: its one restart is spent, it stays down
        assert running.procs.supervise(cfg.restart, cfg.restart_limit, 30) == ["decode-0"]
        assert running.procs.down == {"decode-0"} and _healthy(running, "proxy")
        assert running.procs.supervise(cfg.restart, cfg.restart_limit, 30) == []  # down is not seen again
        proxy_old = _kill(running, "proxy")  # the proxy too is restarted
        running.procs.supervise(cfg.restart, cfg.restart_limit, 30)
        assert running.pid("proxy") != proxy_old and _healthy(running, "proxy")
    out = capsys.readouterr().out
    assert "decode-0 exited with code -9 while serving: RuntimeError: a line a crash would leave" in out
    assert "restarted decode-0" in out and "decode-0 is down (restarted 1 times already)" in out


def test_without_restart_a_dead_server_is_marked_down_and_a_dead_proxy_stops_the_launcher(fake_plan, capsys):
    cfg = cluster.from_dict({"model": "m", "stop_timeout_s": 5, "restart": False})
    with launch.start_cluster(cfg, run_dir=fake_plan / "runs") as running:
        _kill(running, "prefill-0")
        running.procs.supervise(cfg.restart, cfg.restart_limit, 30)
        assert running.procs.down == {"prefill-0"} and _healthy(running, "proxy") and _healthy(running, "decode-0")
        _kill(running, "proxy")
        with pytest.raises(launch.LaunchError, match="proxy is down .restart: false.: nothing serves requests"):
            running.procs.supervise(cfg.restart, cfg.restart_limit, 30)
    assert "prefill-0 is down (restart: false); the proxy routes around it" in capsys.readouterr().out


def test_run_serves_on_after_a_server_dies_and_records_the_restart(fake_plan, capsys, monkeypatch):
    """`launch.run` (the CLI path): before issue 18 a server's death stopped everything, proxy included
    (`launch: FAILED: prefill-0 exited with code -9 while serving`)."""
    cfg = cluster.from_dict({"model": "m", "stop_timeout_s": 5})
    seen: dict = {}
    original_start, original_supervise = launch.ProcessGroupSet.start, launch.ProcessGroupSet.supervise

    def start(self, specs):
        seen["procs"] = self
        original_start(self, specs)

    def supervise(self, *args):
        dead = original_supervise(self, *args)
        seen.setdefault("supervised", []).extend(dead)
        return dead

    monkeypatch.setattr(launch.ProcessGroupSet, "start", start)
    monkeypatch.setattr(launch.ProcessGroupSet, "supervise", supervise)

    def chaos():  # another thread: once all serve, kill prefill, wait for its restart, then SIGTERM the launcher
        deadline = time.monotonic() + 60

        def wait(predicate):
            while not predicate() and time.monotonic() < deadline:
                time.sleep(0.2)

        wait(lambda: "supervised" in seen)  # all healthy, the launcher supervises
        procs = seen["procs"]
        seen["old"] = procs.started["prefill-0"]
        os.killpg(seen["old"], signal.SIGKILL)
        wait(lambda: seen.get("supervised") == ["prefill-0"])  # one look saw it dead and restarted it
        seen["proxy_up"] = _up(_health_urls(procs)["proxy"])
        seen["new"] = procs.started["prefill-0"]
        os.kill(os.getpid(), signal.SIGTERM)

    worker = threading.Thread(target=chaos, daemon=True)
    worker.start()
    assert launch.run(cfg, check=False, run_dir=str(fake_plan / "runs")) == 0
    worker.join(timeout=10)
    assert seen["proxy_up"] and seen["new"] != seen["old"], seen
    out = capsys.readouterr().out
    assert "restarted prefill-0" in out and "stopped everything, ports freed" in out
    (folder,) = (fake_plan / "runs").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["restarts"] == {"prefill-0": 1} and record["down"] == [] and record["leftovers"] == []


def _up(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.RequestException:
        return False

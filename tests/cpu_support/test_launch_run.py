"""`launch.run(check=True)` end to end with fake servers (plain Python HTTP standing in for SGLang and the
router): exit codes, messages and run.json for a right answer, a wrong answer and an HTTP error."""

from __future__ import annotations

import json
import socket
import sys

import pytest

from adrenaline_sgl import launch
from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import ProcessSpec, port_is_free

# argv: port, answer for /v1/chat/completions ("HTTP500" answers an error).
FAKE = r"""
import http.server, json, sys
port, answer = int(sys.argv[1]), sys.argv[2]
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        assert body["temperature"] == 0.0 and body["messages"][0]["content"].startswith("What is the capital")
        status = 500 if answer == "HTTP500" else 200
        payload = json.dumps({"choices": [{"message": {"content": answer}}]}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def fake_cluster(tmp_path, monkeypatch):
    """Make launch.run start three fake servers; returns a setter for the proxy's answer."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    answer = {"text": "The capital of France is Paris."}

    def plan(cfg, model_dir, ports, python, support_dir, bind_shim=None):
        specs = []
        for name, role in (("prefill-0", "prefill"), ("decode-0", "decode"), ("proxy", "proxy")):
            port = _free_port()
            text = answer["text"] if role == "proxy" else "unused"
            specs.append(ProcessSpec(name, role, "127.0.0.1", (sys.executable, str(script), str(port), text),
                                     ports=(port,), port=port))
        return specs

    monkeypatch.setattr(launch, "build_plan", plan)
    monkeypatch.setattr(cluster, "resolve_model", lambda model: model)
    return answer


def _run(tmp_path, capsys):
    cfg = cluster.from_dict({"model": "m", "stop_timeout_s": 5})
    code = launch.run(cfg, check=True, run_dir=str(tmp_path / "runs"))
    (folder,) = (tmp_path / "runs").iterdir()
    record = json.loads((folder / "run.json").read_text())
    assert record["leftovers"] == []
    assert all(port_is_free("127.0.0.1", port) for p in record["processes"] for port in p["ports"])
    return code, capsys.readouterr(), record


def test_right_answer_exits_0(tmp_path, capsys, fake_cluster):
    code, out, record = _run(tmp_path, capsys)
    assert code == 0
    assert "PASS" in out.out and "stopped everything, ports freed" in out.out
    assert record["check_answer"] == "The capital of France is Paris."
    assert set(record["group_leader_pids"]) == {"prefill-0", "decode-0", "proxy"}


def test_wrong_answer_exits_1_and_says_what_was_expected(tmp_path, capsys, fake_cluster):
    fake_cluster["text"] = "The capital of France is Lyon."
    code, out, record = _run(tmp_path, capsys)
    assert code == 1
    assert "FAIL, expected 'Paris'" in out.out and "Lyon" in out.out


def test_http_error_exits_1_with_the_status(tmp_path, capsys, fake_cluster):
    fake_cluster["text"] = "HTTP500"
    code, out, record = _run(tmp_path, capsys)
    assert code == 1
    assert "answered HTTP 500" in out.err

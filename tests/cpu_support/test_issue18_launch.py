"""Issue 18, defect 12 (the smaller ones): the cluster config names a badly typed field, the launcher prints
where the metrics are, and the README says what the demo does.

The launcher runs with fake servers (plain Python HTTP standing in for SGLang and the proxy), as
test_launch_run.py does, but with the real ports `assign_ports` picked."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from adrenaline_sgl import launch
from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import ProcessSpec

ROOT = Path(__file__).resolve().parents[2]

# argv: port, then anything (ignored). Answers /health and the check question with Paris.
FAKE = r"""
import http.server, json, sys
port = int(sys.argv[1])
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        payload = json.dumps({"choices": [{"message": {"content": "Paris"}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
    def log_message(self, *a):
        pass
http.server.HTTPServer(("127.0.0.1", port), H).serve_forever()
"""


def test_defect12_a_badly_typed_startup_timeout_names_the_field(tmp_path):
    """Defect 12: `startup_timeout_s: "ten"` failed with "'<=' not supported between instances of 'int' and
    'str'", naming neither the field nor the expected type."""
    path = tmp_path / "bad.yaml"
    path.write_text('model: smollm2:bfloat16\nstartup_timeout_s: "ten"\n')
    with pytest.raises(ValueError, match="startup_timeout_s"):
        cluster.load(path)


def test_defect12_the_launcher_prints_the_metrics_address(tmp_path, capsys, monkeypatch):
    """Defect 12: the launcher printed the proxy's URL only; `/metrics` there is 404 (the metrics are on the
    proxy's Prometheus port), so a user could not find them. The printed address must be where they are."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    seen = {}

    def plan(cfg, model_dir, ports, python, support_dir, bind_shim=None):
        seen["metrics_port"], seen["proxy_port"] = ports.prometheus, ports.proxy
        specs = []
        for name, role, port in (("prefill-0", "prefill", ports.prefill[0]), ("decode-0", "decode", ports.decode[0]),
                                 ("proxy", "proxy", ports.proxy)):  # fmt: skip
            argv = [sys.executable, str(script), str(port)]
            bound = (port,)
            if role == "proxy":  # the real proxy's metrics flags, as commands.py writes them
                argv += ["--prometheus-host", "127.0.0.1", "--prometheus-port", str(ports.prometheus)]
            specs.append(ProcessSpec(name, role, "127.0.0.1", tuple(argv), ports=bound, port=port))
        return specs

    monkeypatch.setattr(launch, "build_plan", plan)
    monkeypatch.setattr(cluster, "resolve_model", lambda model: model)
    cfg = cluster.from_dict({"model": "m", "stop_timeout_s": 5})
    assert launch.run(cfg, check=True, run_dir=str(tmp_path / "runs")) == 0
    out = capsys.readouterr().out
    named = [int(p) for p in re.findall(r"http://127\.0\.0\.1:(\d+)/metrics", out)]
    assert {seen["metrics_port"], seen["proxy_port"]} & set(named), out  # either serves them


def test_defect12_readme_says_the_demo_offloads_every_request():
    """Defect 12: the README's demo commands did not say that the demo's policy `always` offloads every request
    (a user load-testing the demo measures the offload path only, and its executor reserve)."""
    readme = (ROOT / "README.md").read_text()
    demo = readme[readme.index("make demo"):][:3000]
    assert re.search(r"offload\w*\s+every\s+request|every\s+request\s+(is\s+)?offloaded|policy\s+`always`", demo), \
        demo[:800]  # fmt: skip

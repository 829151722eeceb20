"""MODE=real: the interface fails clearly without servers, and maps bench_serving's output to our columns."""

from __future__ import annotations

import json
import socket
import sys

import pytest

from experiments import real
from experiments import run as runner


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_no_server_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("MODE", "real")
    monkeypatch.setenv("ADRENALINE_PD_URL", f"http://127.0.0.1:{_closed_port()}")
    assert runner.main(["fig5", "--quick", "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: MODE=real: no pd server reachable at http://127.0.0.1:") and "\n" not in err
    assert not (tmp_path / "fig5" / "e2e.csv").exists()


def test_bench_line_maps_to_the_e2e_columns():
    line = json.dumps({"mean_ttft_ms": 250.0, "mean_tpot_ms": 30.5, "p99_tpot_ms": 41.0, "output_throughput": 900.0})
    assert real.parse_bench_line(line) == {"mean_ttft_s": 0.25, "mean_tpot_ms": 30.5, "p99_tpot_ms": 41.0,
                                           "decode_throughput_tok_s": 900.0}
    with pytest.raises(ValueError, match="bench_serving output is not what MODE=real expects"):
        real.parse_bench_line('{"mean_ttft_ms": 1}')


def test_bench_command(tmp_path, monkeypatch):
    monkeypatch.setenv("ADRENALINE_MODEL_PATH", "models/llama")
    cmd = real.bench_command("http://h:1", "sharegpt", 2.5, 100, 0, tmp_path / "o.jsonl")
    assert cmd[1:4] == ["-m", "adrenaline_sgl.support.run_with_stub", "sglang.benchmark.serving"]
    assert cmd[cmd.index("--request-rate") + 1] == "2.5" and cmd[cmd.index("--dataset-name") + 1] == "random-ids"
    cmd = real.bench_command("http://h:1", "sharegpt", 1.0, 10, 0, tmp_path / "o.jsonl", dataset_path="sg.json")
    assert cmd[cmd.index("--dataset-path") + 1] == "sg.json"
    cmd = real.bench_command("http://h:1", "sharegpt_multiturn", 1.0, 10, 0, tmp_path / "o.jsonl")
    assert cmd[cmd.index("--random-input-len") + 1] == "933" and cmd[cmd.index("--random-output-len") + 1] == "333"
    with pytest.raises(ValueError, match="first turns, not every answer: use --workload sharegpt"):
        real.bench_command("http://h:1", "sharegpt_multiturn", 1.0, 10, 0, tmp_path / "o.jsonl", dataset_path="s.json")
    monkeypatch.delenv("ADRENALINE_MODEL_PATH")
    with pytest.raises(ValueError, match="needs ADRENALINE_MODEL_PATH"):
        real.bench_command("http://h:1", "sharegpt", 1.0, 10, 0, tmp_path / "o.jsonl")


def test_unknown_mode_is_a_one_line_error(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("MODE", "gpu")
    assert runner.main(["fig1", "--quick"]) == 2
    assert capsys.readouterr().err.strip() == "error: MODE='gpu' is unknown; valid: sim, real, emulated"


def test_failed_benchmark_says_why(tmp_path):
    cmd = [sys.executable, "-c", "print('progress'); print('Server at X is not ready. Exiting.'); raise SystemExit(3)"]
    with pytest.raises(real.ExperimentError, match="exit status 3: Server at X is not ready. Exiting."):
        real.run_bench(cmd, tmp_path / "o.jsonl")

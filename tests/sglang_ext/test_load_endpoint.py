"""`/adrenaline/load`: SGLang's load snapshots summed into the report the proxy parses."""

import socket

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sglang.srt.managers.load_snapshot import LoadSnapshot

from adrenaline_sgl.sglang_ext import flags
from adrenaline_sgl.sglang_ext.load_endpoint import make_handler, report_from_loads
from adrenaline_sgl.sglang_ext.load_report import LOAD_PATH, LoadReport


class FakeTokenizerManager:
    def __init__(self, snapshots):
        self.snapshots = snapshots

    async def get_loads(self, include=None, dp_rank=None):
        return self.snapshots


def _client(args, snapshots):
    app = FastAPI()
    app.add_api_route(LOAD_PATH, make_handler(args, lambda: FakeTokenizerManager(snapshots)), methods=["GET"])
    return TestClient(app)


def test_prefill_report_sums_dp_ranks_and_sees_a_live_executor():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        args = flags.AdrenalineArgs(role="prefill", executor_port=port)
        snapshots = [LoadSnapshot(dp_rank=r, num_running_reqs=2, num_waiting_reqs=1, num_used_tokens=100,
                                  max_total_num_tokens=1000) for r in range(2)]  # fmt: skip
        body = _client(args, snapshots).get(LOAD_PATH).json()
    report = LoadReport.from_dict(body)
    assert report == LoadReport(role="prefill", num_running_reqs=4, num_waiting_reqs=2, token_usage=0.1,
                                max_total_tokens=2000, executor_addr=f"127.0.0.1:{port}", executor_healthy=True)


def test_dead_executor_is_reported_unhealthy():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the check
    args = flags.AdrenalineArgs(role="prefill", executor_port=port)
    assert _client(args, []).get(LOAD_PATH).json()["executor_healthy"] is False


def test_decode_report_names_no_executor():
    report = report_from_loads(flags.AdrenalineArgs(role="decode"), [{"num_running_reqs": 3}], False)
    assert report.role == "decode" and report.executor_addr == "" and report.num_running_reqs == 3

"""Fault injection for the e2e suite: `--adrenaline-enable-fault-injection` lets
`POST /adrenaline/executor/stop` (loopback only) stop the prefill's hosted executor while SGLang serves on."""

import asyncio
import socket

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adrenaline_sgl.protocol import FAULT_STOP_PATH
from adrenaline_sgl.sglang_ext import flags
from adrenaline_sgl.sglang_ext.load_endpoint import executor_call, make_fault_stop_handler


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hosted(fault_injection: bool):
    """A real HostedExecutor (Mooncake server thread) over a small standalone pool."""
    from adrenaline_sgl.offload.executor import AttentionExecutor
    from adrenaline_sgl.offload.hosted import HostedExecutor
    from adrenaline_sgl.offload.pool import KVPool
    from adrenaline_sgl.sglang_ext.prefill_executor import PrefillExecutorService
    from adrenaline_sgl.sglang_ext.prefill_kept import KeptKV

    executor = AttentionExecutor(KVPool.standalone(2, 16, 2, 8), attention="reference")
    service = PrefillExecutorService(executor, KeptKV(2 * 2 * 2 * 8 * 4, executor))
    return HostedExecutor(service, "127.0.0.1", _free_port(), fault_injection=fault_injection)


def _call(hosted, op: str, timeout_s: float = 2.0):
    host, port = hosted.address.rsplit(":", 1)
    return asyncio.run(executor_call(host, int(port), op, timeout_s))


def test_the_switch_parses_and_is_off_by_default():
    import argparse

    parser = argparse.ArgumentParser()
    flags.add_cli_args(parser)
    assert flags.from_namespace(parser.parse_args([])).enable_fault_injection is False
    on = flags.from_namespace(parser.parse_args(["--adrenaline-enable-fault-injection"]))
    assert on.enable_fault_injection is True


def test_fault_stop_is_refused_when_the_switch_is_off():
    hosted = _hosted(fault_injection=False)
    try:
        ok, why = _call(hosted, "fault_stop")
        assert not ok and "fault injection is off" in why
        assert hosted.serving and _call(hosted, "stats")[0]  # still serving
    finally:
        hosted.close()


def test_fault_stop_stops_the_executor_thread_and_its_port():
    hosted = _hosted(fault_injection=True)
    try:
        assert _call(hosted, "stats")[0]
        assert _call(hosted, "fault_stop") == (True, None)  # the reply comes before the loop ends
        hosted._thread.join(timeout=5)
        assert not hosted.serving
        ok, why = _call(hosted, "stats", timeout_s=0.3)
        assert not ok and "no reply" in why  # what /adrenaline/load then reports as executor_healthy=False
    finally:
        hosted.close()


@pytest.mark.parametrize("client_host, status", [("127.0.0.1", 200), ("10.1.2.3", 403)])
def test_http_route_stops_the_executor_for_loopback_clients_only(client_host, status):
    hosted = _hosted(fault_injection=True)
    try:
        port = int(hosted.address.rsplit(":", 1)[1])
        args = flags.AdrenalineArgs(role="prefill", executor_port=port, enable_fault_injection=True)
        app = FastAPI()
        app.add_api_route(FAULT_STOP_PATH, make_fault_stop_handler(args), methods=["POST"])
        reply = TestClient(app, client=(client_host, 50000)).post(FAULT_STOP_PATH)
        assert reply.status_code == status, reply.text
        hosted._thread.join(timeout=5 if status == 200 else 0.3)
        assert hosted.serving is (status != 200)
    finally:
        hosted.close()


def test_http_route_reports_an_executor_that_does_not_answer():
    args = flags.AdrenalineArgs(role="prefill", executor_port=_free_port(), enable_fault_injection=True)
    app = FastAPI()
    app.add_api_route(FAULT_STOP_PATH, make_fault_stop_handler(args), methods=["POST"])
    import adrenaline_sgl.sglang_ext.load_endpoint as le

    saved, le.FAULT_STOP_TIMEOUT_S = le.FAULT_STOP_TIMEOUT_S, 0.3
    try:
        reply = TestClient(app, client=("127.0.0.1", 50000)).post(FAULT_STOP_PATH)
    finally:
        le.FAULT_STOP_TIMEOUT_S = saved
    assert reply.status_code == 503 and "did not stop" in reply.json()["error"]

"""Releases of offloaded requests whose executor failed reach the executor once it answers again, without
waiting for a new request to that executor (the e2e stall test saw prefill hold such KV until the next test).

`offload.control.call` against a real `RouterServer` (the executor's control socket), and `DecodeOffload`'s
background retrier with a scripted sender."""

from __future__ import annotations

import threading
import time

import pytest

from adrenaline_sgl.offload import control
from adrenaline_sgl.offload.decode_state import DecodeOffload
from adrenaline_sgl.offload.errors import OffloadError
from adrenaline_sgl.offload.transports.router import RouterServer


class RecordingService:
    """The executor protocol's `try_control` entry (what `RouterServer` calls), recording what it was asked."""

    def __init__(self):
        self.calls: list[tuple[str, dict]] = []

    def try_control(self, op, args, tensors, client):
        self.calls.append((op, args))
        if op == "boom":
            raise OffloadError("boom: refused")
        return {"op": op}, {}


@pytest.fixture
def server():
    service = RecordingService()
    srv = RouterServer(service)
    stop = threading.Event()
    thread = threading.Thread(target=srv.serve, args=(stop, 20), daemon=True)
    thread.start()
    yield srv, service
    stop.set()
    thread.join(timeout=5)
    srv.close()


def test_control_call_reaches_the_executor_and_reports_errors(server):
    srv, service = server
    assert control.call(srv.address, "release", {"rid": "room-1"}, timeout_s=5) == (True, {"op": "release"})
    assert service.calls == [("release", {"rid": "room-1"})]
    ok, why = control.call(srv.address, "boom", timeout_s=5)
    assert not ok and "boom: refused" in why


def test_control_call_to_nobody_returns_within_its_timeout():
    t0 = time.monotonic()
    ok, why = control.call("127.0.0.1:1", "release", {"rid": "x"}, timeout_s=0.3)
    assert not ok and "no reply within 0.3 s" in why
    assert time.monotonic() - t0 < 2.0


def _wait(predicate, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_failed_executors_releases_are_retried_until_it_answers_then_the_retrier_ends():
    answers = {"ex:1": iter([(False, "no reply"), (False, "no reply"), (True, None), (True, None)])}
    sent: list[tuple[str, str]] = []

    def send(executor, rid):
        ok, why = next(answers[executor])
        if ok:
            sent.append((executor, rid))
        return ok, why

    offload = DecodeOffload(connect=lambda e: pytest.fail("no reconnect expected"), send_release=send,
                            release_retry_s=0.02)  # fmt: skip
    try:
        for row, rid in ((3, "room-a"), (4, "room-b")):
            offload.mark(row, rid, "ex:1")
        offload.fail([3, 4], "executor ex:1 failed")
        offload.unmark(3)
        offload.unmark(4)  # both wait: the scheduler thread never connects to a failed executor
        assert _wait(lambda: len(sent) == 2), (sent, offload.pending_releases())
        assert sent == [("ex:1", "room-a"), ("ex:1", "room-b")]  # in order, each once
        assert offload.pending_releases() == {}
        assert _wait(lambda: offload._retrier is None)  # nothing left: the thread ended
    finally:
        offload.close()


def test_a_release_that_fails_on_a_live_client_is_retried_in_the_background():
    class BrokenClient:
        def release(self, rid):
            raise OffloadError("executor at ex:2: no reply")

        def close(self):
            pass

    sent = []
    offload = DecodeOffload(connect=lambda e: BrokenClient(), send_release=lambda e, r: (sent.append(r) or True, None),
                            release_retry_s=0.02)  # fmt: skip
    try:
        offload.mark(7, "room-c", "ex:2")
        offload.unmark(7)
        assert _wait(lambda: sent == ["room-c"]) and offload.pending_releases() == {}
    finally:
        offload.close()


def test_without_a_sender_the_release_waits_for_the_next_reconnect():
    offload = DecodeOffload(connect=lambda e: pytest.fail("not connected here"), release_retry_s=0.02)
    offload.mark(1, "room-d", "ex:3")
    offload.fail([1], "executor ex:3 failed")
    offload.unmark(1)
    time.sleep(0.1)
    assert offload.pending_releases() == {"ex:3": ["room-d"]} and offload._retrier is None
    offload.close()

"""Issue 18 defect 5, the decode backend's half: an executor that restarted no longer knows decode's connection
(`NotConnectedError`); the backend connects again once and opens the step there, without a decode restart.
The transport's half, with real Mooncake: tests/offload/test_issue18_reconnect.py; on real servers:
tests/e2e/test_issue18_e2e.py::test_defect5_a_restarted_prefill_serves_offloaded_requests_without_restarting_decode."""

from __future__ import annotations

import types

import pytest
import torch

from adrenaline_sgl.offload.decode_state import DecodeOffload, Group
from adrenaline_sgl.offload.errors import NotConnectedError

pytest.importorskip("sglang.srt.layers.attention.base_attn_backend")
from adrenaline_sgl.sglang_ext.backend import AdrenalineAttnBackend  # noqa: E402


class FakeClient:
    def __init__(self, name: str, refuse: bool):
        self.name, self.refuse, self.steps, self.closed = name, refuse, [], False

    def begin_step(self, rids):
        if self.refuse:
            raise NotConnectedError(f"executor at x: begin_step: client {self.name} is not connected")
        self.steps.append(tuple(rids))

    def close(self):
        self.closed = True


def test_backend_reconnects_once_when_the_executor_no_longer_knows_it():
    made: list[FakeClient] = []

    def connect(addr):  # the first client predates the executor's restart; the next ones are fresh
        made.append(FakeClient(f"c{len(made)}", refuse=not made))
        return made[-1]

    offload = DecodeOffload(connect=connect)
    backend = AdrenalineAttnBackend(types.SimpleNamespace(), offload)
    group = Group("127.0.0.1:31000", torch.tensor([0]), ("room-new",))
    client = backend._open_step(group)
    assert client is made[1] and made[1].steps == [("room-new",)]  # the step opened on a fresh connection
    assert made[0].closed and offload._clients == {"127.0.0.1:31000": made[1]}  # the stale one is retired
    assert backend._open_step(group) is made[1] and len(made) == 2  # no reconnect once connected

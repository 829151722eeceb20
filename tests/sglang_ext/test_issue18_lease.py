"""Issue 18 defect 4: prefill held the KV of offloaded requests forever when their decode died (also after decode
restarted). Now each kept request holds a lease that decode renews while it has the request; one nobody renews
expires and the prefill scheduler frees that KV at its next pass.

Real `KeptKV`, `AttentionExecutor`, `PrefillExecutorService` and `RouterServer` (the executor's control socket,
what decode's renewals reach); fakes only for SGLang's release and for the clock. On real servers:
tests/e2e/test_issue18_e2e.py::test_defect4_prefill_frees_the_kv_of_a_dead_decodes_requests."""

from __future__ import annotations

import threading
import time
import types

import pytest
import torch

from adrenaline_sgl.offload.decode_state import DecodeOffload
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.lease import MIN_LEASE_S, KVLeases, check_lease_s
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.transports.router import RouterServer
from adrenaline_sgl.sglang_ext import flags
from adrenaline_sgl.sglang_ext.prefill_executor import PrefillExecutorService
from adrenaline_sgl.sglang_ext.prefill_kept import KeptKV

LAYERS, SLOTS, HKV, D = 2, 32, 2, 4
LEASE_S = 20.0
class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _req(rid: str, row: int, slots: list[int], req_to_token: torch.Tensor):
    req_to_token[row, : len(slots)] = torch.tensor(slots, dtype=torch.int32)
    return types.SimpleNamespace(rid=rid, kv=types.SimpleNamespace(req_pool_idx=row, kv_allocated_len=len(slots),
                                                                   cache_protected_len=0))  # fmt: skip


@pytest.fixture
def prefill():
    """A prefill's kept KV with an executor over its pool and a lease on a fake clock; `released` records the
    SGLang releases (what frees the slots on a real instance)."""
    pool = KVPool.standalone(LAYERS, SLOTS, HKV, D)
    executor = AttentionExecutor(pool, attention="reference")
    kept = KeptKV(HKV * D * 4 * 2 * LAYERS, executor)
    clock = Clock()
    kept.lease = KVLeases(LEASE_S, clock=clock)
    tree = types.SimpleNamespace(req_to_token_pool=types.SimpleNamespace(
        req_to_token=torch.zeros(4, 16, dtype=torch.int32)))  # fmt: skip
    released: list[str] = []
    for i, key in enumerate(("room-a", "room-b")):
        kept.keep(_req(key, i, [4 * i + 1, 4 * i + 2, 4 * i + 3], tree.req_to_token_pool.req_to_token), tree,
                  lambda key=key: released.append(key), key)  # fmt: skip
    return types.SimpleNamespace(kept=kept, executor=executor, clock=clock, released=released,
                                 service=PrefillExecutorService(executor, kept))  # fmt: skip


def test_lease_runs_from_the_grant_and_from_each_renewal():
    clock = Clock()
    leases = KVLeases(LEASE_S, clock=clock)
    leases.grant("a")
    leases.grant("b")
    clock.now += LEASE_S - 1
    assert leases.renew(["a", "ghost"]) == ["ghost"]  # a is renewed; ghost was never granted here
    assert leases.expired() == []
    clock.now += 1
    assert leases.expired() == ["b"] and leases.expired_total == 1  # b's ran out, a's runs until now + 19
    clock.now += LEASE_S - 1.5
    assert leases.expired() == []
    leases.end("a")  # released by decode: nothing left to expire
    clock.now += 100
    assert leases.expired() == [] and len(leases) == 0


def test_lease_length_is_checked():
    check_lease_s(0)
    check_lease_s(MIN_LEASE_S)
    for bad in (1.0, MIN_LEASE_S - 0.1, -5, 10**6):
        with pytest.raises(ValueError, match="kv_lease_s"):
            check_lease_s(bad)
    with pytest.raises(ValueError, match="adrenaline kv_lease_s=3"):
        flags.AdrenalineArgs(role="prefill", kv_lease_s=3)
    assert flags.AdrenalineArgs().kv_lease_s == 20.0


def test_kv_whose_decode_stopped_renewing_is_freed_at_the_next_drain(prefill):
    """Defect 4: decode died holding room-b (nobody renews it), while another decode still has room-a."""
    kept, executor, clock = prefill.kept, prefill.executor, prefill.clock
    clock.now += LEASE_S / 2
    assert prefill.service.control("renew", {"rids": ["room-a", "room-x"]}, {})[0] == {"unknown": ["room-x"]}
    assert kept.drain() == [] and prefill.released == []  # nothing expired yet
    clock.now += LEASE_S / 2
    assert kept.drain() == ["room-b"]  # the scheduler's next pass frees it, as a release from decode would
    assert prefill.released == ["room-b"] and "room-b" not in executor.rids and "room-b" not in kept
    assert "room-a" in executor.rids and kept.lease.expired_total == 1
    clock.now += LEASE_S
    assert kept.drain() == ["room-a"]  # its decode stopped renewing too
    assert executor.stats().tokens_held == 0 and kept.num_reqs == 0


def test_released_kv_leaves_no_lease_behind(prefill):
    kept = prefill.kept
    kept.request_release("room-a")
    assert kept.drain() == ["room-a"]
    prefill.clock.now += 10 * LEASE_S
    assert kept.drain() == ["room-b"] and prefill.released == ["room-a", "room-b"]  # room-a not freed twice


def test_decode_renews_only_the_requests_it_still_has(prefill):
    sent: list[tuple[str, list[str]]] = []
    ready = threading.Event()

    def send_renew(executor, rids):
        sent.append((executor, sorted(rids)))
        ready.set()
        return True, {"unknown": []}

    offload = DecodeOffload(connect=lambda addr: None, send_renew=send_renew, renew_s=0.05)
    try:
        offload.mark(1, "room-a", "10.0.0.1:31000")
        offload.mark(2, "room-c", "10.0.0.1:31000")
        offload.mark(3, "room-d", "10.0.0.2:31000")
        offload.fail([3], "executor gone")  # being aborted: its release is on its way, no renewal
        assert ready.wait(5)
        assert offload.leased() == {"10.0.0.1:31000": ["room-a", "room-c"]}
        time.sleep(0.2)
        assert ("10.0.0.1:31000", ["room-a", "room-c"]) in sent and all(e == "10.0.0.1:31000" for e, _ in sent)
    finally:
        offload.close()
    count = len(sent)
    time.sleep(0.2)
    assert len(sent) <= count + 1  # closed: the renewals stop


def test_renewals_reach_the_executor_over_its_control_socket(prefill):
    """decode's real sender (`backend.renew_sender`, `control.call`) against the executor's router: the lease of
    a request decode still has is renewed, and prefill answers which ids it does not hold."""
    from adrenaline_sgl.sglang_ext.backend import renew_sender

    server = RouterServer(prefill.service)
    stop = threading.Event()
    thread = threading.Thread(target=server.serve, args=(stop, 20), daemon=True)
    thread.start()
    try:
        send = renew_sender(types.SimpleNamespace(transport="mooncake"))
        prefill.clock.now += LEASE_S - 1
        assert send(server.address, ["room-a", "room-gone"]) == (True, {"unknown": ["room-gone"]})
        prefill.clock.now += 2
        assert prefill.kept.drain() == ["room-b"]  # room-a was renewed a second ago
    finally:
        stop.set()
        thread.join(timeout=5)
        server.close()

"""Several decode clients of one executor (the nPmD case: decode instances share a prefill's executor).

Over the `inproc` transport (each client its own worker thread: their layers really run concurrently) and
the `mooncake` transport (TCP loopback, the executor in its own process, one server loop for all clients):
interleaved steps of different batches equal the torch reference for every client; one client's abort or
disconnect leaves the others' steps intact and gives its step slots back; stats count every client.
"""

from __future__ import annotations

import contextlib
import importlib.util
import time
import uuid

import pytest
import torch
from adrenaline_kernels.reference import decode_attention_ref

from adrenaline_sgl.offload.client import OffloadClient
from adrenaline_sgl.offload.errors import OffloadError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.base import create_channel
from adrenaline_sgl.offload.wire import RowLayout

from .conftest import HKV, HQ, LAYERS, D, random_kv, random_rows

LAYOUT = RowLayout(HQ, HKV, D, torch.float32)
NUM_SLOTS = 128
HAS_MOONCAKE = importlib.util.find_spec("mooncake") is not None
TRANSPORTS = ["inproc", pytest.param("mooncake", marks=pytest.mark.skipif(not HAS_MOONCAKE,
                                                                          reason="mooncake is not installed"))]


class Reference:
    """Each request's KV per layer (prompt, then every token a step appended) and the torch reference answer."""

    def __init__(self):
        self.k: dict[str, list[torch.Tensor]] = {}  # rid -> per layer [T, Hkv, D]
        self.v: dict[str, list[torch.Tensor]] = {}
        self.open: dict[str, list[int]] = {}  # rid -> layers its open step appended at

    def adopt(self, rid: str, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[rid], self.v[rid] = list(k), list(v)

    def layer(self, rid: str, layer: int, q, k, v) -> tuple[torch.Tensor, torch.Tensor]:
        """Append the row's k, v `[Hkv, D]` at `layer`; the reference (o `[1, Hq, D]`, lse `[1, Hq]`) of q `[Hq, D]`."""
        self.k[rid][layer] = torch.cat([self.k[rid][layer], k[None]])
        self.v[rid][layer] = torch.cat([self.v[rid][layer], v[None]])
        self.open.setdefault(rid, []).append(layer)
        keys, values = self.k[rid][layer], self.v[rid][layer]
        return decode_attention_ref(q[None], keys, values, torch.tensor([0, keys.shape[0]]),
                                    torch.arange(keys.shape[0]))

    def check(self, rids, layer: int, q, k, v, o, lse) -> None:
        """The executor's o `[N, Hq, D]`, lse `[N, Hq]` for `rids` at `layer` equal the reference (fp32, 1e-5)."""
        for row, rid in enumerate(rids):
            o_ref, lse_ref = self.layer(rid, layer, q[row], k[row], v[row])
            torch.testing.assert_close(o[row : row + 1], o_ref, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lse[row : row + 1], lse_ref, rtol=1e-5, atol=1e-5)

    def end_step(self, rids) -> None:
        for rid in rids:
            self.open.pop(rid, None)

    def roll_back(self, rids) -> None:
        for rid in rids:
            for layer in self.open.pop(rid, []):
                self.k[rid][layer], self.v[rid][layer] = self.k[rid][layer][:-1], self.v[rid][layer][:-1]


@pytest.fixture(scope="module")
def executor_process():
    if not HAS_MOONCAKE:
        yield None
        return
    from adrenaline_sgl.offload.process import ExecutorProcess

    with ExecutorProcess(LAYERS, HKV, D, NUM_SLOTS, attention="reference") as proc:
        yield proc


class Cluster:
    """Decode clients of one executor over `transport`; `observer` reads the executor's stats."""

    def __init__(self, transport: str, executor_process):
        self.transport = transport
        self.clients: list[OffloadClient] = []
        if transport == "inproc":
            self.service = ExecutorService(AttentionExecutor(KVPool.standalone(LAYERS, NUM_SLOTS, HKV, D),
                                                             "reference"))  # fmt: skip
        else:
            self.address = executor_process.address
        self.tag = uuid.uuid4().hex[:6]  # the mooncake executor outlives a test: request ids of this test only
        self.observer = self.connect()

    def connect(self) -> OffloadClient:
        if self.transport == "inproc":
            channel = create_channel("inproc", service=self.service)
        else:
            channel = create_channel("mooncake", address=self.address, layout=LAYOUT, max_rows=8, connect_timeout_s=30)
        client = OffloadClient(channel, LAYOUT, LAYERS)
        self.clients.append(client)
        return client

    def stats(self) -> dict:
        return self.observer.stats()

    def adopt(self, client: OffloadClient, ref: Reference, names: list[str], seed: int) -> list[str]:
        rids = [f"{self.tag}-{name}" for name in names]
        for i, rid in enumerate(rids):
            k, v = random_kv(2 + (seed + 3 * i) % 7, seed=seed + i)  # prompts of 2..8 tokens
            client.adopt_copy(rid, k, v)
            ref.adopt(rid, k, v)
        return rids

    def close(self) -> None:
        for client in self.clients:
            with contextlib.suppress(OffloadError):
                client.close()


@pytest.fixture(params=TRANSPORTS)
def cluster(request, executor_process):
    made = Cluster(request.param, executor_process)
    yield made
    made.close()


def _line(stats: dict, client: OffloadClient) -> dict:
    """`client`'s line in the executor's stats."""
    (line,) = [c for c in stats["clients"] if c["client"] == client.channel.client_id]
    return line


def _interleaved_steps(clients, batches, ref: Reference, steps: int, seed: int = 0) -> None:
    """Every client runs `steps` steps; client i opens its step while client i-1 is at layer 1, and each round
    every client with a layer left submits one before any waits: the executor sees them interleaved."""
    n = len(clients)
    for step in range(steps):
        for r in range(LAYERS + n - 1):
            pending = {}
            for i, (client, rids) in enumerate(zip(clients, batches, strict=True)):
                layer = r - i
                if not 0 <= layer < LAYERS:
                    continue
                if layer == 0:
                    client.begin_step(rids)
                q, k, v = random_rows(len(rids), seed=seed + 1000 * step + 100 * i + layer)
                client.submit(layer, q, k, v)
                pending[i] = (layer, q, k, v)
            for i, (layer, q, k, v) in sorted(pending.items(), reverse=True):
                o, lse = clients[i].wait()
                ref.check(batches[i], layer, q, k, v, o, lse)
        for rids in batches:
            ref.end_step(rids)


@pytest.mark.parametrize("num_clients", [2, 3])
def test_interleaved_steps_of_several_clients_equal_the_reference(cluster, num_clients):
    ref = Reference()
    base = cluster.stats()
    clients = [cluster.connect() for _ in range(num_clients)]
    names = [["a0", "a1"], ["b0"], ["c0", "c1", "c2"]][:num_clients]  # a different batch per client
    batches = [cluster.adopt(c, ref, n, seed=10 * i) for i, (c, n) in enumerate(zip(clients, names))]
    adopted = cluster.stats()["tokens_held"] - base["tokens_held"]
    _interleaved_steps(clients, batches, ref, steps=3)
    stats = cluster.stats()
    assert stats["steps"] - base["steps"] == 3 * num_clients
    assert stats["layer_calls"] - base["layer_calls"] == 3 * num_clients * LAYERS
    assert stats["tokens_held"] - base["tokens_held"] == adopted + 3 * sum(len(b) for b in batches)
    for client, rids in zip(clients, batches):
        assert (_line(stats, client)["steps"], _line(stats, client)["layer_calls"]) == (3, 3 * LAYERS)
        for rid in rids:
            client.release(rid)
    assert cluster.stats()["slots_free"] == base["slots_free"]  # every slot of the test is back


def test_abort_of_one_clients_step_leaves_the_others_intact(cluster):
    ref = Reference()
    base = cluster.stats()
    a, b = cluster.connect(), cluster.connect()
    rids_a, rids_b = cluster.adopt(a, ref, ["x0", "x1"], seed=1), cluster.adopt(b, ref, ["y0"], seed=2)
    _interleaved_steps([a, b], [rids_a, rids_b], ref, steps=1)
    free = cluster.stats()["slots_free"]
    a.begin_step(rids_a)
    b.begin_step(rids_b)
    for client, rids, seed in ((a, rids_a, 7), (b, rids_b, 8)):  # layer 0 of both steps
        q, k, v = random_rows(len(rids), seed=seed)
        client.submit(0, q, k, v)
        ref.check(rids, 0, q, k, v, *client.wait())
    assert cluster.stats()["slots_free"] == free - 3
    a.abort_step()
    ref.roll_back(rids_a)
    assert cluster.stats()["slots_free"] == free - 1  # a's two step slots are back, b's is still in use
    for layer in range(1, LAYERS):  # b's step goes on as if nothing had happened
        q, k, v = random_rows(1, seed=20 + layer)
        b.submit(layer, q, k, v)
        ref.check(rids_b, layer, q, k, v, *b.wait())
    ref.end_step(rids_b)
    _interleaved_steps([a, b], [rids_a, rids_b], ref, steps=1, seed=50)  # a's rolled-back token is really gone
    for rid in rids_a + rids_b:
        a.release(rid)
    assert cluster.stats()["slots_free"] == base["slots_free"]


def _eventually(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_disconnect_rolls_back_only_that_clients_unfinished_step(cluster):
    ref = Reference()
    base = cluster.stats()
    a, b = cluster.connect(), cluster.connect()
    rids_a, rids_b = cluster.adopt(a, ref, ["p0", "p1", "p2"], seed=3), cluster.adopt(b, ref, ["q0"], seed=4)
    _interleaved_steps([a, b], [rids_a, rids_b], ref, steps=1)
    before = cluster.stats()
    a.begin_step(rids_a)
    b.begin_step(rids_b)
    q, k, v = random_rows(3, seed=5)
    a.submit(0, q, k, v)
    a.wait()
    opened = cluster.stats()
    assert opened["slots_free"] == before["slots_free"] - 4
    assert (_line(opened, a)["open_step_rows"], _line(opened, a)["open_step_layers_run"]) == (3, 1)
    assert (_line(opened, b)["open_step_rows"], _line(opened, b)["open_step_layers_run"]) == (1, 0)
    a.close()  # mid-step: a's step is rolled back (its 3 slots freed), its requests stay adopted
    assert _eventually(lambda: cluster.stats()["slots_free"] == before["slots_free"] - 1), cluster.stats()
    after = cluster.stats()
    assert after["tokens_held"] == before["tokens_held"] + 1  # b's open step slot only
    assert a.channel.client_id not in [c["client"] for c in after["clients"]]
    assert after["steps"] - before["steps"] == 2 and after["layer_calls"] - before["layer_calls"] == 1  # kept
    for layer in range(LAYERS):  # b's step is untouched
        q, k, v = random_rows(1, seed=30 + layer)
        b.submit(layer, q, k, v)
        ref.check(rids_b, layer, q, k, v, *b.wait())
    for rid in rids_a + rids_b:
        b.release(rid)
    assert cluster.stats()["slots_free"] == base["slots_free"]


@pytest.mark.parametrize("cluster", TRANSPORTS[1:], indirect=True)  # inproc has no staging buffers (max_rows)
def test_begin_step_with_more_rows_than_the_clients_buffers_is_refused_at_the_step(cluster):
    ref = Reference()
    client = cluster.connect()
    rids = cluster.adopt(client, ref, [f"m{i}" for i in range(9)], seed=9)  # max_rows is 8
    with pytest.raises(OffloadError, match="9 rows exceed this client's max_rows 8"):
        client.begin_step(rids)
    for rid in rids:
        client.release(rid)


def test_two_busy_clients_share_the_executor_fairly(cluster):
    """Two clients stepping as fast as they can at once (equal batches, each on its own thread): the executor
    serves their layers in arrival order, so neither is starved: when the first has run all its steps, the
    other has run at least half of its own."""
    import threading

    steps = 12
    a, b = cluster.connect(), cluster.connect()
    ref = Reference()
    batches = [cluster.adopt(a, ref, ["fa"], seed=3), cluster.adopt(b, ref, ["fb"], seed=4)]
    done_at: list[list[float]] = [[], []]
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(i: int, client: OffloadClient) -> None:
        try:
            start.wait(timeout=10)
            for step in range(steps):
                client.begin_step(batches[i])
                for layer in range(LAYERS):
                    client.submit(layer, *random_rows(1, seed=100 * step + layer))
                    client.wait()
                done_at[i].append(time.monotonic())
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate((a, b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and all(len(d) == steps for d in done_at), (errors, [len(d) for d in done_at])
    first_done = min(d[-1] for d in done_at)
    behind = min(sum(t <= first_done for t in d) for d in done_at)
    print(f"{cluster.transport}: when the first client finished its {steps} steps the other had run {behind}")
    assert behind >= steps // 2
    for client, rids in zip((a, b), batches):
        for rid in rids:
            client.release(rid)

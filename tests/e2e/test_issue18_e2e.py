"""Issue 18 on real servers: the defects that need the whole stack (4, 5, 6, 7, 9, 10's token ids, 11).

One demo stack for the module (`cpu_demo.yaml`, policy `always`, started by the launcher through `make chaos`'s
`ChaosStack`), changed where a defect needs it: fault injection on prefill, an executor reserve of
`RESERVE_TOKENS` (256, not 1024: defect 7 then shows after a few seconds of decoding instead of a minute) and
decode's layer timeout at 2 s. The other defects have unit tests (tests/sglang_ext, tests/proxy,
tests/cpu_support: test_issue18_*.py) and `make chaos` replays all of them.

Order matters: the tests that take servers down come last, and each test first restarts whatever an earlier one
left down (a dead prefill takes decode with it: a restarted prefill needs a restarted decode to offload, defect
5), so a test fails for its own defect only. Defect 10's test (whose bad ids kill prefill today) runs just before
defect 5's, which restarts prefill anyway. Today two restarts happen (about a minute each on two cores); once
the defects are fixed, one: defect 5's prefill restart.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time

import pytest
import requests

pytestmark = pytest.mark.e2e

RESERVE_TOKENS = 256  # --adrenaline-executor-max-tokens here
REMOTE_TIMEOUT_S = 2.0  # decode's wait for one layer's reply from the executor
LEASE_WAIT_S = 30.0  # how long prefill may hold the KV of a dead decode's request (defect 4)
ADMITTED = r"adrenaline: admitted \S+ offloaded to"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from adrenaline_sgl.tools.chaos.stack import ChaosStack, demo_config

    cfg = demo_config(tmp_path_factory.mktemp("issue18_e2e"),
                      prefill_args=("--adrenaline-executor-max-tokens", str(RESERVE_TOKENS)),
                      decode_args=("--adrenaline-remote-timeout-s", str(REMOTE_TIMEOUT_S)))  # fmt: skip
    with ChaosStack.start(cfg) as running:
        yield running


def _serving(stack, but: str | None = None) -> None:
    """Restart what an earlier test left down (prefill with decode), so each test starts from a working stack;
    `but` is left alone (the test restarts it itself)."""
    from adrenaline_sgl.tools.chaos.stack import NAMES

    down = {n for n in NAMES if n != but and (stack.leader_exit(n) is not None or not stack.healthy(n))}
    if "prefill-0" in down:
        down.add("decode-0")
    if down:
        stack.restart_servers(sorted(down, key=NAMES.index))


def _generate(stack, max_new_tokens: int, prompt: str = "Count from one to one thousand:", stream: bool = False,
              timeout_s: float = 300):  # fmt: skip
    body = {"text": prompt, "stream": stream,
            "sampling_params": {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": True}}
    return requests.post(stack.proxy_url + "/generate", json=body, timeout=timeout_s, stream=stream)


def _admitted(stack) -> int:
    return len(re.findall(ADMITTED, stack.log_tail("decode-0", 10**8)))


def _wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.3)
    return predicate()


def _held(stack) -> int:
    return (stack.load("prefill-0") or {}).get("offloaded_reqs", 0)


def _exposed_after_an_offloaded_request(stack) -> list[tuple[str, object]]:
    _serving(stack)
    before = _admitted(stack)
    reply = _generate(stack, 4)  # offloading starts: decode's Mooncake engine for the executor too
    assert reply.status_code == 200 and _admitted(stack) > before, reply.text
    return [(name, s) for name, found in stack.listening().items() for s in found if not s.on_loopback]


def test_defect11_every_listening_socket_of_the_stack_is_on_loopback(stack):
    """Defect 11: every HTTP, bootstrap and control socket is on 127.0.0.1, but each scheduler process had
    Mooncake handshake ports on 0.0.0.0, data ports on [::] and one more [::] port (torch's TCPStore), 5 per
    process once offloading started, on a stack configured for loopback only."""
    exposed = [f"{name} pid {s.pid} {s}" for name, s in _exposed_after_an_offloaded_request(stack)]
    assert exposed == [], f"{len(exposed)} listening sockets not on loopback: {exposed}"


MOONCAKE_PORTS = (r"Transfer Engine RPC using P2P handshake, listening on \S+:(\d+)",  # Mooncake: 0.0.0.0
                  r"TcpTransport: listen on port (\d+)")  # Mooncake: [::]  # fmt: skip


def test_defect11_mooncakes_own_listeners_are_there_and_on_loopback(stack):
    """Defect 11, the listeners no Mooncake setting moves (docs/chaos.md): the ports each server's log names are
    listening, on loopback (the bind-host shim), at least SGLang's engine's two per server, and more once ours
    for the executor transport starts."""
    _exposed_after_an_offloaded_request(stack)
    listening = stack.listening()
    for name in ("prefill-0", "decode-0"):
        log = stack.log_tail(name, 10**8)
        ports = {int(p) for pattern in MOONCAKE_PORTS for p in re.findall(pattern, log)}
        assert len(ports) >= 2, (name, ports)
        mine = {s.port: s for s in listening.get(name, [])}
        for port in ports:
            if port in mine:  # a port the log named once may belong to an engine already closed
                assert mine[port].on_loopback, f"{name}: Mooncake's {mine[port]} is not on loopback"
        assert sum(port in mine for port in ports) >= 2, (name, sorted(ports), sorted(mine))


def test_defect7_an_offloaded_request_longer_than_the_executor_reserve_finishes(stack):
    """Defect 7: an offloaded request decoding more tokens than the executor's reserve was aborted when the
    reserve ran out (near 1000 tokens on the demo's 1024), although the context allows 8192. Here the reserve
    is 256 and the request decodes 320: it must finish, offloaded or not (admission may decode it locally)."""
    _serving(stack)
    reply = _generate(stack, RESERVE_TOKENS + 64)
    assert reply.status_code == 200, reply.text[:500]
    assert reply.json()["meta_info"]["completion_tokens"] == RESERVE_TOKENS + 64, reply.text[:500]


def _proxy_failure_count(stack) -> float:
    """Sum of the proxy's counters of errors and failures (`*_total` samples naming error or fail)."""
    argv = stack.running.spec("proxy").argv
    url = f"http://127.0.0.1:{argv[argv.index('--prometheus-port') + 1]}/metrics"
    text = requests.get(url, timeout=10).text
    total = 0.0
    for line in text.splitlines():
        found = re.match(r"^(\w+_total)(\{[^}]*\})? (\S+)$", line)
        if found and ("error" in found.group(1) or "fail" in found.group(1)):
            total += float(found.group(3))
    return total


def _decode_failure_count(stack) -> int:
    """The largest failure count decode's `/adrenaline/load` reports (any numeric field naming fail)."""
    report = stack.load("decode-0") or {}
    return max((v for k, v in report.items() if "fail" in k and isinstance(v, int) and not isinstance(v, bool)),
               default=0)  # fmt: skip


@pytest.fixture(scope="module")
def failed_offloads(stack):
    """Defect 6's scenario, once: the executor is stopped by fault injection under two offloaded requests;
    how much decode's and the proxy's failure counts grew."""
    _serving(stack)
    proxy_before, decode_before = _proxy_failure_count(stack), _decode_failure_count(stack)
    replies: list = []
    # 2 x (8 prompt + 120) tokens fit the 256-token reserve together: the proxy's capacity admission offloads both
    workers = [threading.Thread(target=lambda: replies.append(_generate(stack, 120, timeout_s=120)))
               for _ in range(2)]  # fmt: skip
    for w in workers:
        w.start()
    assert _wait(lambda: _held(stack) >= 2, 60), "the two requests were not offloaded"
    stop = requests.post(stack.url("prefill-0") + "/adrenaline/executor/stop", timeout=30)
    assert stop.status_code == 200, stop.text
    for w in workers:
        w.join(timeout=120)
    failed = sum(r.status_code != 200 for r in replies)
    assert failed == 2, [(r.status_code, r.text[:200]) for r in replies]  # the executor's error, no hang
    time.sleep(3.0)  # the proxy's next load pull
    return {"failed": failed, "decode": _decode_failure_count(stack) - decode_before,
            "proxy": _proxy_failure_count(stack) - proxy_before}  # fmt: skip


def test_defect6_failed_offloads_are_counted_by_decode(failed_offloads):
    """Defect 6: offloaded requests that failed (their executor gone) were invisible: decode's failure count
    read 0 afterwards (it counted only requests being aborted at that moment). Decode's `/adrenaline/load`
    must count every one (`offload_failures_total`)."""
    assert failed_offloads["decode"] >= failed_offloads["failed"], failed_offloads


def test_defect6_failed_offloads_are_counted_by_the_proxy(failed_offloads):
    """Defect 6: the proxy's metrics read 0 after offloaded requests failed, and the proxy counted those
    requests as answered."""
    assert failed_offloads["proxy"] >= failed_offloads["failed"], failed_offloads


def test_defect10_out_of_vocabulary_and_negative_token_ids_get_a_400_and_prefill_survives(stack):
    """Defect 10: SGLang does not check token ids; negative or out-of-vocabulary ones crashed its prefill
    (IndexError in the embedding). Our front door must answer 400 and prefill must stay up."""
    _serving(stack)
    got = []
    for ids in ([1, 50_000_000, 2], [1, -5, 2]):
        reply = requests.post(stack.proxy_url + "/generate", timeout=60,
                              json={"input_ids": ids, "sampling_params": {"max_new_tokens": 2}})  # fmt: skip
        got.append((reply.status_code, reply.text[:200]))
    time.sleep(3.0)  # a scheduler that failed on them is dead by now
    alive = stack.leader_exit("prefill-0") is None and stack.healthy("prefill-0")
    assert [status for status, _ in got] == [400, 400] and alive, (got, f"prefill alive: {alive}",
                                                                   stack.last_error("prefill-0"))  # fmt: skip


def test_defect5_a_restarted_prefill_serves_offloaded_requests_without_restarting_decode(stack):
    """Defect 5: after prefill was killed and restarted, every offloaded request failed with 503 (`register_memory
    ... -7`: decode's channel still addressed the old executor) until decode was restarted too, and the proxy kept
    offloading to it. Decode must reconnect to the restarted executor: offloaded requests succeed again."""
    _serving(stack, but="prefill-0")  # prefill is restarted here anyway (after test 10 today, it is dead)
    stack.restart("prefill-0")  # kill -9 (if it still runs) and the same command again, same ports
    assert _wait(lambda: (stack.load("prefill-0") or {}).get("executor_healthy"), 60)
    time.sleep(2.0)  # the proxy's next load pull sees the new executor
    got = []
    try:
        for _ in range(4):
            before = _admitted(stack)
            reply = _generate(stack, 8, prompt="The capital of France is", timeout_s=60)
            got.append((reply.status_code, _admitted(stack) > before, reply.text[:160]))
        failures = [g for g in got if g[0] != 200]
        assert len(failures) <= 1 and got[-1][:2] == (200, True), got  # at most the first fails; offloaded again
    finally:
        if not got or got[-1][:2] != (200, True):
            stack.restart_servers(["decode-0"])  # the workaround, for the tests after this one


@pytest.fixture(scope="module")
def decode_death(stack):
    """An offloaded stream decoding, then decode SIGKILLed: what the client saw, and prefill's KV afterwards."""
    _serving(stack)
    seen = {"events": [], "error": None}

    def client():
        try:
            with _generate(stack, 200, stream=True, timeout_s=120) as reply:  # 8 + 200 tokens fit the reserve
                seen["status"] = reply.status_code
                for raw in reply.iter_lines():
                    if raw:
                        seen["events"].append(raw.decode(errors="replace"))
        except requests.RequestException as err:
            seen["error"] = f"{type(err).__name__}: {err}"
        seen["ended"] = time.monotonic()

    worker = threading.Thread(target=client)
    worker.start()
    seen["offloaded"] = _wait(lambda: _held(stack) >= 1 and len(seen["events"]) >= 3, 60)
    killed = time.monotonic()
    stack.signal("decode-0", signal.SIGKILL)
    worker.join(timeout=60)
    seen["stream_end_s"] = seen.get("ended", float("inf")) - killed
    freed = _wait(lambda: (stack.load("prefill-0") or {}).get("executor_kv_tokens") == 0, LEASE_WAIT_S)
    seen["prefill_freed_s"] = time.monotonic() - killed if freed else None
    seen["prefill_kv_tokens"] = (stack.load("prefill-0") or {}).get("executor_kv_tokens")
    return seen


def test_defect9_decode_death_mid_stream_ends_the_stream_with_an_error_event(decode_death):
    """Defect 9: when decode died mid-stream the client's stream just stopped (HTTP 200 was already sent), with
    no error event; a client could not tell a finished answer from a cut one."""
    seen = decode_death
    assert seen["offloaded"], seen
    last = seen["events"][-1] if seen["events"] else ""
    assert last.startswith("data:") and "error" in json.loads(last[5:]), (seen["error"], seen["events"][-2:])
    assert seen["stream_end_s"] < 10.0, seen["stream_end_s"]


def test_defect4_prefill_frees_the_kv_of_a_dead_decodes_requests(decode_death):
    """Defect 4: when decode died, prefill held its offloaded requests' KV forever (also after decode restarted):
    nothing would ever release it. A lease must expire it: here within 30 s of the death."""
    seen = decode_death
    assert seen["offloaded"], seen
    assert seen["prefill_freed_s"] is not None, f"{seen['prefill_kv_tokens']} KV tokens still held after 30 s"

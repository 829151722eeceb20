"""Adrenaline end to end on real SGLang servers (CPU, SmolLM2-135M in fp32, Mooncake TCP on loopback).

One 1P1D stack for the whole module (start-up 40-100 s on 2 cores): `cpu_demo.yaml` with the model in
float32, a 2 s layer timeout on decode and fault injection on prefill. The launcher's proxy runs policy
`never`; the tests start more adrenaline proxies (`always`, `ratio:0.5`, `ratio:1`) in front of the same
prefill and decode instances, so every policy sees the same servers and the same weights.

NOTE fp32: offloaded rows are attended by the executor's kernel, local rows by SGLang's torch_native
backend; in bf16 their roundings differ and may flip a greedy argmax over 32 tokens (not measured). In fp32
the token ids match exactly, which is what the equality test asserts.

Order matters: the stall (SIGSTOP) and the executor kill come last; the kill leaves the executor dead.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
import yaml

from adrenaline_sgl.configs.commands import port_is_free

from .conftest import (
    ADMITTED_OFFLOADED,
    CPU_DEMO,
    PROMPTS,
    REQUEST_TIMEOUT_S,
    ExtraProxy,
    decode_kv_used,
    generate,
    ids_for_all,
    load,
    log_count,
    wait_for,
)

pytestmark = pytest.mark.e2e

REMOTE_TIMEOUT_S = 2.0  # decode's wait for one layer's reply from the executor


def _config(run_dir: Path) -> Path:
    cfg = yaml.safe_load(CPU_DEMO.read_text())
    cfg["model"] = "smollm2:float32"  # bit-exact greedy tokens offloaded vs local (module doc)
    cfg["prefill"]["extra_args"] += ["--adrenaline-enable-fault-injection"]
    cfg["decode"]["extra_args"] += ["--adrenaline-remote-timeout-s", str(REMOTE_TIMEOUT_S)]
    cfg["proxy"]["extra_args"] = ["--policy", "never"]
    cfg["run_dir"] = str(run_dir)
    path = run_dir / "e2e.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from adrenaline_sgl.configs import cluster
    from adrenaline_sgl.launch import start_cluster

    run_dir = tmp_path_factory.mktemp("adrenaline_e2e")
    with start_cluster(cluster.load(str(_config(run_dir)))) as running:
        spec = running.spec("proxy")
        proxies, started = {"never": running.proxy_url}, []
        try:
            for policy in ("always", "ratio:0.5", "ratio:1"):
                started.append(ExtraProxy(spec.argv, spec.env_overrides, policy,
                                          running.folder / f"proxy-{policy.replace(':', '_')}.log"))  # fmt: skip
                proxies[policy] = started[-1].url
            yield running, proxies
        finally:
            for proxy in started:
                proxy.stop()
    for proxy in started:  # the launcher checked its own processes and ports; these are ours
        assert proxy.proc.poll() is not None
        assert port_is_free("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))


def test_greedy_token_ids_identical_with_offload_always_and_ratio_half(stack):
    running, proxies = stack
    reference = ids_for_all(proxies["never"])
    assert log_count(running, "decode-0", ADMITTED_OFFLOADED) == 0  # never: all local
    assert all(ids for ids in reference)
    for policy, expect in (("always", "all"), ("ratio:0.5", "some")):
        before = log_count(running, "decode-0", ADMITTED_OFFLOADED)
        ids = ids_for_all(proxies[policy])
        offloaded = log_count(running, "decode-0", ADMITTED_OFFLOADED) - before
        if expect == "all":
            assert offloaded == len(PROMPTS), offloaded
        else:  # ratio:0.5 = at most one offloaded per two local in flight: a mixed batch
            assert 0 < offloaded < len(PROMPTS), offloaded
        for prompt, want, got in zip(PROMPTS, reference, ids, strict=True):
            assert got == want, f"policy {policy}, prompt {prompt!r}: {got} != {want}"


def test_16_concurrent_mixed_requests_finish_with_their_exact_lengths(stack):
    running, proxies = stack
    lengths = [8 + 3 * i for i in range(16)]  # 8 .. 53 new tokens, ignore_eos: exact
    before = log_count(running, "decode-0", ADMITTED_OFFLOADED)
    with ThreadPoolExecutor(16) as pool:
        replies = list(pool.map(lambda i: generate(proxies["ratio:1"], PROMPTS[i % 8], lengths[i]), range(16)))
    offloaded = log_count(running, "decode-0", ADMITTED_OFFLOADED) - before
    for want, reply in zip(lengths, replies, strict=True):
        assert reply.status_code == 200, reply.text
        assert reply.json()["meta_info"]["completion_tokens"] == want and len(reply.json()["output_ids"]) == want
    assert 0 < offloaded < 16, offloaded  # mixed: offloaded and local rows in the same decode batches


def _stream_text(url: str, prompt: str) -> str:
    body = {"text": prompt, "stream": True, "sampling_params": {"temperature": 0, "max_new_tokens": 16}}
    text = ""
    with requests.post(url + "/generate", json=body, timeout=REQUEST_TIMEOUT_S, stream=True) as reply:
        assert reply.status_code == 200, reply.text
        for raw in reply.iter_lines():  # bytes: the event stream names no charset, it is UTF-8
            line = raw.decode()
            if line.startswith("data:") and "[DONE]" not in line:
                text = json.loads(line[5:])["text"]  # SGLang streams the text so far
    return text


def test_streamed_offloaded_answers_equal_local_ones(stack):
    _, proxies = stack
    local = [generate(proxies["never"], p, 16, ignore_eos=False).json()["text"] for p in PROMPTS[:4]]
    with ThreadPoolExecutor(4) as pool:
        streamed = list(pool.map(lambda p: _stream_text(proxies["always"], p), PROMPTS[:4]))
    assert streamed == local  # the proxy relays decode's event stream of offloaded requests


def _settle(running, proxies) -> None:
    """Releases of finished requests are applied at the prefill scheduler's next pass, and an idle
    `--sleep-on-idle` scheduler passes only when woken: a tiny local request wakes it."""
    wait_for(lambda: load(running, "prefill-0")["executor_kv_tokens"] == 0, 60,
              poke=lambda: generate(proxies["never"], "Hi", 1), what="earlier KV freed on prefill")  # fmt: skip


def _proxy_gauge(running, name: str, instance: str) -> float | None:
    """One gauge of the launcher's proxy `/metrics` (its Prometheus port) for `instance`, None when absent."""
    argv = running.spec("proxy").argv
    url = f"http://{argv[argv.index('--prometheus-host') + 1]}:{argv[argv.index('--prometheus-port') + 1]}/metrics"
    text = requests.get(url, timeout=10).text
    found = re.search(rf'^{name}{{instance="{re.escape(instance)}"}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else None


def test_decode_load_reports_its_real_round_trip_and_running_offloaded_requests(stack):
    """Decode's `/adrenaline/load` carries its scheduler's offload statistics (`decode_stats.py`), and the proxy
    exports them. Round trips here are CPU loopback Mooncake TCP on a shared 2-core box: not performance."""
    running, proxies = stack
    decode_url = running.spec("decode-0").url
    body = {"text": "Count from one to one thousand:", "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 600, "ignore_eos": True}}  # fmt: skip
    with requests.post(proxies["always"] + "/generate", json=body, timeout=REQUEST_TIMEOUT_S, stream=True) as reply:
        assert reply.status_code == 200, reply.text
        chunks = reply.iter_lines()
        next(chunks)  # decoding, offloaded
        wait_for(lambda: load(running, "decode-0")["offloaded_reqs"] == 1, 30, what="decode counts it offloaded")
        wait_for(lambda: load(running, "decode-0")["offload_rtt_ms"] > 0, 30, what="decode reports a round trip")
        report = load(running, "decode-0")
        assert report["offload_stats_ok"] is True and report["offload_rtt_samples"] > 0, report
        assert 0 < report["offload_rtt_p50_ms"] <= report["offload_rtt_p99_ms"], report
        wait_for(lambda: (_proxy_gauge(running, "adrenaline_offload_round_trip_ms", decode_url) or 0) > 0, 30,
                  what="the proxy exports decode's round trip")  # fmt: skip
        assert _proxy_gauge(running, "adrenaline_decode_offload_stats_ok", decode_url) == 1.0
    print(f"decode per-layer round trip (CPU loopback Mooncake TCP, not performance): "
          f"p50 {report['offload_rtt_p50_ms']:.2f} ms, mean {report['offload_rtt_ms']:.2f} ms, "
          f"p99 {report['offload_rtt_p99_ms']:.2f} ms over {report['offload_rtt_samples']} layers; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")


def test_aborted_offloaded_request_frees_its_kv_on_prefill(stack):
    running, proxies = stack
    _settle(running, proxies)
    body = {"text": "Count from one to one thousand:", "stream": True,
            "sampling_params": {"temperature": 0, "max_new_tokens": 900, "ignore_eos": True}}  # fmt: skip
    with requests.post(proxies["always"] + "/generate", json=body, timeout=REQUEST_TIMEOUT_S, stream=True) as reply:
        assert reply.status_code == 200, reply.text
        chunks = reply.iter_lines()
        next(chunks)  # decoding, offloaded
        wait_for(lambda: load(running, "prefill-0")["offloaded_reqs"] == 1, 30, what="executor holds the request")
        held = load(running, "prefill-0")["executor_kv_tokens"]
        assert held > 5, held  # the prompt's KV plus decoded tokens, on prefill
        streamed = sum(1 for _, line in zip(range(40), chunks, strict=False) if line)  # ~20 more decode steps
        used, running_reqs = decode_kv_used(running)
        # decode holds none of its KV: no prompt KV at admission and no local slot per decode step
        assert running_reqs == 1 and used == 0, (running_reqs, used, streamed)
    # closing the stream: the proxy drops its decode connection, SGLang aborts the request, decode tells the
    # executor, prefill frees at its scheduler's next pass (a small local request wakes an idle scheduler)
    freed_s = wait_for(lambda: load(running, "prefill-0")["executor_kv_tokens"] == 0, 60,
                        poke=lambda: generate(proxies["never"], "Hi", 1), what="KV freed on prefill")  # fmt: skip
    assert load(running, "prefill-0")["offloaded_reqs"] == 0
    print(f"aborted offloaded request: {held} KV tokens on prefill freed {freed_s:.1f} s after the close")


def test_executor_stalling_mid_decode_aborts_only_that_request(stack):
    """SIGSTOP the prefill (and its executor): after the layer timeout the offloaded request ends with the
    executor's error, decode stays up; after SIGCONT the pair serves offloaded requests again."""
    running, proxies = stack
    outcome = {}

    def long_request():
        outcome["reply"] = generate(proxies["always"], "Count from one to one hundred:", 400)

    worker = threading.Thread(target=long_request)
    worker.start()
    wait_for(lambda: load(running, "prefill-0")["offloaded_reqs"] == 1, 60, what="executor holds the request")
    time.sleep(1.0)
    group = running.pid("prefill-0")
    os.killpg(group, signal.SIGSTOP)
    try:
        worker.join(timeout=120)
    finally:
        os.killpg(group, signal.SIGCONT)
    assert not worker.is_alive()
    reply = outcome["reply"]
    assert reply.status_code != 200 and "adrenaline executor" in reply.text and "failed" in reply.text, reply.text
    wait_for(lambda: load(running, "prefill-0")["executor_healthy"], 30, what="executor answers again")
    again = generate(proxies["always"], "The capital of France is", 8)
    assert again.status_code == 200 and again.json()["meta_info"]["completion_tokens"] == 8, again.text
    wait_for(lambda: load(running, "prefill-0")["executor_kv_tokens"] == 0, 60,
              poke=lambda: generate(proxies["never"], "Hi", 1), what="stalled request's KV freed")  # fmt: skip


def test_killed_executor_fails_offloaded_requests_fast_local_ones_finish_servers_stay_up(stack):
    running, proxies = stack
    prefill_url = running.spec("prefill-0").url
    results: dict[str, tuple[float, requests.Response]] = {}

    def run(name, url, n):
        reply = generate(url, "Count from one to one hundred:", n)
        results[name] = (time.monotonic(), reply)

    # 2 x (8 prompt + 300 new) tokens fit the executor's 1024-token reserve with room to spare; 2 x 500 left
    # 8 tokens, and a proxy load report one pull old (the stall test's KV still held) made one request local
    workers = [threading.Thread(target=run, args=(f"off{i}", proxies["always"], 300)) for i in range(2)]
    workers += [threading.Thread(target=run, args=(f"local{i}", proxies["never"], 48)) for i in range(2)]
    for w in workers:
        w.start()
    try:
        wait_for(lambda: load(running, "prefill-0")["offloaded_reqs"] == 2, 60, what="both offloaded requests held")
    except AssertionError as err:  # say why: the `always` proxy's decisions and the executor's room
        decisions = [line for line in requests.get(proxies["always"] + "/metrics", timeout=10).text.splitlines()
                     if line.startswith("adrenaline_proxy_requests_total")]  # fmt: skip
        raise AssertionError(f"{err}; prefill load {load(running, 'prefill-0')}; decisions {decisions}") from err
    stop = requests.post(prefill_url + "/adrenaline/executor/stop", timeout=30)
    killed_at = time.monotonic()
    assert stop.status_code == 200, stop.text
    for w in workers:
        w.join(timeout=120)
    assert not any(w.is_alive() for w in workers), "a request hung after the executor was killed"
    for i in range(2):
        done_at, reply = results[f"off{i}"]
        assert reply.status_code != 200, reply.text  # failed with the executor's error, not a hang
        assert "adrenaline executor" in reply.text and "failed" in reply.text, reply.text
        assert done_at - killed_at < REMOTE_TIMEOUT_S + 20, done_at - killed_at  # seconds, on a busy 2-core box
        _, local = results[f"local{i}"]
        assert local.status_code == 200 and local.json()["meta_info"]["completion_tokens"] == 48, local.text
    for name in ("prefill-0", "decode-0"):  # both servers stay up
        assert requests.get(running.spec(name).url + "/health", timeout=10).status_code == 200
    wait_for(lambda: not load(running, "prefill-0")["executor_healthy"], 10, what="load reports the executor dead")
    time.sleep(3)  # the proxy's next load pull (1 s period) sees it too
    after = generate(proxies["always"], "The capital of France is", 8)  # the proxy falls back to local decoding
    assert after.status_code == 200 and after.json()["meta_info"]["completion_tokens"] == 8, after.text
    print(f"executor killed: offloaded requests failed after "
          f"{max(results[f'off{i}'][0] for i in range(2)) - killed_at:.1f} s")

"""1P2D on CPU: two real SGLang decode servers offload to one prefill instance's attention executor at once.

Stack: `cpu_demo.yaml` with `decode.count: 2`, the model in float32 (exact greedy tokens offloaded vs local,
see test_adrenaline_e2e.py) and a 30 s layer timeout on decode (three servers share two cores here). The
launcher's proxy runs `never` (local decoding: the reference); one more adrenaline proxy per decode instance
runs `always` with only that instance behind it, so each request's decode instance is chosen by the test.

What it proves, from the servers' own endpoints and logs: both decode instances report offloaded requests
in the same sample of their `/adrenaline/load`; the executor's `stats` list two clients that each ran layers;
every prompt's greedy token ids equal local decoding; afterwards the executor holds no token and its reserve
is whole again, and each decode instance's `num_used_tokens` is back at its idle value.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from adrenaline_sgl.configs.commands import port_is_free
from adrenaline_sgl.offload import control

from .conftest import (
    ADMITTED_OFFLOADED,
    CPU_DEMO,
    PROMPTS,
    ExtraProxy,
    decode_kv_used,
    generate,
    ids_for_all,
    load,
    log_count,
    wait_for,
)

pytestmark = pytest.mark.e2e

DECODES = ("decode-0", "decode-1")
REMOTE_TIMEOUT_S = 30.0  # decode's wait for one layer's reply (generous: 3 servers on 2 shared cores)
MAX_NEW_TOKENS = 16


def _config(run_dir: Path) -> Path:
    cfg = yaml.safe_load(CPU_DEMO.read_text())
    cfg["model"] = "smollm2:float32"
    cfg["decode"]["count"] = len(DECODES)
    cfg["decode"]["extra_args"] += ["--adrenaline-remote-timeout-s", str(REMOTE_TIMEOUT_S)]
    cfg["proxy"]["extra_args"] = ["--policy", "never"]
    cfg["run_dir"] = str(run_dir)
    path = run_dir / "e2e-1p2d.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def stack_1p2d(tmp_path_factory):
    from adrenaline_sgl.configs import cluster
    from adrenaline_sgl.launch import start_cluster

    run_dir = tmp_path_factory.mktemp("adrenaline_1p2d")
    with start_cluster(cluster.load(str(_config(run_dir)))) as running:
        spec = running.spec("proxy")
        started = []
        try:
            for name in DECODES:  # `always`, in front of one decode instance each
                started.append(ExtraProxy(spec.argv, spec.env_overrides, "always", running.folder / f"proxy-{name}.log",
                                          decode_urls=[running.spec(name).url]))  # fmt: skip
            yield running, running.proxy_url, [p.url for p in started]
        finally:
            for proxy in started:
                proxy.stop()
    for proxy in started:
        assert proxy.proc.poll() is not None
        assert port_is_free("127.0.0.1", int(proxy.url.rsplit(":", 1)[1]))


def _executor_stats(address: str) -> dict:
    ok, stats = control.call(address, "stats", timeout_s=10)
    assert ok, stats
    return stats


def _sample_loads(running, stop: threading.Event, samples: list) -> None:
    """(time, offloaded requests on decode-0, on decode-1), both read in one round, until `stop`."""
    while not stop.is_set():
        try:
            samples.append((time.monotonic(), *(load(running, name)["offloaded_reqs"] for name in DECODES)))
        except Exception as err:  # noqa: BLE001 (a missed sample is not a result; the assertions need hits)
            samples.append((time.monotonic(), f"error: {err}", None))
        stop.wait(0.2)


def test_two_decode_instances_share_one_executor_with_exact_tokens_and_free_kv(stack_1p2d):
    running, never_url, always_urls = stack_1p2d
    t0 = time.monotonic()
    reference = ids_for_all(never_url, PROMPTS, MAX_NEW_TOKENS)  # local decoding on either instance
    assert all(ids for ids in reference)
    assert sum(log_count(running, name, ADMITTED_OFFLOADED) for name in DECODES) == 0
    wait_for(lambda: all(decode_kv_used(running, name)[1] == 0 for name in DECODES), 60, what="decode idle")
    idle_used = {name: decode_kv_used(running, name)[0] for name in DECODES}
    executor = load(running, "prefill-0")["executor_addr"]
    before = _executor_stats(executor)
    assert (before["tokens_held"], before["requests"], before["clients"]) == (0, 0, [])

    # half of the prompts decode offloaded on each instance, all sent at once
    halves = {always_urls[0]: PROMPTS[:4], always_urls[1]: PROMPTS[4:]}
    jobs = [(url, prompt) for url, prompts in halves.items() for prompt in prompts]
    samples: list[tuple] = []
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_loads, args=(running, stop, samples), daemon=True)
    sampler.start()
    try:
        with ThreadPoolExecutor(len(jobs)) as pool:
            replies = list(pool.map(lambda job: generate(job[0], job[1], MAX_NEW_TOKENS, ignore_eos=False), jobs))
    finally:
        stop.set()
        sampler.join(timeout=30)
    for reply in replies:
        assert reply.status_code == 200, reply.text
    for (_, prompt), reply, want in zip(jobs, replies, reference, strict=True):
        assert reply.json()["output_ids"] == want, f"prompt {prompt!r}: offloaded ids differ from local decoding"
    for name in DECODES:  # every request was admitted offloaded, four on each instance
        assert log_count(running, name, ADMITTED_OFFLOADED) == 4, name
    both = [s for s in samples if isinstance(s[1], int) and s[1] >= 1 and s[2] >= 1]
    assert both, f"no /adrenaline/load sample with offloaded requests on both decode instances: {samples}"
    during = _executor_stats(executor)
    served = [c for c in during["clients"] if c["layer_calls"] > 0]
    assert len(served) == 2, during["clients"]  # one client per decode instance, each ran its own steps
    assert during["layer_calls"] == sum(c["layer_calls"] for c in served) == 30 * during["steps"]  # 30 layers

    # KV freed on both sides: prefill releases at its scheduler's next pass (a tiny local request wakes it)
    wait_for(lambda: load(running, "prefill-0")["executor_kv_tokens"] == 0, 60,
             poke=lambda: generate(never_url, "Hi", 1), what="the executor's KV freed on prefill")  # fmt: skip
    after = _executor_stats(executor)
    assert (after["tokens_held"], after["requests"], after["slots_free"]) == (0, 0, before["slots_free"])
    assert load(running, "prefill-0")["offloaded_reqs"] == 0
    for name in DECODES:
        wait_for(lambda n=name: decode_kv_used(running, n) == (idle_used[n], 0), 60, what=f"{name} back to idle")
    t_both = both[0][0] - samples[0][0]
    print(f"1P2D: {len(both)} of {len(samples)} load samples show offloaded requests on both decode instances "
          f"(first {t_both:.1f} s into the offloaded phase, e.g. decode-0 {both[0][1]}, decode-1 {both[0][2]}); "
          f"executor clients: {[(c['steps'], c['layer_calls']) for c in served]} (steps, layer calls); "
          f"token ids equal to local decoding for {len(jobs)} prompts; KV freed on both sides; "
          f"test {time.monotonic() - t0:.0f} s, load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")

"""A pinned 1P1D pair on real SGLang servers (CPU, SmolLM2-135M bf16 as served, Adrenaline, Mooncake TCP):
prefill (with its executor) on CPU 0, decode on CPU 1, decode's KV pool capped.

Checks, read back rather than trusted from the launcher: every process of each server's process group
(launch_server, its scheduler and detokenizer) and every thread of them runs on that server's CPU only
(/proc/<tid>/status), with the thread variables set to one thread (/proc/<pid>/environ, or the process's own
report where setproctitle blanked that block); the proxy is not pinned. Then a capacity-capped decode (pool of
DECODE_POOL_TOKENS) admits offloaded requests whose KV together is several times its pool: all complete,
all offloaded, while decode's used tokens never exceed the cap and prefill's executor holds more than the
whole decode pool at once. No timing assertions (numbers belong in the benchmarks).
"""

from __future__ import annotations

import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
import yaml

from .conftest import ADMITTED_OFFLOADED, CPU_DEMO, decode_kv_used, generate, load, log_count

pytestmark = pytest.mark.e2e

PINS = {"prefill-0": "0", "decode-0": "1"}
DECODE_POOL_TOKENS = 256  # decode's --max-total-tokens: about two of the requests below
DECODE_RESERVE_TOKENS = 16
NUM_REQUESTS, NEW_TOKENS = 8, 96
PROMPT = "Write a long story about a lighthouse keeper and the sea, with many details:"


def _config(run_dir: Path) -> Path:
    cfg = yaml.safe_load(CPU_DEMO.read_text())  # bf16 as served, adrenaline proxy
    cfg["prefill"]["cpus"] = [PINS["prefill-0"]]
    cfg["decode"]["cpus"] = [PINS["decode-0"]]
    # the last --max-total-tokens wins; SGLang's decode reserves 512 tokens per admitted local request by
    # default, more than the whole capped pool (its own warm-up request would wait forever)
    cfg["decode"]["extra_args"] += ["--max-total-tokens", str(DECODE_POOL_TOKENS),
                                    "--num-reserved-decode-tokens", str(DECODE_RESERVE_TOKENS)]
    cfg["proxy"]["extra_args"] = ["--policy", "always"]
    cfg["run_dir"] = str(run_dir)
    cfg["startup_timeout_s"] = 400  # below pytest's timeout, so a stuck start shows its log tail
    path = run_dir / "pinned.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="module")
def pinned(tmp_path_factory):
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip(f"needs CPUs 0 and 1; this process may use {sorted(os.sched_getaffinity(0))}")
    from adrenaline_sgl.configs import cluster
    from adrenaline_sgl.launch import start_cluster

    run_dir = tmp_path_factory.mktemp("pinned_pair")
    with start_cluster(cluster.load(str(_config(run_dir)))) as running:
        yield running


def _status(pid: int, key: str) -> str:
    with open(f"/proc/{pid}/status") as f:
        return next(line.split(":", 1)[1].strip() for line in f if line.startswith(key + ":"))


def _environ(pid: int) -> dict[str, str] | None:
    """The environment block the kernel shows; None where the process overwrote it (setproctitle blanks it)."""
    raw = open(f"/proc/{pid}/environ", "rb").read()
    if not raw or raw.startswith(b"\0"):
        return None
    return dict(item.decode(errors="replace").split("=", 1) for item in raw.split(b"\0") if b"=" in item)


def _self_report(log: str, pid: int) -> str | None:
    """The plugin's line from inside process `pid` (CPUs, torch threads, thread variables), if it printed one."""
    found = re.search(rf"adrenaline_sgl CPU fixes applied \(pid {pid}\): [^\n]*?; (CPUs [^\n]*)", log)
    return found.group(1) if found else None


def _group(pgid: int) -> list[psutil.Process]:
    """Live processes of process group `pgid` (a server and everything it spawned)."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                found.append(proc)
        except (OSError, psutil.Error):
            continue
    return found


def test_every_server_process_and_thread_is_pinned_with_one_thread_each(pinned):
    """Affinity of every thread from /proc/<tid>/status. Thread variables from /proc/<pid>/environ; SGLang's
    retitled processes (sglang::scheduler, sglang::detokenizer) have that block blanked by setproctitle, so
    for them the plugin's line printed from inside the process (CPUs, torch threads, variables) is read."""
    for name, cpu in PINS.items():
        procs = _group(pinned.pid(name))
        log = (pinned.folder / f"{name}.log").read_text(errors="replace")
        assert len(procs) >= 3, [p.cmdline() for p in procs]  # launch_server + scheduler + detokenizer
        from_environ = from_inside = 0
        for proc in procs:
            tasks = os.listdir(f"/proc/{proc.pid}/task")
            allowed = {_status(int(tid), "Cpus_allowed_list") for tid in tasks}
            env, report = _environ(proc.pid), _self_report(log, proc.pid)
            threads = (f"environ OMP_NUM_THREADS={env.get('OMP_NUM_THREADS')} MKL_NUM_THREADS="
                       f"{env.get('MKL_NUM_THREADS')}" if env is not None else "environ blanked")
            print(f"{name} pid {proc.pid} ({' '.join(proc.cmdline()[:3])[:50]}): Cpus_allowed_list "
                  f"{_status(proc.pid, 'Cpus_allowed_list')}, {len(tasks)} threads on {sorted(allowed)}; {threads}; "
                  f"from inside: {report}")
            assert allowed == {cpu}, (name, proc.pid, allowed)
            if env is not None:
                assert env.get("OMP_NUM_THREADS") == "1" and env.get("MKL_NUM_THREADS") == "1", (name, proc.pid)
                from_environ += 1
            else:
                assert report == f"CPUs {cpu}, torch threads 1, OMP_NUM_THREADS=1, MKL_NUM_THREADS=1", report
                from_inside += 1
        assert from_environ >= 1 and from_inside >= 2, (name, from_environ, from_inside)  # leader; scheduler, detok.
    proxy = pinned.pid("proxy")
    launcher_cpus = _status(os.getpid(), "Cpus_allowed_list")
    assert _status(proxy, "Cpus_allowed_list") == launcher_cpus  # not pinned: what the launcher may use
    assert (_environ(proxy) or {}).get("OMP_NUM_THREADS") == os.environ.get("OMP_NUM_THREADS")
    print(f"proxy pid {proxy}: Cpus_allowed_list {_status(proxy, 'Cpus_allowed_list')} (launcher {launcher_cpus})")


def test_capped_decode_admits_offloaded_requests_beyond_its_own_pool(pinned):
    decode_report = load(pinned, "decode-0")
    assert decode_report["max_total_tokens"] == DECODE_POOL_TOKENS, decode_report  # the cap applied
    before = log_count(pinned, "decode-0", ADMITTED_OFFLOADED)
    peak = {"decode_used": 0, "decode_running": 0, "executor_tokens": 0}
    done = threading.Event()

    def watch():
        while not done.is_set():
            try:
                used, running_reqs = decode_kv_used(pinned)
                held = load(pinned, "prefill-0")["executor_kv_tokens"]
            except requests.RequestException:
                continue
            peak["decode_used"] = max(peak["decode_used"], used)
            peak["decode_running"] = max(peak["decode_running"], running_reqs)
            peak["executor_tokens"] = max(peak["executor_tokens"], held)
            time.sleep(0.2)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        with ThreadPoolExecutor(NUM_REQUESTS) as pool:
            replies = list(pool.map(lambda i: generate(pinned.proxy_url, f"{PROMPT} ({i})", NEW_TOKENS),
                                    range(NUM_REQUESTS)))
    finally:
        done.set()
        watcher.join(timeout=30)
    total_kv = 0
    for reply in replies:
        assert reply.status_code == 200, reply.text
        meta = reply.json()["meta_info"]
        assert meta["completion_tokens"] == NEW_TOKENS, meta
        total_kv += meta["prompt_tokens"] + meta["completion_tokens"]
    offloaded = log_count(pinned, "decode-0", ADMITTED_OFFLOADED) - before
    print(f"{NUM_REQUESTS} requests, {total_kv} KV tokens in all vs decode pool {DECODE_POOL_TOKENS}: "
          f"{offloaded} offloaded; peaks: decode used {peak['decode_used']} tokens, decode running "
          f"{peak['decode_running']} requests, executor held {peak['executor_tokens']} tokens")
    assert offloaded == NUM_REQUESTS
    assert total_kv > 3 * DECODE_POOL_TOKENS
    assert peak["decode_used"] <= DECODE_POOL_TOKENS  # offloaded rows take no decode KV slot
    assert peak["executor_tokens"] > DECODE_POOL_TOKENS  # at one moment more KV than decode's whole pool
    assert peak["decode_running"] > 1

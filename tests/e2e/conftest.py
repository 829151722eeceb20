"""Helpers shared by the Adrenaline e2e suites (real SGLang servers started by the launcher): requests,
load endpoints, log counts, waits with a timeout, and extra adrenaline proxies in front of a running stack."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from adrenaline_sgl.configs.commands import pick_free_port

ROOT = Path(__file__).resolve().parents[2]
CPU_DEMO = ROOT / "adrenaline_sgl" / "configs" / "cpu_demo.yaml"
REQUEST_TIMEOUT_S = 300
PROMPTS = [
    "The capital of France is", "Water boils at a temperature of", "The largest planet in the solar system is",
    "A haiku about the sea:", "def fibonacci(n):", "The three primary colors are", "Once upon a time, a small robot",
    "To make a cup of tea, first",
]  # fmt: skip
ADMITTED_OFFLOADED = r"adrenaline: admitted \S+ offloaded to"


def free_port() -> int:
    return pick_free_port("127.0.0.1")


class ExtraProxy:
    """One more adrenaline proxy (its own process group) with another policy, same prefill and decode; with
    `decode_urls`, in front of those decode instances only (a test's way to pick the decode instance)."""

    def __init__(self, base_argv: tuple[str, ...], env: dict, policy: str, log: Path,
                 decode_urls: list[str] | None = None):
        argv = list(base_argv)
        for flag, value in (("--port", str(free_port())), ("--prometheus-port", str(free_port())),
                            ("--policy", policy)):  # fmt: skip
            argv[argv.index(flag) + 1] = value
        if decode_urls is not None:
            while "--decode" in argv:
                del argv[argv.index("--decode") : argv.index("--decode") + 2]
            for url in decode_urls:
                argv += ["--decode", url]
        self.url = f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()[-2000:]
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.5)
        raise AssertionError(f"proxy {policy} not healthy in 60 s: {log.read_text()[-2000:]}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        except ProcessLookupError:
            pass


def generate(url: str, prompt: str, max_new_tokens: int, ignore_eos: bool = True) -> requests.Response:
    body = {"text": prompt, "sampling_params": {"temperature": 0, "max_new_tokens": max_new_tokens,
                                                "ignore_eos": ignore_eos}}  # fmt: skip
    return requests.post(url + "/generate", json=body, timeout=REQUEST_TIMEOUT_S)


def load(running, name: str) -> dict:
    reply = requests.get(running.spec(name).url + "/adrenaline/load", timeout=10)
    reply.raise_for_status()
    return reply.json()


def decode_kv_used(running, name: str = "decode-0") -> tuple[int, int]:
    """(KV tokens in use, running requests) on decode, from SGLang's own `/v1/loads` (scheduler snapshot)."""
    reply = requests.get(running.spec(name).url + "/v1/loads?include=core", timeout=10)
    reply.raise_for_status()
    loads = reply.json()["loads"]
    return sum(d["num_used_tokens"] for d in loads), sum(d["num_running_reqs"] for d in loads)


def log_count(running, name: str, pattern: str) -> int:
    return len(re.findall(pattern, (running.folder / f"{name}.log").read_text(errors="replace")))


def ids_for_all(url: str, prompts: list[str] = PROMPTS, max_new_tokens: int = 32) -> list[list[int]]:
    """Greedy output ids of `prompts`, sent concurrently through `url`."""
    with ThreadPoolExecutor(len(prompts)) as pool:
        replies = list(pool.map(lambda p: generate(url, p, max_new_tokens, ignore_eos=False), prompts))
    for reply in replies:
        assert reply.status_code == 200, reply.text
    return [reply.json()["output_ids"] for reply in replies]


def wait_for(predicate, timeout_s: float, poke=None, what: str = "") -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if predicate():
            return time.monotonic() - t0
        if poke is not None:
            poke()
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout_s} s: {what}")

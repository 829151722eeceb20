"""The demo stack under test: `cpu_demo.yaml` (policy `always`) with fault injection, started by the launcher.

`ChaosStack` wraps the launcher's `RunningCluster` with what the phases need: process groups and their
members, signals, restarts of one server (same ports, same command), health, the KV each side holds, and
what is left behind. NOTE: restarts run on the main thread: the launcher's children get SIGTERM when the
thread that started them ends (PR_SET_PDEATHSIG), so a worker thread must never start one.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import requests
import yaml

from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import port_is_free
from adrenaline_sgl.launch import RunningCluster, group_members, prefill_forget_s, start_cluster
from adrenaline_sgl.protocol import LOAD_PATH, OFFLOAD_KEY
from adrenaline_sgl.tools.chaos import sockets

ROOT = Path(__file__).resolve().parents[3]
CPU_DEMO = ROOT / "adrenaline_sgl" / "configs" / "cpu_demo.yaml"
SERVERS = ("prefill-0", "decode-0")
NAMES = (*SERVERS, "proxy")
PROBE_TIMEOUT_S = 5.0


def demo_config(run_dir: Path, prefill_args: tuple[str, ...] = (), decode_args: tuple[str, ...] = (),
                policy: str = "always") -> cluster.ClusterConfig:
    """`cpu_demo.yaml` with fault injection on prefill (`POST /adrenaline/executor/stop`), extra server args,
    the proxy's policy, and logs under `run_dir`."""
    data = yaml.safe_load(CPU_DEMO.read_text())
    data["prefill"]["extra_args"] = [*data["prefill"]["extra_args"], "--adrenaline-enable-fault-injection",
                                     *prefill_args]  # fmt: skip
    data["decode"]["extra_args"] = [*data["decode"]["extra_args"], *decode_args]
    data["proxy"]["extra_args"] = ["--policy", policy]
    data["run_dir"] = str(run_dir)
    return cluster.from_dict(data)


@dataclass(frozen=True)
class KV:
    """KV in use on both sides, as the instances report it (None: the instance did not answer)."""

    executor_tokens: int | None  # prefill /adrenaline/load executor_kv_tokens
    executor_reqs: int | None  # prefill /adrenaline/load offloaded_reqs
    prefill_used: int | None  # prefill /v1/loads num_used_tokens (the executor's reserve included)
    decode_used: int | None  # decode /v1/loads num_used_tokens
    decode_running: int | None  # decode /v1/loads num_running_reqs + num_waiting_reqs

    def held_sides(self, idle: KV) -> tuple[int, int]:
        """(prefill, decode) tokens held beyond `idle` (an idle reading of the same servers); unknown: 0."""
        prefill = max(self.executor_tokens or 0, (self.prefill_used or 0) - (idle.prefill_used or 0))
        return max(0, prefill), max(0, (self.decode_used or 0) - (idle.decode_used or 0))

    def settled(self, idle: KV, floor: tuple[int, int]) -> bool:
        """Both sides answer, decode runs nothing, and neither holds more than `floor` (tokens already counted
        as leaked earlier) beyond idle."""
        if None in (self.executor_tokens, self.prefill_used, self.decode_used, self.decode_running):
            return False
        prefill, decode = self.held_sides(idle)
        return self.decode_running == 0 and prefill <= floor[0] and decode <= floor[1]


class ChaosStack:
    """A started demo stack (use `ChaosStack.start(cfg)` as a context manager)."""

    def __init__(self, running: RunningCluster):
        self.running = running
        self.idle = KV(0, 0, 0, 0, 0)
        self.killed: set[str] = set()  # groups this harness killed on purpose (not crashes)
        self._rng = random.Random(0)

    @classmethod
    @contextlib.contextmanager
    def start(cls, cfg: cluster.ClusterConfig) -> Iterator[ChaosStack]:
        """Start every process and wait for health (the launcher: logs, run.json, clean stop, leftovers check)."""
        with start_cluster(cfg) as running:
            stack = cls(running)
            stack.idle = stack.idle_reading()
            yield stack

    # ---- processes --------------------------------------------------------------------------------------
    def url(self, name: str) -> str:
        return self.running.spec(name).url

    @property
    def proxy_url(self) -> str:
        return self.running.proxy_url

    @property
    def folder(self) -> Path:
        return self.running.folder

    def group(self, name: str) -> int:
        return self.running.pid(name)

    def members(self, name: str) -> list[int]:
        """Live (non-zombie) processes of `name`'s process group."""
        return group_members(psutil, self.group(name))

    def leader_exit(self, name: str) -> int | None:
        """The group leader's exit code, None while it runs."""
        for spec, popen in self.running.procs.running:
            if spec.name == name:
                return popen.poll()
        return None

    def signal(self, name: str, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.group(name), sig)
        if sig == signal.SIGKILL:
            self.killed.add(name)

    def healthy(self, name: str, timeout_s: float = PROBE_TIMEOUT_S) -> bool:
        try:
            return requests.get(self.url(name) + "/health", timeout=timeout_s).status_code == 200
        except requests.RequestException:
            return False

    def dead(self) -> list[str]:
        """Processes whose group leader exited."""
        return [name for name in NAMES if self.leader_exit(name) is not None]

    def log_tail(self, name: str, n_chars: int = 20000) -> str:
        try:
            return (self.folder / f"{name}.log").read_text(errors="replace")[-n_chars:]
        except OSError:
            return ""

    def last_error(self, name: str) -> str:
        """The last exception line (`SomeError: message`) of `name`'s log, else its last line naming an error
        (one line, for the figures)."""
        lines = [ln.strip() for ln in self.log_tail(name, 200_000).splitlines() if "Ignore import error" not in ln]
        for line in reversed(lines):
            if re.search(r"\b\w+(Error|Exception): ", line):
                return line[:300]
        for line in reversed(lines):
            if any(word in line for word in ("Error", "error:", "Exception", "FAILED", "Killed", "Aborted")):
                return line[:300]
        return ""

    def restart(self, name: str, timeout_s: float = 600.0) -> float:
        """`restart_servers([name])` without re-reading the idle KV. Main thread only."""
        return self._restart([name], timeout_s)

    def _restart(self, names: list[str], timeout_s: float = 600.0) -> float:
        """SIGKILL the groups (if anything is left), wait until their members and ports are gone, start the same
        commands again on the same ports, all at once (imports overlap), wait for /health. Returns the seconds."""
        assert threading.current_thread() is threading.main_thread(), "restarts must run on the main thread"
        t0 = time.monotonic()
        specs = [self.running.spec(n) for n in sorted(names, key=NAMES.index)]
        for spec in specs:
            self.signal(spec.name, signal.SIGKILL)
        deadline = time.monotonic() + 30

        def gone(spec) -> bool:
            return not self.members(spec.name) and all(port_is_free(spec.host, p) for p in spec.ports)

        while not all(gone(s) for s in specs) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = {s.name: self.members(s.name) for s in specs if self.members(s.name)}
        if left:
            raise RuntimeError(f"restart: processes {left} of the old groups still run after SIGKILL")
        procs = self.running.procs
        for spec, popen in list(procs.running):
            if spec.name in names:
                with contextlib.suppress(Exception):
                    popen.wait(timeout=5)  # reap the old leader
        procs.running = [(s, p) for s, p in procs.running if s.name not in names]
        if any(s.role == "prefill" for s in specs):  # decode instances must first drop the dead prefill
            time.sleep(max(0.0, prefill_forget_s() - (time.monotonic() - t0)))
        for spec in specs:  # keep the old log (the crash is in it): <name>.log.1, .2, ...
            log = self.folder / spec.log_name
            if log.exists():
                n = 1 + sum(1 for _ in self.folder.glob(f"{spec.log_name}.*"))
                log.rename(self.folder / f"{spec.log_name}.{n}")
        procs.start(specs)
        procs.wait_healthy(specs, timeout_s)
        self.killed -= set(names)
        return time.monotonic() - t0

    def restart_servers(self, names: list[str]) -> float:
        """Restart these processes together (same commands and ports) and re-read the idle KV of the restarted
        servers. Returns the seconds it took."""
        took = self._restart(names)
        self.idle = self.idle_reading(tuple(n for n in names if n in SERVERS))
        return took

    # ---- what the instances report ----------------------------------------------------------------------
    def _get(self, name: str, path: str) -> dict | None:
        try:
            reply = requests.get(self.url(name) + path, timeout=PROBE_TIMEOUT_S)
            return reply.json() if reply.status_code == 200 else None
        except (requests.RequestException, ValueError):
            return None

    def load(self, name: str) -> dict | None:
        """`GET /adrenaline/load` of a server (None: no answer)."""
        return self._get(name, LOAD_PATH)

    def sglang_loads(self, name: str) -> tuple[int, int] | None:
        """(num_used_tokens, running + waiting requests) from SGLang's own `/v1/loads` (None: no answer)."""
        found = self._get(name, "/v1/loads?include=core")
        if found is None:
            return None
        loads = found.get("loads", [])
        return (sum(int(d.get("num_used_tokens", 0)) for d in loads),
                sum(int(d.get("num_running_reqs", 0)) + int(d.get("num_waiting_reqs", 0)) for d in loads))

    def kv(self) -> KV:
        p, d = self.load("prefill-0"), self.sglang_loads("decode-0")
        ps = self.sglang_loads("prefill-0")
        return KV(None if p is None else int(p["executor_kv_tokens"]), None if p is None else int(p["offloaded_reqs"]),
                  None if ps is None else ps[0], None if d is None else d[0], None if d is None else d[1])  # fmt: skip

    def poke(self) -> None:
        """One tiny local (not offloaded) request straight to prefill and decode, as a proxy sends it: it wakes
        an idle `--sleep-on-idle` prefill scheduler, whose next pass applies pending releases."""
        spec = self.running.spec("prefill-0")
        body = {"text": "Hi", "sampling_params": {"max_new_tokens": 1, "custom_params": {OFFLOAD_KEY: False}},
                "bootstrap_host": spec.host, "bootstrap_port": spec.ports[1],
                "bootstrap_room": self._rng.randint(0, 2**63 - 1)}  # fmt: skip

        def post(url):
            with contextlib.suppress(requests.RequestException):
                requests.post(url + "/generate", json=body, timeout=15)

        threads = [threading.Thread(target=post, args=(self.url(n),), daemon=True) for n in SERVERS]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=16)

    def settle(self, timeout_s: float, floor: tuple[int, int] = (0, 0), poke_every_s: float = 3.0) -> tuple[float, KV]:
        """Wait until the KV reads idle against `self.idle`, up to `floor` tokens per side already counted (polling
        wakes prefill; a poke when it does not settle). Returns (seconds waited, the last reading)."""
        t0, last_poke = time.monotonic(), time.monotonic()
        reading = self.kv()
        while time.monotonic() - t0 < timeout_s:
            reading = self.kv()
            if reading.settled(self.idle, floor):
                return time.monotonic() - t0, reading
            if time.monotonic() - last_poke > poke_every_s and not self.dead():
                self.poke()
                last_poke = time.monotonic()
            time.sleep(0.5)
        return time.monotonic() - t0, reading

    def idle_reading(self, sides: tuple[str, ...] = SERVERS, timeout_s: float = 30.0) -> KV:
        """The idle reference `settle` compares with, re-read for freshly (re)started `sides` (their used
        tokens: the prefill's include the executor's reserve), kept for the others (whose held KV is not idle).
        Waits until the restarted sides answer."""
        deadline = time.monotonic() + timeout_s
        reading = self.kv()
        while (("prefill-0" in sides and reading.prefill_used is None)
               or ("decode-0" in sides and reading.decode_used is None)) and time.monotonic() < deadline:  # fmt: skip
            time.sleep(0.5)
            reading = self.kv()
        return KV(0, 0, reading.prefill_used if "prefill-0" in sides else self.idle.prefill_used,
                  reading.decode_used if "decode-0" in sides else self.idle.decode_used, 0)

    # ---- what is exposed and what is left --------------------------------------------------------------
    def listening(self) -> dict[str, list[sockets.Listening]]:
        """Listening sockets of every live process of each group."""
        return {name: sockets.listening(self.members(name)) for name in NAMES}

    def ports_in_use(self, name: str) -> list[int]:
        spec = self.running.spec(name)
        return [p for p in spec.ports if not port_is_free(spec.host, p)]


def support_dirs(folder: Path) -> list[Path]:
    """The CPU support folders of the launcher's runs under `folder` (every process of a run has its own on
    PYTHONPATH, which is how `strays` recognises them)."""
    return sorted(folder.rglob("cpu_support"))


def strays(folder: Path) -> list[int]:
    """Live processes started by a run under `folder`: their PYTHONPATH names one of its support folders."""
    marks = [str(d.resolve()) for d in support_dirs(folder)]
    found = []
    if not marks:
        return found
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["pid"] == os.getpid():
                continue
            path = proc.environ().get("PYTHONPATH", "")
            if any(mark in path for mark in marks):
                found.append(proc.info["pid"])
        except psutil.Error:
            continue
    return found



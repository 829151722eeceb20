"""Start an nPmD SGLang PD cluster plus its proxy from a cluster YAML, on one machine.

    python -m adrenaline_sgl.launch --config adrenaline_sgl/configs/cpu_demo.yaml           # serve until Ctrl-C
    python -m adrenaline_sgl.launch --config adrenaline_sgl/configs/cpu_demo.yaml --check   # ask, check, stop
    python -m adrenaline_sgl.launch --config <multi-node.yaml> --print-commands            # per-node commands

Every process runs in its own process group with its log in <run_dir>/<timestamp>/<name>.log, beside
`run.json` (resolved config, commands, ports, timings). The launcher waits for /health with a timeout;
on a failure it prints the tail of the failing process's log. It prints where the proxy's metrics are.
While serving it supervises: a process that exits is started again (`restart`, at most `restart_limit`
times) or marked down, and the rest keep serving (the proxy routes around a down server). On exit, Ctrl-C
or SIGTERM it stops every group (SIGTERM, then SIGKILL after `stop_timeout_s`) and checks that no process
is left and every port is free again. A server with `cpus` in its role is pinned before exec
(`sched_setaffinity` in the child: SGLang's scheduler and detokenizer processes inherit it) with thread
counts to match (configs/cpus.py); the proxy is not pinned. Schema of the YAML:
adrenaline_sgl/configs/cluster.py; commands: configs/commands.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import (
    PROXY_MODULES,
    ProcessSpec,
    assign_ports,
    build_plan,
    format_command,
    port_is_free,
)
from adrenaline_sgl.configs.cpus import check_available, format_cpu_list

CHECK_QUESTION = "What is the capital of France?"
CHECK_EXPECTED = "Paris"


class LaunchError(RuntimeError):
    """A process failed to start, died, or did not become healthy in time (message says which)."""


def _log_tail(path: Path, n_lines: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        return f"(no log: {err})"
    return "\n".join(lines[-n_lines:])


def _last_error_line(path: Path) -> str:
    """The last line of a log naming an error (its crash cause, for one line on the console), else ""."""
    for line in reversed(_log_tail(path, 200).splitlines()):
        if any(word in line for word in ("Error", "error:", "Exception", "Killed", "Traceback")):
            return line.strip()[:300]
    return ""


BIND_ERROR = "error while attempting to bind on address"  # uvicorn's, for the server's own HTTP port


def _bind_error(path: Path) -> str:
    """The server's HTTP bind failure from its log, else "" (read from the last 64 KiB)."""
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            tail = f.read().decode(errors="replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if BIND_ERROR in line]
    return lines[-1][-200:] if lines else ""


def prefill_forget_s(env=None) -> float:
    """Seconds after a prefill instance dies before it may serve again on the same address. SGLang's decode
    instances poll each prefill's bootstrap server every SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL seconds (5)
    and drop what they cached of it (its KV endpoints) after SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE misses
    in a row (2). A prefill back on its address sooner is taken for the old process, and every new request to
    it waits on the dead process's endpoints (make e2e, 2026-12-05: the first request after a quick restart hung
    60 s). Their product plus one interval of margin: 15 s by default."""
    env = os.environ if env is None else env
    interval = max(float(env.get("SGLANG_DISAGGREGATION_HEARTBEAT_INTERVAL", 5.0)), 2.0)
    misses = max(int(env.get("SGLANG_DISAGGREGATION_HEARTBEAT_MAX_FAILURE", 2)), 1)
    return interval * (misses + 1)


def _set_parent_death_signal() -> None:
    """In the child before exec: SIGTERM when the launcher dies, so a SIGKILLed launcher leaves nothing."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG (Linux)
    except OSError:
        pass


def _child_setup(cpus: tuple[int, ...]) -> Callable[[], None]:
    """What runs in the child before exec: the parent-death signal, and the CPU pinning when `cpus`."""

    def setup() -> None:
        _set_parent_death_signal()
        if cpus:
            os.sched_setaffinity(0, cpus)

    return setup


class ProcessGroupSet:
    """The launched processes, each the leader of its own process group (`start_new_session`)."""

    def __init__(self, folder: Path, stop_timeout_s: float):
        self.folder = folder
        self.stop_timeout_s = stop_timeout_s
        self.running: list[tuple[ProcessSpec, subprocess.Popen]] = []
        self.started: dict[str, int] = {}  # name -> pid (= process group id), kept after stop_all
        self.restarts: dict[str, int] = {}  # name -> times `supervise` restarted it
        self.down: set[str] = set()  # exited and not restarted (the rest keep serving)

    def start(self, specs: list[ProcessSpec]) -> None:
        for spec in specs:
            log = open(self.folder / spec.log_name, "wb")  # noqa: SIM115 (closed by the child's exit)
            with log:
                popen = subprocess.Popen(
                    spec.argv, env={**os.environ, **spec.env_overrides}, stdout=log, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_child_setup(spec.cpus),
                )
            self.running.append((spec, popen))
            self.started[spec.name] = popen.pid
            pinned = f", pinned to CPU {format_cpu_list(spec.cpus)}" if spec.cpus else ""
            print(f"launch: started {spec.name} (pid {popen.pid}) on {spec.url}{pinned}, log {spec.log_name}",
                  flush=True)

    def _failed(self, spec: ProcessSpec, what: str) -> LaunchError:
        path = self.folder / spec.log_name
        return LaunchError(f"{spec.name} {what}; last lines of {path}:\n{_log_tail(path)}")

    def wait_healthy(self, specs: list[ProcessSpec], timeout_s: float) -> float:
        """Poll each spec's /health until all answer 200; raise LaunchError on death or timeout."""
        import requests
        from tqdm import tqdm

        popens = {spec.name: popen for spec, popen in self.running}
        pending = list(specs)
        t0 = time.monotonic()
        # A live bar on a terminal; one line per healthy process either way (CI logs are not terminals).
        with tqdm(total=len(specs), desc="launch: waiting for /health", file=sys.stdout, leave=False,
                  bar_format="{desc}: {n}/{total} healthy [{elapsed}]", disable=not sys.stdout.isatty()) as bar:
            while pending:
                for spec in list(pending):
                    code = popens[spec.name].poll()
                    if code is not None:
                        raise self._failed(spec, f"exited with code {code} before it was healthy")
                    bind_error = _bind_error(self.folder / spec.log_name)
                    if bind_error:  # uvicorn logs it and SGLang's process stays up: it would never be healthy
                        raise self._failed(spec, f"could not bind its port ({bind_error})")
                    try:
                        ok = requests.get(spec.health_url, timeout=2).status_code == 200
                    except requests.RequestException:
                        ok = False
                    if ok:
                        pending.remove(spec)
                        bar.update(1)
                        tqdm.write(f"launch: {spec.name} healthy after {time.monotonic() - t0:.1f} s", file=sys.stdout)
                if pending and time.monotonic() - t0 > timeout_s:
                    raise self._failed(pending[0], f"not healthy after {timeout_s:.0f} s (startup_timeout_s)")
                if pending:
                    time.sleep(1.0)
        return time.monotonic() - t0

    def serve_until_exit(self, restart: bool, restart_limit: int, startup_timeout_s: float,
                         tick_s: float = 1.0) -> None:  # fmt: skip
        """Supervise until a signal interrupts (`supervise` once per `tick_s`); raises LaunchError only when the
        proxy is down for good, since then nothing serves."""
        while True:
            self.supervise(restart, restart_limit, startup_timeout_s)
            time.sleep(tick_s)

    def supervise(self, restart: bool, restart_limit: int, startup_timeout_s: float) -> list[str]:
        """One look at every process. One that exited on its own is started again (`restart`, at most
        `restart_limit` times each) or marked down, and the others keep serving: one death does not take the
        stack down (the proxy routes around a down server). Returns the names seen dead this time; raises
        LaunchError when the proxy is down for good. Main thread only (children die with the thread that
        started them, PR_SET_PDEATHSIG)."""
        seen = []
        for spec, popen in list(self.running):
            if spec.name in self.down or popen.poll() is None:
                continue
            seen.append(spec.name)
            cause = _last_error_line(self.folder / spec.log_name)
            print(f"launch: {spec.name} exited with code {popen.returncode} while serving"
                  f"{': ' + cause if cause else ''}", flush=True)  # fmt: skip
            if restart and self.restarts.get(spec.name, 0) < restart_limit:
                self.restarts[spec.name] = self.restarts.get(spec.name, 0) + 1
                try:
                    took = self.restart(spec, startup_timeout_s)
                    print(f"launch: restarted {spec.name} (pid {self.started[spec.name]}) in {took:.1f} s, restart "
                          f"{self.restarts[spec.name]} of {restart_limit}", flush=True)  # fmt: skip
                except LaunchError as err:
                    print(f"launch: restart {self.restarts[spec.name]} of {restart_limit} of {spec.name} failed: "
                          f"{str(err).splitlines()[0]}", flush=True)  # fmt: skip
                continue  # a failed restart is seen dead again at the next look
            self.down.add(spec.name)
            why = f"restarted {restart_limit} times already" if restart else "restart: false"
            if spec.role == "proxy":
                raise self._failed(spec, f"is down ({why}): nothing serves requests")
            print(f"launch: {spec.name} is down ({why}); the proxy routes around it, the rest keep serving",
                  flush=True)  # fmt: skip
        return seen

    def restart(self, spec: ProcessSpec, startup_timeout_s: float) -> float:
        """Start `spec` again: SIGKILL what is left of its group, wait until its members and ports are gone, keep
        the old log as `<name>.log.N`, the same command on the same ports, wait for /health (LaunchError when it
        dies or is not healthy in time; it is then killed). Returns the seconds it took."""
        import psutil

        t0 = time.monotonic()
        old = next(p for s, p in self.running if s.name == spec.name)
        _signal_group(old.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (group_members(psutil, old.pid)
                                               or not all(port_is_free(spec.host, p) for p in spec.ports)):  # fmt: skip
            time.sleep(0.2)
        with contextlib.suppress(subprocess.TimeoutExpired):
            old.wait(timeout=5)
        if group_members(psutil, old.pid):
            raise LaunchError(f"{spec.name}: processes {group_members(psutil, old.pid)} of the old group survive "
                              "SIGKILL")  # fmt: skip
        self.running = [(s, p) for s, p in self.running if s.name != spec.name]
        if spec.role == "prefill":  # decode instances must first drop the dead one (SGLang's heartbeat)
            wait_s = prefill_forget_s() - (time.monotonic() - t0)
            if wait_s > 0:
                print(f"launch: {spec.name} restarts in {wait_s:.0f} s (decode instances first drop the old process: "
                      "SGLang's heartbeat)", flush=True)
                time.sleep(wait_s)
        log = self.folder / spec.log_name
        if log.exists():
            log.rename(self.folder / f"{spec.log_name}.{1 + sum(1 for _ in self.folder.glob(spec.log_name + '.*'))}")
        self.start([spec])
        try:
            self.wait_healthy([spec], startup_timeout_s)
        except LaunchError:
            _signal_group(self.started[spec.name], signal.SIGKILL)
            raise
        return time.monotonic() - t0

    def stop_all(self) -> list[str]:
        """Stop every group (proxy first): SIGTERM, then SIGKILL to the group after the grace time.

        Returns what is left (live processes of the groups, ports still bound); empty when clean."""
        import psutil

        leaders = [popen for _, popen in reversed(self.running)]
        for popen in leaders:
            # NOTE: the leader only: SGLang's launch_server drains and stops its own children on SIGTERM;
            # signalling the children too makes it report them as crashed and wait 5 s for diagnostics.
            if popen.poll() is None:
                popen.send_signal(signal.SIGTERM)
        orphans_termed: set[int] = set()
        deadline = time.monotonic() + self.stop_timeout_s
        while time.monotonic() < deadline and any(group_members(psutil, p.pid) for p in leaders):
            for popen in leaders:  # a leader that is gone left members behind: SIGTERM them at once
                if popen.poll() is not None and popen.pid not in orphans_termed:
                    orphans_termed.add(popen.pid)
                    _signal_group(popen.pid, signal.SIGTERM)
            time.sleep(0.2)
        for popen in leaders:
            if group_members(psutil, popen.pid):
                print(f"launch: group {popen.pid} still running {self.stop_timeout_s} s after SIGTERM: SIGKILL",
                      flush=True)
                _signal_group(popen.pid, signal.SIGKILL)
        for _, popen in self.running:
            try:
                popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        leftovers = []
        deadline = time.monotonic() + 10
        for spec, popen in self.running:
            while group_members(psutil, popen.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if group_members(psutil, popen.pid):
                leftovers.append(f"{spec.name}: pids {group_members(psutil, popen.pid)} still running")
            for port in spec.ports:
                while not port_is_free(spec.host, port) and time.monotonic() < deadline:
                    time.sleep(0.2)
                if not port_is_free(spec.host, port):
                    leftovers.append(f"{spec.name}: port {port} still bound")
        self.running = []
        return leftovers


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(psutil, pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`."""
    found = []
    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.info["pid"]) == pgid:
                found.append(proc.info["pid"])
        except (ProcessLookupError, psutil.Error, OSError):
            continue
    return found


class _Stop(Exception):
    """Raised in the main thread by SIGTERM (SIGINT raises KeyboardInterrupt)."""


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


def ask(url: str, question: str = CHECK_QUESTION, max_tokens: int = 32, timeout_s: float = 300.0) -> str:
    """One greedy chat-templated question through the proxy's OpenAI endpoint; returns the answer text."""
    import requests

    body = {
        "model": "default",
        "messages": [{"role": "user", "content": question}],
        "temperature": 0.0,
        "max_tokens": max_tokens,
    }
    reply = requests.post(f"{url}/v1/chat/completions", json=body, timeout=timeout_s)
    if reply.status_code != 200:
        raise LaunchError(f"{url}/v1/chat/completions answered HTTP {reply.status_code}: {reply.text[:500]}")
    return reply.json()["choices"][0]["message"]["content"]


def _run_dir(base: str) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = Path(base) / f"{stamp}-{os.getpid()}"
    folder.mkdir(parents=True, exist_ok=False)
    return folder


def _write_run_json(folder: Path, cfg: cluster.ClusterConfig, plan: list[ProcessSpec], record: dict) -> None:
    payload = {
        "config": dataclasses.asdict(cfg),
        "processes": [{"name": p.name, "command": format_command(p), "log": p.log_name, "ports": p.ports,
                       "cpus": format_cpu_list(p.cpus) if p.cpus else None} for p in plan],
        **record,
    }
    (folder / "run.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")


@dataclasses.dataclass
class RunningCluster:
    """A started cluster, as `start_cluster` yields it. `record` goes into run.json when it stops."""

    folder: Path
    plan: list[ProcessSpec]
    procs: ProcessGroupSet
    record: dict

    @property
    def proxy_url(self) -> str:
        return self.spec("proxy").url

    def spec(self, name: str) -> ProcessSpec:
        """`prefill-<i>`, `decode-<i>` or `proxy`."""
        for p in self.plan:
            if p.name == name:
                return p
        raise KeyError(f"no process {name!r}; have {[p.name for p in self.plan]}")

    def pid(self, name: str) -> int:
        """PID of the process's group leader (= its process group id)."""
        return self.procs.started[name]


def _check_startable(cfg: cluster.ClusterConfig) -> None:
    if not cfg.is_local:
        raise LaunchError(
            f"hosts {sorted(cfg.hosts - set(cluster.LOCAL_HOSTS))} are not this machine; "
            "use --print-commands and run each node's commands there"
        )
    for name in ("prefill", "decode"):
        role = getattr(cfg, name)
        for i in range(len(role.cpus)):
            try:
                check_available(role.cpus_of(i, name), f"{name}.cpus[{i}] = {role.cpus[i]!r}")
            except ValueError as err:
                raise LaunchError(str(err)) from None
    proxy_module = PROXY_MODULES[cfg.proxy.kind]
    if importlib.util.find_spec(proxy_module) is None:
        raise LaunchError(f"proxy.kind {cfg.proxy.kind!r} needs the module {proxy_module}, which is not installed")


@contextlib.contextmanager
def start_cluster(cfg: cluster.ClusterConfig, run_dir: str | os.PathLike | None = None) -> Iterator[RunningCluster]:
    """Start every process, wait until all answer /health, yield; always stop everything on exit.

    Raises LaunchError (with the failing log's tail) when a process dies or misses `startup_timeout_s`,
    and on exit when a process or a bound port is left over. Usable from tests (the e2e suites) as well
    as from the CLI.
    """
    _check_startable(cfg)
    folder = _run_dir(run_dir or cfg.run_dir)
    t0 = time.monotonic()
    model_dir = cluster.resolve_model(cfg.model)
    if cfg.emulate is not None:  # emulated GPU: serve the tiny stand-in, trace into the run folder
        from adrenaline_sgl.emulate import standin

        if cfg.emulate.trace_dir is None:
            cfg = dataclasses.replace(cfg, emulate=dataclasses.replace(cfg.emulate,
                                                                       trace_dir=str(folder.resolve() / "emulate")))
        model_dir = str(standin.checkpoint_dir(cfg.emulate.model, model_dir))
    support_dir = None
    if cfg.cpu_support:
        from adrenaline_sgl.sglang_ext.cpu import server_env

        support_dir = server_env.write_support_dir(folder.resolve() / "cpu_support")
    bind_shim = None
    if cfg.bind_host_shim:
        from adrenaline_sgl.support import bind_host

        bind_shim, why_not = bind_host.build(folder.resolve() / "bind_host")
        if bind_shim is None:
            print(f"launch: {why_not}; servers start without it (Mooncake's listeners on every interface)",
                  flush=True)  # fmt: skip
    plan = build_plan(cfg, model_dir, assign_ports(cfg, pick_free=True), python=sys.executable,
                      support_dir=support_dir, bind_shim=bind_shim)
    running = RunningCluster(folder, plan, ProcessGroupSet(folder, stop_timeout_s=cfg.stop_timeout_s),
                             {"started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    print(f"launch: run folder {folder} (logs, run.json)", flush=True)
    _write_run_json(folder, cfg, plan, running.record)
    leftovers: list[str] = []
    try:
        # NOTE: all at once: the router does not need healthy servers to start, and its ~10 s of imports
        # overlap the servers' start-up.
        running.procs.start(plan)
        running.procs.wait_healthy(plan, cfg.startup_timeout_s)
        running.record["all_healthy_s"] = round(time.monotonic() - t0, 1)
        yield running
    finally:
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:  # no second interrupt in the middle of the clean-up
            old_int, old_term = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM,
                                                                                              signal.SIG_IGN)
        try:
            leftovers = running.procs.stop_all()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, old_int)
                signal.signal(signal.SIGTERM, old_term)
        running.record.update(group_leader_pids=running.procs.started, leftovers=leftovers,
                              wall_s=round(time.monotonic() - t0, 1))
        _write_run_json(folder, cfg, plan, running.record)
    if leftovers:
        raise LaunchError(f"clean-up left {leftovers}")


def run(cfg: cluster.ClusterConfig, check: bool, run_dir: str | None = None) -> int:
    """Start the cluster; serve until stopped, or (check) ask one question and stop. Returns the exit code."""
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    # NOTE: explicit, because a shell starts background jobs with SIGINT ignored, and Python then keeps it
    # ignored: `make demo &` followed by `kill -INT` would otherwise leave the whole stack running.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    code = 1
    record: dict = {}
    try:
        with start_cluster(cfg, run_dir) as running:
            record = running.record
            record["check"] = check
            print(f"launch: ready in {record['all_healthy_s']} s; serving at {running.proxy_url} "
                  f"(POST /generate, /v1/chat/completions)", flush=True)
            metrics = metrics_url(running.spec("proxy"))
            if metrics:
                print(f"launch: metrics at {metrics} (Prometheus), instance load at {running.proxy_url}/adrenaline/load"
                      if cfg.proxy.kind == "adrenaline" else f"launch: metrics at {metrics} (Prometheus)", flush=True)
            if check:
                t_ask = time.monotonic()
                answer = ask(running.proxy_url)
                record.update(check_answer=answer, check_request_s=round(time.monotonic() - t_ask, 2))
                ok = CHECK_EXPECTED in answer
                print(f"check: {CHECK_QUESTION!r} -> {answer!r} ({record['check_request_s']} s): "
                      f"{'PASS' if ok else 'FAIL, expected ' + repr(CHECK_EXPECTED)}", flush=True)
                code = 0 if ok else 1
            else:
                print("launch: Ctrl-C or SIGTERM stops everything; a process that exits is "
                      + (f"restarted (at most {cfg.restart_limit} times)" if cfg.restart else "marked down"),
                      flush=True)  # fmt: skip
                try:  # returns only by an exception: a signal, or the proxy down for good
                    running.procs.serve_until_exit(cfg.restart, cfg.restart_limit, cfg.startup_timeout_s)
                finally:
                    record.update(restarts=dict(running.procs.restarts), down=sorted(running.procs.down))
    except (KeyboardInterrupt, _Stop) as why:
        print(f"launch: {type(why).__name__} {why}: stopped", flush=True)
        code = 130 if check else 0
    except LaunchError as err:
        print(f"launch: FAILED: {err}", file=sys.stderr, flush=True)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    if record.get("leftovers"):
        print(f"launch: FAILED: clean-up left {record['leftovers']}", file=sys.stderr, flush=True)
        return 1
    print(f"launch: stopped everything, ports freed; wall time {record.get('wall_s', '?')} s", flush=True)
    return code


def metrics_url(proxy: ProcessSpec) -> str:
    """Where the proxy serves Prometheus metrics: its `--prometheus-port` (or `--metrics-port`) on its host,
    else its own port; "" when neither is known."""
    argv = list(proxy.argv)
    for flag in ("--prometheus-port", "--metrics-port"):
        if flag in argv[:-1]:
            return f"http://{proxy.host}:{argv[argv.index(flag) + 1]}/metrics"
    return f"{proxy.url}/metrics" if proxy.port else ""


def print_commands(cfg: cluster.ClusterConfig) -> None:
    """Print every process's command grouped by host (ports: configured or fixed defaults)."""
    model = cluster.resolve_model(cfg.model) if cfg.model.startswith(cluster.SMOLLM2_PREFIX) else cfg.model
    if cfg.emulate is not None:  # the servers load the stand-in (made here, cached per machine)
        from adrenaline_sgl.emulate import standin

        model = str(standin.checkpoint_dir(cfg.emulate.model, cluster.resolve_model(cfg.model)))
    support_dir = Path("cpu_support") if cfg.cpu_support else None
    plan = build_plan(cfg, model, assign_ports(cfg, pick_free=False), python="python", support_dir=support_dir)
    if support_dir is not None:
        print(f"# cpu_support: first write the shims on each node: "
              f"python -m adrenaline_sgl.sglang_ext.cpu.server_env {support_dir}\n")
    if cfg.bind_host_shim:  # what start_cluster does per launch (support/bind_host.py)
        print("# bind_host_shim: on each node build the shim, cc -shared -fPIC -O2 -o libadrenaline_bind_host.so "
              "adrenaline_sgl/support/bind_host.c -ldl, and start each server with LD_PRELOAD=<that .so> "
              "ADRENALINE_BIND_HOST=<its host>\n")  # fmt: skip
    for host in sorted({p.host for p in plan}):
        print(f"# on {host}")
        for p in (p for p in plan if p.host == host):
            print(format_command(p, with_env=True))
        print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adrenaline_sgl.launch", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="cluster YAML (schema: adrenaline_sgl/configs/cluster.py)")
    parser.add_argument("--check", action="store_true",
                        help=f"ask {CHECK_QUESTION!r} through the proxy, expect {CHECK_EXPECTED!r}, stop, exit 0/1")
    parser.add_argument("--print-commands", action="store_true", help="print per-node commands, start nothing")
    parser.add_argument("--run-dir", default=None, help="override the config's run_dir (logs, run.json)")
    parser.add_argument("--startup-timeout-s", type=float, default=None, help="override startup_timeout_s")
    args = parser.parse_args(argv)
    try:
        cfg = cluster.load(args.config)
        if args.startup_timeout_s is not None:
            cfg = dataclasses.replace(cfg, startup_timeout_s=args.startup_timeout_s)
        if args.print_commands:
            print_commands(cfg)
            return 0
        return run(cfg, check=args.check, run_dir=args.run_dir)
    except (ValueError, FileNotFoundError, LaunchError, RuntimeError) as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

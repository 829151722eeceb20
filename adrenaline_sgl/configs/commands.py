"""What to run for a cluster config: ports, then one `ProcessSpec` (command, env, health URL) per process.

Pure code (no process is started here), shared by the launcher and `--print-commands`. Any arg or env
value may name a cluster-wide port as `{port:NAME}` (e.g. the Adrenaline executor's port, given to both
prefill and decode): each NAME gets one free port, the same everywhere. Proxy command
builders sit in a tiny registry keyed by `proxy.kind`; the `adrenaline` proxy gets the same arguments as
SGLang's router, so it can be swapped in by changing one word in the YAML, plus what is served
(`--model-path`, and `--model` / `--gpu`, the scheduler's specs, where the cluster config knows them).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from adrenaline_sgl.configs.cluster import ClusterConfig
from adrenaline_sgl.configs.cpus import format_cpu_list, thread_env

# Fixed ports for --print-commands (a remote machine's free ports cannot be picked from here).
DEFAULT_PREFILL_PORT, DEFAULT_DECODE_PORT, DEFAULT_BOOTSTRAP_PORT = 30000, 30100, 8998
DEFAULT_PROXY_PORT, DEFAULT_PROMETHEUS_PORT = 8000, 29000


@dataclass(frozen=True)
class Ports:
    """Every port of the cluster, resolved (one entry per instance)."""

    prefill: tuple[int, ...]
    bootstrap: tuple[int, ...]
    decode: tuple[int, ...]
    proxy: int
    prometheus: int
    named: dict[str, int] = field(default_factory=dict)  # `{port:NAME}` placeholders in args and env


NAMED_PORT = re.compile(r"\{port:([A-Za-z0-9_.-]+)\}")
DEFAULT_NAMED_PORT = 31000  # --print-commands: the k-th distinct name gets 31000 + k


def _named_port_names(cfg: ClusterConfig) -> list[str]:
    """Distinct `{port:NAME}` names in every arg list and env value of the config, in order of appearance."""
    texts = [*cfg.server_args, *cfg.env.values()]
    for role in (cfg.prefill, cfg.decode):
        texts += [*role.extra_args, *role.env.values()]
    texts += [*cfg.proxy.extra_args, *cfg.proxy.env.values()]
    return list(dict.fromkeys(m for t in texts for m in NAMED_PORT.findall(t)))


@dataclass(frozen=True)
class ProcessSpec:
    """One process to start: `argv` with `env_overrides` on top of the launcher's environment."""

    name: str  # e.g. prefill-0, decode-0, proxy; also the log file stem
    role: str  # prefill | decode | proxy
    host: str
    argv: tuple[str, ...]
    env_overrides: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()  # every port this process binds (checked free after stop)
    port: int = 0  # HTTP port
    cpus: tuple[int, ...] = ()  # CPUs the process tree is pinned to (set before exec); () = not pinned

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def health_url(self) -> str:
        return f"{self.url}/health"

    @property
    def log_name(self) -> str:
        return f"{self.name}.log"


def port_is_free(host: str, port: int) -> bool:
    """True when a server could bind `port` now (SO_REUSEADDR, as servers do: TIME_WAIT does not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


# Ports others pick on their own while our servers start, which a launcher-picked port must avoid:
# the kernel's ephemeral range (bind(0) and connect() source ports: SGLang's and ZMQ's random ports),
# SGLang's get_free_port_below_ephemeral (22000-29999: the NCCL/TCPStore port) and Mooncake's handshake
# listener (findAvailableTcpPort, 15000-17000). A port picked by bind(0) was taken by prefill between the
# pick and decode's bind (decode's uvicorn: "address already in use"), so picks come from outside all three.
SGLANG_PICKED_PORTS = range(22000, 30000)
MOONCAKE_PICKED_PORTS = range(15000, 17001)
LAUNCHER_PORT_FLOOR = 10000


def ephemeral_port_range() -> range:
    """The kernel's ephemeral range (Linux's ip_local_port_range; its default elsewhere)."""
    try:
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[:2])
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


def launcher_port_candidates() -> list[int]:
    """Ports nobody else picks on their own (see above): ~17,000 with Linux's default ranges."""
    avoid = (ephemeral_port_range(), SGLANG_PICKED_PORTS, MOONCAKE_PICKED_PORTS)
    return [p for p in range(LAUNCHER_PORT_FLOOR, 65536) if not any(p in r for r in avoid)]


def pick_free_port(host: str = "127.0.0.1", taken: Iterable[int] = ()) -> int:
    """A port free on `host` now, outside every range other processes pick from (bind(0) where none is left)."""
    import random

    taken = set(taken)
    candidates = [p for p in launcher_port_candidates() if p not in taken]
    for port in random.SystemRandom().sample(candidates, min(200, len(candidates))):
        if port_is_free(host, port):
            return port
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
        if port not in taken:
            return port
    raise RuntimeError(f"could not find a free port on {host}")


def assign_ports(cfg: ClusterConfig, pick_free: bool) -> Ports:
    """Configured ports (checked free when `pick_free`), else free ones (or fixed defaults when not)."""
    taken: set[int] = set()

    def one(where: str, configured: int | None, host: str, default: int) -> int:
        if configured is not None:
            if pick_free and not port_is_free(host, configured):
                raise RuntimeError(
                    f"{where} = {configured} on {host} is already in use; free it, choose another port, "
                    "or leave the field empty to get a free one"
                )
            port = configured
        else:
            port = pick_free_port(host, taken) if pick_free else default
        if pick_free and port in taken:
            raise RuntimeError(f"{where} = {port} is used twice in the cluster config")
        taken.add(port)
        return port

    def role_ports(role, name: str, configured: tuple[int, ...], default: int) -> tuple[int, ...]:
        return tuple(
            one(f"{name} #{i}", configured[i] if configured else None, role.host_of(i, cfg.host), default + i)
            for i in range(role.count)
        )

    proxy_host = cfg.proxy.host or cfg.host
    named = {name: one(f"{{port:{name}}}", None, cfg.host, DEFAULT_NAMED_PORT + k)
             for k, name in enumerate(_named_port_names(cfg))}
    return Ports(
        named=named,
        prefill=role_ports(cfg.prefill, "prefill.ports", cfg.prefill.ports, DEFAULT_PREFILL_PORT),
        bootstrap=role_ports(cfg.prefill, "prefill.bootstrap_ports", cfg.prefill.bootstrap_ports,
                             DEFAULT_BOOTSTRAP_PORT),
        decode=role_ports(cfg.decode, "decode.ports", cfg.decode.ports, DEFAULT_DECODE_PORT),
        proxy=one("proxy.port", cfg.proxy.port, proxy_host, DEFAULT_PROXY_PORT),
        prometheus=one("proxy.prometheus_port", cfg.proxy.prometheus_port, proxy_host, DEFAULT_PROMETHEUS_PORT),
    )


def _server(cfg: ClusterConfig, role: str, i: int, model_dir: str, ports: Ports, python: str) -> ProcessSpec:
    role_cfg = cfg.prefill if role == "prefill" else cfg.decode
    host = role_cfg.host_of(i, cfg.host)
    port = (ports.prefill if role == "prefill" else ports.decode)[i]
    argv = [python, "-m", "sglang.launch_server", "--model-path", model_dir, "--host", host, "--port", str(port),
            "--disaggregation-mode", role, "--disaggregation-transfer-backend", cfg.transfer_backend]
    bound = [port]
    if role == "prefill":
        argv += ["--disaggregation-bootstrap-port", str(ports.bootstrap[i])]
        bound.append(ports.bootstrap[i])
    if cfg.emulate is not None:  # emulated GPU: its pool in tokens, its chunked prefill size (docs/emulator.md)
        from adrenaline_sgl.emulate import pool

        argv += pool.server_args(cfg.emulate, role)
    argv += [*cfg.server_args, *role_cfg.extra_args]
    return ProcessSpec(f"{role}-{i}", role, host, tuple(argv), ports=tuple(bound), port=port,
                       cpus=role_cfg.cpus_of(i, role))


def _router(cfg: ClusterConfig, prefill: list[ProcessSpec], bootstrap: tuple[int, ...], decode: list[ProcessSpec],
            ports: Ports, python: str, module: str, model_dir: str) -> tuple[str, ...]:
    host = cfg.proxy.host or cfg.host
    argv = [python, "-m", module, "--pd-disaggregation"]
    for spec, boot in zip(prefill, bootstrap, strict=True):
        argv += ["--prefill", spec.url, str(boot)]
    for spec in decode:
        argv += ["--decode", spec.url]
    argv += ["--host", host, "--port", str(ports.proxy),
             "--prometheus-host", host, "--prometheus-port", str(ports.prometheus)]
    if cfg.proxy.kind == "adrenaline":  # what is served: its tokenizer, and the specs of the auto policy
        argv += ["--model-path", model_dir]
        for flag, value in (("--model", cfg.served_model_spec), ("--gpu", cfg.served_gpu)):
            argv += [flag, value] if value else []
        if cfg.emulate is not None:  # the auto policy's executor share: the emulated one
            argv += ["--executor-sm-share", str(cfg.emulate.executor_sm_share)]
    return (*argv, *cfg.proxy.extra_args)


# proxy.kind -> module run with `python -m` and the router's arguments (`--pd-disaggregation --prefill URL
# BOOTSTRAP_PORT ... --decode URL ... --host --port --prometheus-host --prometheus-port` + extra_args; the adrenaline
# proxy also gets --model-path, --model, --gpu before extra_args, so extra_args can override them).
PROXY_MODULES: dict[str, str] = {
    "sglang-router": "sglang_router.launch_router",
    "adrenaline": "adrenaline_sgl.proxy",
}


def build_plan(cfg: ClusterConfig, model_dir: str, ports: Ports, python: str,
               support_dir: Path | None, bind_shim: Path | None = None) -> list[ProcessSpec]:
    """Prefill servers, decode servers, then the proxy. `support_dir`: CPU shims (cpu_support only);
    `bind_shim`: the built bind-host shim, preloaded into every server (support/bind_host.py)."""
    prefill = [_server(cfg, "prefill", i, model_dir, ports, python) for i in range(cfg.prefill.count)]
    decode = [_server(cfg, "decode", i, model_dir, ports, python) for i in range(cfg.decode.count)]
    module = PROXY_MODULES[cfg.proxy.kind]
    argv = _router(cfg, prefill, ports.bootstrap, decode, ports, python, module, model_dir)
    proxy = ProcessSpec("proxy", "proxy", cfg.proxy.host or cfg.host, argv,
                        ports=(ports.proxy, ports.prometheus), port=ports.proxy)
    env = dict(cfg.env)  # overrides on top of the launcher's environment
    if support_dir is not None:
        from adrenaline_sgl.sglang_ext.cpu.server_env import server_env

        inherited = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
        env = server_env({**inherited, **env}, support_dir)
    own_env = {"prefill": cfg.prefill.env, "decode": cfg.decode.env, "proxy": cfg.proxy.env}
    if cfg.emulate is not None:
        from adrenaline_sgl.emulate.config import ENV_VAR

        own_env = {**own_env, **{r: {ENV_VAR: cfg.emulate.to_json(), **own_env[r]} for r in ("prefill", "decode")}}
    pinned = {p.name: thread_env(p.cpus) if p.cpus else {} for p in [*prefill, *decode]}
    if bind_shim is not None:  # every listener of a server on its host (Mooncake's too)
        from adrenaline_sgl.support import bind_host

        for p in [*prefill, *decode]:
            inherited = {**env, **own_env[p.role]}.get("LD_PRELOAD", os.environ.get("LD_PRELOAD", ""))
            pinned[p.name] = {**pinned[p.name], **bind_host.server_env(bind_shim, p.host, inherited)}
    return [_fill_named_ports(dataclasses.replace(p, env_overrides={**env, **own_env[p.role],
                                                                    **pinned.get(p.name, {})}), ports.named)
            for p in [*prefill, *decode, proxy]]


def _fill_named_ports(spec: ProcessSpec, named: dict[str, int]) -> ProcessSpec:
    """Replace `{port:NAME}` in argv and env by its port; a process naming a port also checks it on stop."""
    used: list[int] = []

    def fill(text: str) -> str:
        def one(m: re.Match) -> str:
            used.append(named[m.group(1)])
            return str(named[m.group(1)])

        return NAMED_PORT.sub(one, text)

    argv = tuple(fill(a) for a in spec.argv)
    env = {k: fill(v) for k, v in spec.env_overrides.items()}
    ports = tuple(dict.fromkeys([*spec.ports, *used]))
    return dataclasses.replace(spec, argv=argv, env_overrides=env, ports=ports)


def format_command(spec: ProcessSpec, with_env: bool = False) -> str:
    """The shell command of `spec`; a pinned process runs under `taskset -c CPUS` (what the launcher does with
    sched_setaffinity before exec)."""
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(spec.env_overrides.items())) if with_env else ""
    pin = f"taskset -c {format_cpu_list(spec.cpus)} " if spec.cpus else ""
    return (env + " " if env else "") + pin + shlex.join(spec.argv)

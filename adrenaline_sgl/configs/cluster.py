"""Cluster configuration for `python -m adrenaline_sgl.launch --config <cluster.yaml>`.

A cluster is nP prefill and mD decode SGLang servers plus one proxy in front. The YAML mirrors the
dataclasses below (see `cpu_demo.yaml` and `gpu_node_example.yaml` beside this file); unknown keys are
errors. SGLang arguments pass through unchanged: `server_args` go to every server, each role's
`extra_args` only to that role (the plugin's per-role flags go there), `proxy.extra_args` to the proxy.
Ports left empty are picked free at launch (on one machine) and fixed defaults when only printing the
per-node commands of a multi-node cluster. Environment: `env` for every process, then each role's and
the proxy's own `env` on top. CPU pinning: each role's `cpus` gives every instance its CPU list ("0",
"0-3"; `configs/cpus.py`), applied to the server's whole process tree with matching thread counts; with
`cpu_exclusive` (default) no two pinned instances on one host may share a CPU. The proxy is never pinned.
The `adrenaline` proxy also gets what is served: the checkpoint (its tokenizer counts prompt tokens) and, for
its `auto` policy, the scheduler's specs of the model and the hardware.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from adrenaline_sgl.configs.cpus import THREAD_ENV_NAMES, format_cpu_list, parse_cpu_list

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
PROXY_KINDS = ("sglang-router", "adrenaline")
TRANSFER_BACKENDS = ("mooncake", "mooncake_tcp", "nixl", "mori", "fake")
SMOLLM2_PREFIX = "smollm2:"  # `model: smollm2:<dtype>` = the bundled SmolLM2-135M test checkpoint
_PORT_RANGE = "1024..65535"


def _check_port(where: str, port: int | None) -> None:
    if port is not None and (not isinstance(port, int) or not 1024 <= port <= 65535):
        raise ValueError(f"{where} must be an integer port in {_PORT_RANGE}, got {port!r}")


def _check_args(where: str, args: Any) -> None:
    if not isinstance(args, tuple) or not all(isinstance(a, str) for a in args):
        raise ValueError(f"{where} must be a list of strings (command-line tokens), got {args!r}")


def _check_env(where: str, env: Any) -> None:
    if not isinstance(env, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
        raise ValueError(f"{where} must map names to strings (quote numbers in YAML), got {env!r}")


@dataclass(frozen=True)
class RoleConfig:
    """One server role (prefill or decode): how many instances, where, and its extra SGLang args."""

    count: int = field(default=1, metadata={"help": "number of instances of this role (1..64)"})
    hosts: tuple[str, ...] = field(default=(), metadata={"help": "host per instance; empty = cluster host"})
    ports: tuple[int, ...] = field(default=(), metadata={"help": "HTTP port per instance; empty = free port"})
    bootstrap_ports: tuple[int, ...] = field(
        default=(), metadata={"help": "prefill only: disaggregation bootstrap port per instance; empty = free"}
    )
    extra_args: tuple[str, ...] = field(default=(), metadata={"help": "SGLang args for this role only"})
    env: dict[str, str] = field(default_factory=dict, metadata={"help": "extra environment for this role only"})
    cpus: tuple[str, ...] = field(
        default=(), metadata={"help": "CPU list per instance (\"0\", \"0-3\", \"0,2\"); empty = not pinned"}
    )

    def validate(self, role: str) -> None:
        if not isinstance(self.count, int) or not 1 <= self.count <= 64:
            raise ValueError(f"{role}.count must be an integer in 1..64, got {self.count!r}")
        if not isinstance(self.cpus, tuple):
            raise ValueError(f"{role}.cpus must be a list with one CPU list per instance (e.g. [\"0\"]), "
                             f"got {self.cpus!r}")
        for name in ("hosts", "ports", "bootstrap_ports", "cpus"):
            values = getattr(self, name)
            if values and len(values) != self.count:
                raise ValueError(f"{role}.{name} must be empty or have count={self.count} entries, got {len(values)}")
        if role == "decode" and self.bootstrap_ports:
            raise ValueError("decode.bootstrap_ports is not valid: only prefill servers have a bootstrap port")
        for i, port in enumerate(self.ports + self.bootstrap_ports):
            _check_port(f"{role} port #{i}", port)
        _check_args(f"{role}.extra_args", self.extra_args)
        _check_env(f"{role}.env", self.env)
        for i in range(len(self.cpus)):
            self.cpus_of(i, role)

    def cpus_of(self, i: int, role: str = "role") -> tuple[int, ...]:
        """CPU ids instance `i` is pinned to; () when the role is not pinned."""
        return parse_cpu_list(self.cpus[i], f"{role}.cpus[{i}]") if self.cpus else ()

    def host_of(self, i: int, default: str) -> str:
        return self.hosts[i] if self.hosts else default


@dataclass(frozen=True)
class ProxyLaunchConfig:
    """How the launcher starts the request router in front of the servers (its own settings are its CLI's:
    `adrenaline_sgl.proxy.config.ProxyConfig` for the `adrenaline` kind)."""

    kind: str = field(default="sglang-router", metadata={"help": f"one of {PROXY_KINDS}"})
    host: str | None = field(default=None, metadata={"help": "bind host; empty = cluster host"})
    port: int | None = field(default=None, metadata={"help": "HTTP port; empty = free port"})
    prometheus_port: int | None = field(default=None, metadata={"help": "metrics port; empty = free port"})
    extra_args: tuple[str, ...] = field(default=(), metadata={"help": "args passed to the proxy unchanged"})
    env: dict[str, str] = field(default_factory=dict, metadata={"help": "extra environment for the proxy"})

    def __post_init__(self):
        if self.kind not in PROXY_KINDS:
            raise ValueError(f"proxy.kind must be one of {PROXY_KINDS}, got {self.kind!r}")
        _check_port("proxy.port", self.port)
        _check_port("proxy.prometheus_port", self.prometheus_port)
        _check_args("proxy.extra_args", self.extra_args)
        _check_env("proxy.env", self.env)


@dataclass(frozen=True)
class ClusterConfig:
    """A whole PD cluster: model, servers, proxy, and how the launcher runs them."""

    model: str = field(metadata={"help": "checkpoint directory, or smollm2:<dtype> for the bundled test model"})
    model_spec: str | None = field(default=None, metadata={
        "help": "the model's spec in adrenaline_sgl.scheduler.specs, for the adrenaline proxy's auto policy; "
                "empty: smollm2-135m for smollm2:<dtype>, else none"})  # fmt: skip
    gpu: str | None = field(default=None, metadata={
        "help": "the servers' hardware spec in adrenaline_sgl.scheduler.specs, for the proxy's auto policy"})
    host: str = field(default="127.0.0.1", metadata={"help": "default host of every process (bind address)"})
    cpu_support: bool = field(
        default=False, metadata={"help": "CPU machines: SGLANG_USE_CPU_ENGINE=1 plus the stand-ins (sglang_ext/cpu)"}
    )
    transfer_backend: str = field(default="mooncake", metadata={"help": f"KV transfer: one of {TRANSFER_BACKENDS}"})
    server_args: tuple[str, ...] = field(default=(), metadata={"help": "SGLang args for every server"})
    env: dict[str, str] = field(default_factory=dict, metadata={"help": "extra environment for every process"})
    prefill: RoleConfig = field(default_factory=RoleConfig, metadata={"help": "prefill servers"})
    decode: RoleConfig = field(default_factory=RoleConfig, metadata={"help": "decode servers"})
    proxy: ProxyLaunchConfig = field(default_factory=ProxyLaunchConfig, metadata={"help": "the router in front"})
    run_dir: str = field(default="results/launch", metadata={"help": "logs go to <run_dir>/<timestamp>/"})
    startup_timeout_s: float = field(default=600.0, metadata={"help": "health wait per stage, 10..7200 s"})
    stop_timeout_s: float = field(default=20.0, metadata={"help": "SIGTERM grace before SIGKILL, 1..300 s"})
    cpu_exclusive: bool = field(
        default=True, metadata={"help": "pinned instances on one host must not share a CPU (role `cpus`)"}
    )
    bind_host_shim: bool = field(default=True, metadata={
        "help": "preload adrenaline_sgl/support/bind_host.c into the servers: their wildcard binds (Mooncake's "
                "listeners) go to the instance's host; needs a C compiler, else one line and no shim"})  # fmt: skip
    restart: bool = field(default=True, metadata={
        "help": "a server or the proxy that exits while serving is started again (same command and ports), at "
                "most restart_limit times each; false: it is marked down and the rest keep serving (the proxy "
                "routes around it)"})  # fmt: skip
    restart_limit: int = field(default=3, metadata={"help": "restarts per process, 0..100; then it stays down"})
    emulate: Any = field(default=None, metadata={
        "help": "emulated-GPU mode: {gpu, model, clock_scale, ...} (adrenaline_sgl/emulate/config.py, "
                "docs/emulator.md); `model` then only gives the tokenizer"})

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ValueError("model must be a checkpoint directory or smollm2:<dtype>, got an empty value")
        if self.transfer_backend not in TRANSFER_BACKENDS:
            raise ValueError(f"transfer_backend must be one of {TRANSFER_BACKENDS}, got {self.transfer_backend!r}")
        for name in ("cpu_support", "cpu_exclusive", "restart", "bind_host_shim"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("startup_timeout_s", "stop_timeout_s"):  # a number before its range is compared
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name} must be a number of seconds, got {value!r}")
        for name in ("host", "run_dir"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{name} must be a non-empty string, got {getattr(self, name)!r}")
        if isinstance(self.restart_limit, bool) or not isinstance(self.restart_limit, int) \
                or not 0 <= self.restart_limit <= 100:  # fmt: skip
            raise ValueError(f"restart_limit must be an integer in 0..100, got {self.restart_limit!r}")
        _check_args("server_args", self.server_args)
        _check_env("env", self.env)
        if not 10 <= self.startup_timeout_s <= 7200:
            raise ValueError(f"startup_timeout_s must be in 10..7200, got {self.startup_timeout_s!r}")
        if not 1 <= self.stop_timeout_s <= 300:
            raise ValueError(f"stop_timeout_s must be in 1..300, got {self.stop_timeout_s!r}")
        self.prefill.validate("prefill")
        self.decode.validate("decode")
        if self.emulate is not None:
            _check_emulate(self)
        self._check_specs()
        reserved = {"--disaggregation-mode", "--port", "--host", "--disaggregation-bootstrap-port", "--model-path",
                    "--disaggregation-transfer-backend"}
        for where, args in (("server_args", self.server_args), ("prefill.extra_args", self.prefill.extra_args),
                            ("decode.extra_args", self.decode.extra_args)):
            clash = sorted(reserved.intersection(a.split("=", 1)[0] for a in args))
            if clash:
                raise ValueError(f"{where} must not set {clash}: the launcher sets them from the cluster config")
        self._check_pinning()

    def _check_pinning(self) -> None:
        """Thread variables left to the pinning, and (cpu_exclusive) no CPU shared on one host."""
        owners: dict[tuple[str, int], str] = {}
        for role_name in ("prefill", "decode"):
            role = getattr(self, role_name)
            if not role.cpus:
                continue
            for where, env in (("env", self.env), (f"{role_name}.env", role.env)):
                for name in THREAD_ENV_NAMES:
                    if name in env:
                        raise ValueError(f"{where} sets {name}, which {role_name}.cpus sets to each instance's "
                                         "CPU count; remove it from the env")
            for i in range(role.count):
                where = f"{role_name}.cpus[{i}]"
                for cpu in role.cpus_of(i, role_name):
                    host = role.host_of(i, self.host)
                    key = ("this machine" if host in LOCAL_HOSTS else host, cpu)
                    if self.cpu_exclusive and key in owners:
                        raise ValueError(f"{where} = {role.cpus[i]!r} shares CPU {format_cpu_list([cpu])} with "
                                         f"{owners[key]} on {key[0]} (cpu_exclusive: true)")
                    owners.setdefault(key, where)

    def _check_specs(self) -> None:
        from adrenaline_sgl.scheduler.specs import GPUS, MODELS, get_gpu, get_model

        for name, value, lookup in (("model_spec", self.model_spec, get_model), ("gpu", self.gpu, get_gpu)):
            if value is not None:
                try:
                    lookup(value)
                except ValueError as err:
                    raise ValueError(f"{name}: {err}") from None
        args = self.proxy.extra_args
        auto = "--policy=auto" in args or any(a == "--policy" and b == "auto" for a, b in zip(args, args[1:]))
        if self.proxy.kind == "adrenaline" and auto and (self.served_model_spec is None or self.served_gpu is None):
            raise ValueError(f"proxy --policy auto needs the served model's and hardware's specs: set model_spec "
                             f"(model {self.model!r} is not a known spec and has no config.json here; one of "
                             f"{sorted(MODELS)} or a Llama config.json) and gpu (one of {sorted(GPUS)})")  # fmt: skip

    @property
    def served_model_spec(self) -> str | None:
        """The scheduler's spec of what is served: `model_spec`, else the bundled SmolLM2's, else the checkpoint's
        `config.json` where it is on this machine, else None. Under `emulate`, the emulated model (`model` is
        then only the tokenizer's checkpoint)."""
        if self.emulate is not None:
            return self.emulate.model
        if self.model_spec or self.model.startswith(SMOLLM2_PREFIX):
            return self.model_spec or "smollm2-135m"
        hf_config = Path(self.model).expanduser() / "config.json"
        return str(hf_config) if hf_config.is_file() else None

    @property
    def served_gpu(self) -> str | None:
        """The hardware the auto policy models: the emulated GPU under `emulate`, else `gpu`."""
        return self.emulate.gpu if self.emulate is not None else self.gpu

    @property
    def hosts(self) -> set[str]:
        """Every host a process of this cluster runs on."""
        found = {self.proxy.host or self.host}
        for role in (self.prefill, self.decode):
            found.update(role.host_of(i, self.host) for i in range(role.count))
        return found

    @property
    def is_local(self) -> bool:
        """True when every process runs on this machine (the launcher can start them itself)."""
        return self.hosts <= set(LOCAL_HOSTS)


def _check_emulate(cfg: ClusterConfig) -> None:
    """`emulate` is an EmulateConfig, and no server arg sets what the emulator sizes (pool, chunk, context)."""
    from adrenaline_sgl.emulate.config import EmulateConfig
    from adrenaline_sgl.emulate.pool import RESERVED_FLAGS

    if not isinstance(cfg.emulate, EmulateConfig):
        raise ValueError(f"emulate must be a mapping of emulate settings, got {cfg.emulate!r}")
    for where, args in (("server_args", cfg.server_args), ("prefill.extra_args", cfg.prefill.extra_args),
                        ("decode.extra_args", cfg.decode.extra_args)):
        clash = sorted(set(RESERVED_FLAGS).intersection(a.split("=", 1)[0] for a in args))
        if clash:
            raise ValueError(f"{where} must not set {clash} with emulate: the emulator sets them")


def _tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _build(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {sorted(names)}")
    return {k: _tuple(v) for k, v in data.items()}


def from_dict(data: dict[str, Any]) -> ClusterConfig:
    """Build and validate a ClusterConfig from parsed YAML."""
    kwargs = _build(ClusterConfig, data, "cluster config")
    for role in ("prefill", "decode"):
        if role in kwargs:
            kwargs[role] = RoleConfig(**_build(RoleConfig, kwargs[role] or {}, role))
    if "proxy" in kwargs:
        kwargs["proxy"] = ProxyLaunchConfig(**_build(ProxyLaunchConfig, kwargs["proxy"] or {}, "proxy"))
    if kwargs.get("emulate") is not None:
        from adrenaline_sgl.emulate.config import from_dict as emulate_from_dict

        kwargs["emulate"] = emulate_from_dict(kwargs["emulate"])
    if "model" not in kwargs:
        raise ValueError("cluster config: `model` is required (a checkpoint directory or smollm2:<dtype>)")
    return ClusterConfig(**kwargs)


def load(path: str | os.PathLike) -> ClusterConfig:
    """Read a cluster YAML file. Errors name the file and the offending field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"cluster config {path} does not exist")
    try:
        return from_dict(yaml.safe_load(path.read_text()) or {})
    except (ValueError, TypeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: {err}") from err


def resolve_model(model: str) -> str:
    """The checkpoint directory for `model` (converting the bundled SmolLM2 on first use)."""
    if model.startswith(SMOLLM2_PREFIX):
        from adrenaline_sgl.support.smollm2 import checkpoint_dir

        return str(checkpoint_dir(model[len(SMOLLM2_PREFIX):]))
    if not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"model must be an existing checkpoint directory or smollm2:<dtype>, got {model!r}")
    return str(Path(model).expanduser())

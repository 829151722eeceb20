"""Proxy settings: a frozen config and its CLI (flag names mirror `sglang_router.launch_router`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from urllib.parse import urlparse

from adrenaline_sgl.sglang_ext.flags import validate_policy


def _check_url(url: str, field: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{field}={url!r}: expected an http(s)://host:port URL")


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the proxy needs. Units in names; every wait has a timeout."""

    prefill: tuple[tuple[str, int | None], ...]  # (url, bootstrap port or None = decode's default)
    decode: tuple[str, ...]
    host: str = "127.0.0.1"
    port: int = 30040
    policy: str = "never"  # never | always | ratio:F | auto: the scheduler's policies (see decide.py)
    gpu: str = "h100-sxm"  # policy auto: the GPU spec its cost model uses (adrenaline_sgl.scheduler.specs)
    model: str = "llama3-8b"  # policy auto: the model spec
    executor_sm_share: float = 0.3  # policy auto: SM share of the prefill GPU the executor gets
    metrics_host: str = "127.0.0.1"
    metrics_port: int | None = None  # None: /metrics on the proxy's own port only
    request_timeout_s: float = 1800.0  # whole request through prefill and decode
    connect_timeout_s: float = 5.0  # TCP connect to an instance
    load_interval_s: float = 1.0  # how often instances' /adrenaline/load is pulled
    load_timeout_s: float = 2.0  # one load pull
    load_stale_s: float = 10.0  # a report older than this counts as missing (no offload to that prefill)

    def __post_init__(self):
        if not self.prefill:
            raise ValueError("prefill: at least one --prefill URL [BOOTSTRAP_PORT] is required")
        if not self.decode:
            raise ValueError("decode: at least one --decode URL is required")
        for url, bootstrap_port in self.prefill:
            _check_url(url, "prefill")
            if bootstrap_port is not None and not 1 <= bootstrap_port <= 65535:
                raise ValueError(f"prefill bootstrap port={bootstrap_port}: expected 1..65535")
        for url in self.decode:
            _check_url(url, "decode")
        for name in ("port", "metrics_port"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 65535:
                raise ValueError(f"{name}={value}: expected 0..65535 (0 = any free port)")
        validate_policy(self.policy, "policy")
        if self.policy == "auto":
            from adrenaline_sgl.scheduler.specs import GPUS, MODELS

            if self.gpu not in GPUS:
                raise ValueError(f"gpu={self.gpu!r}: expected one of {sorted(GPUS)}")
            if self.model not in MODELS:
                raise ValueError(f"model={self.model!r}: expected one of {sorted(MODELS)}")
        if not 0.0 < self.executor_sm_share <= 1.0:
            raise ValueError(f"executor_sm_share={self.executor_sm_share}: expected 0 < share <= 1")
        for name in ("request_timeout_s", "connect_timeout_s", "load_interval_s", "load_timeout_s", "load_stale_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected > 0 seconds")


def _prefill_arg(values: list[str]) -> tuple[str, int | None]:
    if not 1 <= len(values) <= 2:
        raise argparse.ArgumentTypeError("--prefill takes URL [BOOTSTRAP_PORT]")
    if len(values) == 1 or values[1].lower() == "none":
        return values[0], None
    try:
        return values[0], int(values[1])
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"--prefill bootstrap port {values[1]!r}: expected an integer") from err


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m adrenaline_sgl.proxy",
        description="Adrenaline proxy: SGLang mini-LB protocol plus the per-request offload decision.",
    )
    p.add_argument("--prefill", nargs="+", action="append", metavar=("URL", "BOOTSTRAP_PORT"), required=True,
                   help="A prefill instance: URL and optional bootstrap port (repeat for several).")  # fmt: skip
    p.add_argument("--decode", action="append", metavar="URL", required=True,
                   help="A decode instance URL (repeat for several).")  # fmt: skip
    p.add_argument("--host", default="127.0.0.1", help="Bind address (127.0.0.1 unless opened on purpose).")
    p.add_argument("--port", type=int, default=30040, help="Listen port.")
    p.add_argument("--policy", default="never",
                   help="Offload policy (the scheduler's): never, always, ratio:F (OB = F, 0..10), auto.")  # fmt: skip
    p.add_argument("--gpu", default="h100-sxm", help="Policy auto: GPU spec name for the cost model.")
    p.add_argument("--model", default="llama3-8b", help="Policy auto: model spec name for the cost model.")
    p.add_argument("--executor-sm-share", type=float, default=0.3, help="Policy auto: executor SM share.")
    p.add_argument("--metrics-host", "--prometheus-host", default="127.0.0.1",
                   help="Bind address of the Prometheus endpoint.")  # fmt: skip
    p.add_argument("--metrics-port", "--prometheus-port", type=int, default=None,
                   help="Separate Prometheus port; without it /metrics is served on --port.")  # fmt: skip
    p.add_argument("--pd-disaggregation", action="store_true",
                   help="Accepted for sglang_router compatibility; this proxy is always PD.")  # fmt: skip
    p.add_argument("--request-timeout-secs", type=float, default=1800.0, help="Timeout of one request, seconds.")
    p.add_argument("--load-interval-secs", type=float, default=1.0, help="Period of the load pulls, seconds.")
    p.add_argument("--log-level", default="info", help="Python logging level.")
    return p


def from_args(ns: argparse.Namespace) -> ProxyConfig:
    prefill = []
    for values in ns.prefill:
        try:
            prefill.append(_prefill_arg(values))
        except argparse.ArgumentTypeError as err:
            raise ValueError(str(err)) from err
    return ProxyConfig(
        prefill=tuple(prefill),
        decode=tuple(ns.decode),
        host=ns.host,
        port=ns.port,
        policy=ns.policy,
        gpu=ns.gpu,
        model=ns.model,
        executor_sm_share=ns.executor_sm_share,
        metrics_host=ns.metrics_host,
        metrics_port=ns.metrics_port,
        request_timeout_s=ns.request_timeout_secs,
        load_interval_s=ns.load_interval_secs,
    )

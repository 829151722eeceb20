"""Proxy settings: a frozen config and its CLI (flag names mirror `sglang_router.launch_router`).

Every setting is declared once, as a field: its default and help are the CLI's (`build_parser` reads them).
Knobs other layers share come from their owners: the policy grammar (`scheduler.admission.parse_policy`), the
executor's SM share and the TPOT SLO (`scheduler.bounds`), the spec and predictor registries.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from urllib.parse import urlparse

from adrenaline_sgl.scheduler.admission import parse_policy
from adrenaline_sgl.scheduler.bounds import DEFAULT_EXECUTOR_SM_SHARE, DEFAULT_TPOT_SLO_MS, check_executor_sm_share
from adrenaline_sgl.scheduler.cost_model import predictor_names
from adrenaline_sgl.scheduler.specs import get_gpu, get_model


def _check_url(url: str, field: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError(f"{field}={url!r}: expected an http(s)://host:port URL")


def _opt(default, help_text: str, *flags: str):
    """A CLI setting: `flags` (default `--<name>`), its default and help."""
    return field(default=default, metadata={"help": help_text, "flags": flags})


@dataclass(frozen=True)
class ProxyConfig:
    """Everything the proxy needs. Units in names; every wait has a timeout."""

    prefill: tuple[tuple[str, int | None], ...]  # (url, bootstrap port or None = decode's default)
    decode: tuple[str, ...]
    host: str = _opt("127.0.0.1", "Bind address (127.0.0.1 unless opened on purpose).")
    port: int = _opt(30040, "Listen port (0: any free port).")
    policy: str = _opt("never", "Offload policy (the scheduler's): never, always, ratio:F (the bound OB = F, "
                       "0..10), auto (OB from the cost model on live load).")  # fmt: skip
    model: str | None = _opt(None, "Policy auto: the served model's spec in adrenaline_sgl.scheduler.specs, or "
                             "its Llama config.json (the launcher passes the cluster config's).")  # fmt: skip
    gpu: str | None = _opt(None, "Policy auto: the spec of the hardware the servers run on (scheduler.specs).")
    predictor: str = _opt("preferred", "Policy auto: the cost predictor, one of the scheduler's registry, or "
                          "preferred: its measured table for (gpu, model) if it has one, else roofline.")  # fmt: skip
    executor_sm_share: float = _opt(DEFAULT_EXECUTOR_SM_SHARE, "Policy auto: the executor's SM share, in (0, 1), "
                                    "for a prefill whose load report does not give its own.")  # fmt: skip
    tpot_slo_ms: float = _opt(DEFAULT_TPOT_SLO_MS, "Policy auto: the TPOT SLO the bounds keep, ms.")
    model_path: str | None = _opt(None, "Checkpoint folder of the served model: its tokenizer counts prompt "
                                  "tokens (without it: characters / 4).")  # fmt: skip
    metrics_host: str = _opt("127.0.0.1", "Bind address of the Prometheus endpoint.", "--metrics-host",
                             "--prometheus-host")  # fmt: skip
    metrics_port: int | None = _opt(None, "Separate Prometheus port; without it /metrics is served on --port.",
                                    "--metrics-port", "--prometheus-port")  # fmt: skip
    request_timeout_s: float = _opt(1800.0, "Whole request through prefill and decode, s.", "--request-timeout-secs")
    connect_timeout_s: float = _opt(5.0, "TCP connect to an instance, s.")
    load_interval_s: float = _opt(1.0, "Period of the /adrenaline/load pulls, s.", "--load-interval-secs")
    load_timeout_s: float = _opt(2.0, "One load pull, s.")
    load_stale_s: float = _opt(10.0, "A load report older than this counts as missing (no offload there), s.")
    offload_failures_to_pause: int = _opt(2, "Offloaded requests failing in a row at one executor before the proxy "
                                          "pauses offloading there (they decode locally meanwhile).")  # fmt: skip
    offload_pause_s: float = _opt(10.0, "How long offloading to a failing executor pauses before it is tried "
                                  "again, s.")  # fmt: skip

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
        if parse_policy(self.policy, "policy")[0] == "auto":
            for name, lookup in (("model", get_model), ("gpu", get_gpu)):
                try:
                    lookup(getattr(self, name))
                except ValueError as err:
                    raise ValueError(f"policy auto needs the served {name}'s spec (--{name}): {err}") from None
        if self.predictor not in ("preferred", *predictor_names()):
            raise ValueError(f"predictor={self.predictor!r}: expected preferred or one of {predictor_names()}")
        check_executor_sm_share(self.executor_sm_share)
        if isinstance(self.offload_failures_to_pause, bool) or not isinstance(self.offload_failures_to_pause, int) \
                or self.offload_failures_to_pause < 1:  # fmt: skip
            raise ValueError(f"offload_failures_to_pause={self.offload_failures_to_pause!r}: expected an integer >= 1")
        for name in ("tpot_slo_ms", "request_timeout_s", "connect_timeout_s", "load_interval_s", "load_timeout_s",
                     "load_stale_s", "offload_pause_s"):  # fmt: skip
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)}: expected > 0")


_SETTINGS = [f for f in dataclasses.fields(ProxyConfig) if f.name not in ("prefill", "decode")]
_TYPES = {"metrics_port": int}  # fields whose default (None) does not give the type; other None ones are str


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
    for f in _SETTINGS:
        kind = _TYPES.get(f.name, str if f.default is None else type(f.default))
        p.add_argument(*(f.metadata["flags"] or ["--" + f.name.replace("_", "-")]), dest=f.name, type=kind,
                       default=f.default, help=f"{f.metadata['help']} Default: {f.default}.")  # fmt: skip
    p.add_argument("--pd-disaggregation", action="store_true",
                   help="Accepted for sglang_router compatibility; this proxy is always PD.")  # fmt: skip
    p.add_argument("--log-level", default="info", help="Python logging level.")
    return p


def from_args(ns: argparse.Namespace) -> ProxyConfig:
    prefill = []
    for values in ns.prefill:
        try:
            prefill.append(_prefill_arg(values))
        except argparse.ArgumentTypeError as err:
            raise ValueError(str(err)) from err
    settings = {f.name: getattr(ns, f.name) for f in _SETTINGS}
    return ProxyConfig(prefill=tuple(prefill), decode=tuple(ns.decode), **settings)

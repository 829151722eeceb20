"""Adrenaline's server flags: a frozen config, the argparse group SGLang's parser gets, and its lookup.

SGLang 0.5.23 builds its parser in `ServerArgs.add_cli_args` and its record in `ServerArgs.from_cli_args`
(a msgspec Struct; unknown fields are dropped). The plugin wraps both (see `args_hooks.py`): the first adds
the group below, the second attaches an `AdrenalineArgs` to the record as `server_args._adrenaline`, an
underscore "bookkeeping" attribute that `ServerArgs.__reduce__` carries into the scheduler subprocesses.

Knobs other layers share are declared by their owners and imported here: the executor's SM share and its
validator (`scheduler.bounds`), the partitioner names and default (`colocation.config`), the transport names
(the `offload.transports` registry).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from adrenaline_sgl.colocation.config import EXECUTOR_PARTITIONERS, ColocationConfig
from adrenaline_sgl.colocation.replan import DEFAULT_ARRIVAL_WINDOW_S, DEFAULT_REPLAN_INTERVAL_S
from adrenaline_sgl.offload.lease import DEFAULT_LEASE_S, check_lease_s
from adrenaline_sgl.offload.transports.base import DEFAULT_TRANSPORT, TRANSPORTS
from adrenaline_sgl.scheduler.bounds import DEFAULT_EXECUTOR_SM_SHARE, check_executor_sm_share

ROLES = ("none", "prefill", "decode")
DEFAULT_IDLE_YIELD_US = 500.0  # docs/perf.md, "The executor beside a spinning scheduler"
MAX_REPLAN_INTERVAL_S = 3600.0
ATTR_NAME = "_adrenaline"  # attribute on sglang's ServerArgs record


def parse_unmarked(text: str, field_name: str = "unmarked_offload") -> float:
    """`never` (0), `always` (1) or `share:P` (0 <= P <= 1) -> the share of unmarked requests to offload."""
    words = {"never": 0.0, "always": 1.0}
    kind, _, value = str(text).partition(":")
    try:
        share = words[text] if text in words else float(value) if kind == "share" else -1.0
    except ValueError:
        share = -1.0
    if not 0.0 <= share <= 1.0:  # also rejects nan
        raise ValueError(f"{field_name}={text!r}: expected never, always or share:P with 0 <= P <= 1")
    return share


def _opt(help_text: str, **kw):
    return field(metadata={"help": help_text}, **kw)


@dataclass(frozen=True)
class AdrenalineArgs:
    """Per-instance Adrenaline settings. Every field's help is the CLI help of `--adrenaline-<field>`."""

    role: str = _opt(
        "Offloading role of this instance: 'prefill' hosts an attention executor and keeps the KV of offloaded "
        "requests; 'decode' sends the attention of offloaded requests to the executor; 'none' is stock SGLang.",
        default="none",
    )
    transport: str = _opt(
        "Transport between decode and the executor: inproc (tests, one process), mooncake (TCP or RDMA), "
        "cuda_ipc (one node, GPU only).",
        default=DEFAULT_TRANSPORT,
    )
    executor_host: str = _opt(
        "Prefill: interface the executor binds (127.0.0.1 unless opened on purpose). Decode: the executor to "
        "call when a request does not name one in custom_params['adrenaline_executor'].",
        default="127.0.0.1",
    )
    executor_port: int = _opt("Port of the executor's control endpoint (1..65535).", default=31000)
    executor_sm_share: float = _opt(
        "Prefill: share of the GPU's SMs given to the executor's stream, in (0, 1) (every SM, unpartitioned: "
        "--adrenaline-executor-partitioner none); with --adrenaline-ttft-slo-ms, the starting split.",
        default=DEFAULT_EXECUTOR_SM_SHARE,
    )
    executor_max_tokens: int = _opt(
        "Prefill: decode-token slots set aside for the executor at start (0 = 1/8 of the pool); offloaded "
        "requests' full decode lengths are credited against them at the hand-off, growing them from the pool.",
        default=0,
    )
    unmarked_offload: str = _opt(
        "Requests that arrive without the proxy's mark custom_params['adrenaline_offload'] (the mark wins): "
        "never, always, or share:P (offload a share P of them, 0 <= P <= 1, picked by a hash of the bootstrap "
        "room so prefill and decode agree without talking). Not the scheduler's policy (no bound, no load): "
        "the proxy's --policy decides marked requests.",
        default="never",
    )
    inner_attention_backend: str = _opt(
        "Decode with --attention-backend adrenaline: the SGLang backend it wraps for local rows (triton; "
        "flashinfer where installed; torch_native on CPU).",
        default="triton",
    )
    remote_timeout_s: float = _opt(
        "Decode: seconds to wait for the executor's reply of one layer before failing the step (> 0). A stalled "
        "executor stalls decode's whole batch this long; a layer takes under 1 ms on a GPU and ~50 ms for 128 "
        "rows on one CPU core, and a begin_step may wait 2 s for prefill's hand-over (ADOPT_WAIT_S).",
        default=3.0,
    )
    kv_lease_s: float = _opt(
        "Prefill: seconds the KV of an offloaded request stays held without word from its decode (decode renews "
        "every 2 s while it has the request); then it is freed as if decode had released it, so a decode that "
        "died leaves no KV behind. 0: no lease (held until decode releases it). 0 or 10..86400.",
        default=DEFAULT_LEASE_S,
    )
    executor_idle_yield_us: float = _opt(
        "Prefill: microseconds the scheduler's thread sleeps at each pass of its loop that found no batch, when "
        "it hosts the executor (0: never). Without it that loop spins in Python (also with --sleep-on-idle while "
        "requests are in flight), and the executor's thread, which needs the same GIL several times per layer, "
        "waits for it: decode's per-layer round trip was 3.4x (one core) to 6x (two cores) longer. 0..100000.",
        default=DEFAULT_IDLE_YIELD_US,
    )
    enable_fault_injection: bool = _opt(
        "Prefill, tests only: serve POST /adrenaline/executor/stop (loopback clients only), which stops this "
        "instance's executor thread while SGLang keeps serving, to test decode's handling of a dead executor.",
        default=False,
    )

    executor_partitioner: str = _opt(
        "Prefill: how the executor's SM share is enforced: green_context (in-process, re-partitioned live), mps "
        "(the process must run as an MPS client; a new plan needs a restart), none (not enforced), auto "
        "(green_context on a GPU, none elsewhere), fake (tests only).",
        default=ColocationConfig.partitioner,
    )
    ttft_slo_ms: float | None = _opt(
        "Prefill: mean TTFT target in ms (> 0). Set, the executor's SM share follows load: every "
        "--adrenaline-replan-interval-s the planner gives prefill the smallest share that meets it. Unset: the "
        "share stays at --adrenaline-executor-sm-share.",
        default=None,
    )
    colocation_profile: str = _opt(
        "Prefill, with --adrenaline-ttft-slo-ms: colocation profile folder (prefill.csv, attention.csv) the "
        "planner predicts with. Empty: the committed default (a measured one for this GPU where there is one).",
        default="",
    )
    replan_interval_s: float = _opt(
        f"Prefill, with --adrenaline-ttft-slo-ms: seconds between re-plans, (0, {MAX_REPLAN_INTERVAL_S:g}].",
        default=DEFAULT_REPLAN_INTERVAL_S,
    )
    arrival_window_s: float = _opt(
        "Prefill, with --adrenaline-ttft-slo-ms: sliding window in seconds over which the prompt tokens "
        f"arriving at this instance are averaged into tokens/s, (0, {MAX_REPLAN_INTERVAL_S:g}].",
        default=DEFAULT_ARRIVAL_WINDOW_S,
    )

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"adrenaline role={self.role!r}: expected one of {', '.join(ROLES)}")
        if self.transport not in TRANSPORTS:
            raise ValueError(f"adrenaline transport={self.transport!r}: expected one of {', '.join(TRANSPORTS)}")
        if not self.executor_host:
            raise ValueError("adrenaline executor_host is empty: expected a host name or IP address")
        if not 1 <= self.executor_port <= 65535:
            raise ValueError(f"adrenaline executor_port={self.executor_port}: expected 1..65535")
        check_executor_sm_share(self.executor_sm_share, "adrenaline executor_sm_share")
        if self.executor_max_tokens < 0:
            raise ValueError(f"adrenaline executor_max_tokens={self.executor_max_tokens}: expected >= 0")
        parse_unmarked(self.unmarked_offload, "adrenaline unmarked_offload")
        if not self.inner_attention_backend or self.inner_attention_backend == "adrenaline":
            raise ValueError(
                f"adrenaline inner_attention_backend={self.inner_attention_backend!r}: expected a stock SGLang "
                "attention backend (triton, flashinfer, torch_native, ...)"
            )
        if not self.remote_timeout_s > 0:
            raise ValueError(f"adrenaline remote_timeout_s={self.remote_timeout_s}: expected > 0")
        check_lease_s(self.kv_lease_s, "adrenaline kv_lease_s")
        if not 0 <= self.executor_idle_yield_us <= 100000:
            raise ValueError(f"adrenaline executor_idle_yield_us={self.executor_idle_yield_us}: expected 0..100000")
        self._check_colocation()

    def _check_colocation(self) -> None:
        if self.executor_partitioner not in EXECUTOR_PARTITIONERS:
            raise ValueError(f"adrenaline executor_partitioner={self.executor_partitioner!r}: expected one of "
                             f"{', '.join(EXECUTOR_PARTITIONERS)}")
        slo = self.ttft_slo_ms
        if slo is not None and (isinstance(slo, bool) or not isinstance(slo, int | float) or not math.isfinite(slo)
                                or slo <= 0):  # fmt: skip
            raise ValueError(f"adrenaline ttft_slo_ms={slo!r}: expected a number of ms > 0 (or unset)")
        for name in ("replan_interval_s", "arrival_window_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and 0 < value <= MAX_REPLAN_INTERVAL_S):
                raise ValueError(f"adrenaline {name}={value}: expected 0 < seconds <= {MAX_REPLAN_INTERVAL_S:g}")
        if self.colocation_profile and not Path(self.colocation_profile).is_dir():
            raise ValueError(f"adrenaline colocation_profile={self.colocation_profile!r}: not a folder (expected "
                             "one with prefill.csv and attention.csv, or empty for the committed default)")

    @property
    def enabled(self) -> bool:
        return self.role != "none"

    @property
    def unmarked_share(self) -> float:
        """The share of requests without the proxy's mark that are offloaded (see `unmarked_offload`)."""
        return parse_unmarked(self.unmarked_offload)

    @property
    def executor_addr(self) -> str:
        return f"{self.executor_host}:{self.executor_port}"


_CHOICES = {"role": ROLES, "transport": tuple(TRANSPORTS), "executor_partitioner": EXECUTOR_PARTITIONERS}
_TYPES = {"ttft_slo_ms": float}  # fields whose default (None) does not give the type


def _flag(name: str) -> str:
    return "--adrenaline-" + name.replace("_", "-")


def add_cli_args(parser: argparse.ArgumentParser) -> None:
    """Add the `Adrenaline offloading` group to SGLang's server parser (dest `adrenaline_<field>`)."""
    group = parser.add_argument_group("Adrenaline offloading (adrenaline_sgl plugin)")
    for f in dataclasses.fields(AdrenalineArgs):
        if isinstance(f.default, bool):  # a switch: present = True
            group.add_argument(_flag(f.name), dest="adrenaline_" + f.name, action="store_true",
                               help=f.metadata["help"] + " Default: off.")  # fmt: skip
            continue
        group.add_argument(
            _flag(f.name),
            dest="adrenaline_" + f.name,
            type=_TYPES.get(f.name, type(f.default)),
            default=f.default,
            choices=_CHOICES.get(f.name),
            help=f.metadata["help"] + f" Default: {f.default}.",
        )


def from_namespace(ns: argparse.Namespace) -> AdrenalineArgs:
    """Build the config from a parsed namespace; fields the namespace lacks keep their defaults."""
    values = {
        f.name: getattr(ns, "adrenaline_" + f.name)
        for f in dataclasses.fields(AdrenalineArgs)
        if hasattr(ns, "adrenaline_" + f.name)
    }
    return AdrenalineArgs(**values)


def of(server_args) -> AdrenalineArgs:
    """This instance's settings; `role='none'` when the record carries none (e.g. built by `Engine(**kw)`)."""
    found = getattr(server_args, ATTR_NAME, None)
    return found if isinstance(found, AdrenalineArgs) else AdrenalineArgs()

"""Adrenaline's server flags: a frozen config, the argparse group SGLang's parser gets, and its lookup.

SGLang 0.5.23 builds its parser in `ServerArgs.add_cli_args` and its record in `ServerArgs.from_cli_args`
(a msgspec Struct; unknown fields are dropped). The plugin wraps both (see `hooks_args.py`): the first adds
the group below, the second attaches an `AdrenalineArgs` to the record as `server_args._adrenaline`, an
underscore "bookkeeping" attribute that `ServerArgs.__reduce__` carries into the scheduler subprocesses.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

ROLES = ("none", "prefill", "decode")
TRANSPORTS = ("inproc", "mooncake", "cuda_ipc")
POLICY_WORDS = ("never", "always", "auto")
# "auto": green contexts on a GPU, none elsewhere (= adrenaline_sgl.colocation.executor_partitioner; import-free)
EXECUTOR_PARTITIONERS = ("auto", "green_context", "mps", "none")
MAX_REPLAN_INTERVAL_S = 3600.0
ATTR_NAME = "_adrenaline"  # attribute on sglang's ServerArgs record


MAX_OFFLOAD_RATIO = 10.0  # = adrenaline_sgl.scheduler.admission.MAX_OFFLOAD_RATIO (kept import-free here)


def validate_policy(text: str, field_name: str = "offload_policy") -> str:
    """Check `never | always | auto | ratio:F` (F = offloaded/local bound OB, 0 <= F <= 10), as the scheduler
    defines them; return it unchanged or raise ValueError naming the field."""
    if text in POLICY_WORDS:
        return text
    if text.startswith("ratio:"):
        try:
            ratio = float(text.split(":", 1)[1])
        except ValueError:
            ratio = -1.0
        if 0.0 <= ratio <= MAX_OFFLOAD_RATIO:
            return text
    raise ValueError(
        f"{field_name}={text!r}: expected one of never, always, auto, ratio:F with 0 <= F <= {MAX_OFFLOAD_RATIO:g}"
    )


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
        default="mooncake",
    )
    executor_host: str = _opt(
        "Prefill: interface the executor binds (127.0.0.1 unless opened on purpose). Decode: the executor to "
        "call when a request does not name one in custom_params['adrenaline_executor'].",
        default="127.0.0.1",
    )
    executor_port: int = _opt("Port of the executor's control endpoint (1..65535).", default=31000)
    executor_sm_share: float = _opt(
        "Prefill: share of the GPU's SMs given to the executor's stream, in (0, 1].", default=0.5
    )
    executor_max_tokens: int = _opt(
        "Prefill: most KV tokens the executor may hold for offloaded requests (0 = no limit beyond the pool).",
        default=0,
    )
    offload_policy: str = _opt(
        "Decision for requests that arrive without custom_params['adrenaline_offload'] (the proxy's mark "
        "wins): never, always, ratio:F (offload a share F/(1+F), picked by bootstrap room so prefill and decode "
        "agree), or auto (= never here; the proxy owns the global view).",
        default="never",
    )
    inner_attention_backend: str = _opt(
        "Decode with --attention-backend adrenaline: the SGLang backend it wraps for local rows (triton; "
        "flashinfer where installed; torch_native on CPU).",
        default="triton",
    )
    remote_timeout_s: float = _opt(
        "Decode: seconds to wait for the executor's reply of one layer before failing the step (> 0).",
        default=5.0,
    )
    enable_fault_injection: bool = _opt(
        "Prefill, tests only: serve POST /adrenaline/executor/stop (loopback clients only), which stops this "
        "instance's executor thread while SGLang keeps serving, to test decode's handling of a dead executor.",
        default=False,
    )

    executor_partitioner: str = _opt(
        "Prefill: how the executor's SM share is enforced: green_context (in-process, re-partitioned live), mps "
        "(the process must run as an MPS client; a new plan needs a restart), none (not enforced), auto "
        "(green_context on a GPU, none elsewhere).",
        default="auto",
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
        default=1.0,
    )
    arrival_window_s: float = _opt(
        "Prefill, with --adrenaline-ttft-slo-ms: sliding window in seconds over which the prompt tokens "
        f"arriving at this instance are averaged into tokens/s, (0, {MAX_REPLAN_INTERVAL_S:g}].",
        default=10.0,
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
        if not 0.0 < self.executor_sm_share <= 1.0:
            raise ValueError(f"adrenaline executor_sm_share={self.executor_sm_share}: expected 0 < share <= 1")
        if self.executor_max_tokens < 0:
            raise ValueError(f"adrenaline executor_max_tokens={self.executor_max_tokens}: expected >= 0")
        validate_policy(self.offload_policy, "adrenaline offload_policy")
        if not self.inner_attention_backend or self.inner_attention_backend == "adrenaline":
            raise ValueError(
                f"adrenaline inner_attention_backend={self.inner_attention_backend!r}: expected a stock SGLang "
                "attention backend (triton, flashinfer, torch_native, ...)"
            )
        if not self.remote_timeout_s > 0:
            raise ValueError(f"adrenaline remote_timeout_s={self.remote_timeout_s}: expected > 0")
        self._check_colocation()

    def _check_colocation(self) -> None:
        if self.executor_partitioner not in EXECUTOR_PARTITIONERS:
            raise ValueError(f"adrenaline executor_partitioner={self.executor_partitioner!r}: expected one of "
                             f"{', '.join(EXECUTOR_PARTITIONERS)}")
        slo = self.ttft_slo_ms
        if slo is not None and (isinstance(slo, bool) or not isinstance(slo, int | float) or not math.isfinite(slo)
                                or slo <= 0):  # fmt: skip
            raise ValueError(f"adrenaline ttft_slo_ms={slo!r}: expected a number of ms > 0 (or unset)")
        if slo is not None and self.executor_sm_share == 1.0:
            raise ValueError("adrenaline ttft_slo_ms needs executor_sm_share < 1 (the starting split; 1 means "
                             "the whole GPU, unpartitioned)")
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
    def executor_addr(self) -> str:
        return f"{self.executor_host}:{self.executor_port}"


_CHOICES = {"role": ROLES, "transport": TRANSPORTS, "executor_partitioner": EXECUTOR_PARTITIONERS}
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

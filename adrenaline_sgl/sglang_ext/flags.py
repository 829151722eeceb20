"""Adrenaline's server flags: a frozen config, the argparse group SGLang's parser gets, and its lookup.

SGLang 0.5.23 builds its parser in `ServerArgs.add_cli_args` and its record in `ServerArgs.from_cli_args`
(a msgspec Struct; unknown fields are dropped). The plugin wraps both (see `hooks_args.py`): the first adds
the group below, the second attaches an `AdrenalineArgs` to the record as `server_args._adrenaline`, an
underscore "bookkeeping" attribute that `ServerArgs.__reduce__` carries into the scheduler subprocesses.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field

ROLES = ("none", "prefill", "decode")
TRANSPORTS = ("inproc", "mooncake", "cuda_ipc")
POLICY_WORDS = ("never", "always", "auto")
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

    @property
    def enabled(self) -> bool:
        return self.role != "none"

    @property
    def executor_addr(self) -> str:
        return f"{self.executor_host}:{self.executor_port}"


_CHOICES = {"role": ROLES, "transport": TRANSPORTS}


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
            type=type(f.default),
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

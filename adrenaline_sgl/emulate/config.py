"""What GPU and model an emulated SGLang server pretends to be: `EmulateConfig`.

An emulated server is a real SGLang 0.5.23 server (scheduler, memory pools, PD bootstrap and transfer
queues, our plugin's hooks) serving a tiny stand-in model, whose GPU work is replaced by a timed stand-in
(docs/emulator.md). This config names what is emulated; the launcher (`emulate:` in a cluster YAML) passes
it to every server process as JSON in `$ADRENALINE_EMULATE`, and the SGLang glue
(`adrenaline_sgl/sglang_ext/emulate_hooks.py`) reads it back in each process.

Times come from the scheduler's cost model (`adrenaline_sgl.scheduler.cost_model`), the same predictor the
simulator and the proxy's `auto` policy use. `clock_scale` k >= 1 slows emulated time: every modelled
duration is slept k times longer, so that SGLang's real CPU work per step (on a small shared machine)
stays small next to the modelled GPU time; the load generator stretches arrival gaps by k too, and every
measured time is divided by k before it is reported (docs/emulator.md, "Clock scale").
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields

from adrenaline_sgl.scheduler.bounds import DEFAULT_EXECUTOR_SM_SHARE, DEFAULT_MEM_FRACTION, check_executor_sm_share

ENV_VAR = "ADRENALINE_EMULATE"
EXECUTOR_COLOCATIONS = ("partition", "timeshare")  # the simulator's (sim/config.py), same meaning


def _help(text: str, default):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class EmulateConfig:
    """The emulated hardware and model, and how emulated time maps to wall time."""

    gpu: str = _help("GPU name known to adrenaline_sgl.scheduler.specs (e.g. a100-80g), or a measured device "
                     "(a CPU profile: cpu-epyc-1core-sgl, docs/emulator.md); the decode instance's", "a100-80g")
    prefill_gpu: str | None = _help("the prefill instance's device (its prefill and its executor's attention) "
                                    "when it differs from decode's (the real CPU experiment: "
                                    "cpu-epyc-1core-sgl-exec); None: as gpu", None)
    model: str = _help("emulated model, known to adrenaline_sgl.scheduler.specs (e.g. llama2-13b)", "llama2-13b")
    tp: int = _help("tensor parallel size of the emulated instance; only 1 (the cost model is TP 1)", 1)
    predictor: str = _help("cost predictor: roofline | table (adrenaline_sgl.scheduler.cost_model)", "roofline")
    profile: str | None = _help("table predictor: its profile CSV (scheduler/profiles); unused by roofline", None)
    prefill_profile: str | None = _help("table predictor: prefill_gpu's profile CSV; None: the package's profile "
                                        "of prefill_gpu (scheduler/profiles), or profile when prefill_gpu is gpu",
                                        None)
    link: str = _help("prefill -> decode link for the KV transfer time (nvlink | pcie4 | ib-200g ...)", "nvlink")
    mem_fraction: float = _help("share of HBM for weights + KV (SGLang's mem_fraction_static); sizes the KV "
                                "pool in tokens exactly as the simulator does", DEFAULT_MEM_FRACTION)
    executor_sm_share: float = _help("SM share of the attention executor on an Adrenaline prefill GPU: prefill "
                                     "runs on the rest, remote decode attention on this share",
                                     DEFAULT_EXECUTOR_SM_SHARE)
    executor_colocation: str = _help("how the executor shares its prefill device, as the simulator's field of "
                                     "that name: partition (a GPU: executor_sm_share of the SMs, prefill the "
                                     "rest) or timeshare (one CPU core: each at the whole core's speed alone, "
                                     "the executor's attention twice as long while a prefill batch runs)",
                                     "partition")
    max_total_tokens: int | None = _help("KV pool in tokens instead of the GPU arithmetic (e.g. the real CPU "
                                         "experiment's --max-total-tokens when emulating it); None: computed", None)
    prefill_max_total_tokens: int | None = _help("prefill's KV pool in tokens when it differs from decode's (the "
                                                 "real CPU experiment: 8192 vs 320); None: as decode's", None)
    clock_scale: float = _help("k >= 1: emulated time runs k times slower than wall time (all sleeps x k)", 1.0)
    trace_dir: str | None = _help("folder for per-step traces and the prefill busy state (the launcher sets "
                                  "its run folder); None: no trace, no executor contention", None)

    def __post_init__(self) -> None:
        from adrenaline_sgl.scheduler.cost_model import get_link, predictor_names
        from adrenaline_sgl.scheduler.specs import get_gpu, get_model

        gpu, model = get_gpu(self.gpu), get_model(self.model)  # one-line ValueError naming the valid names
        if self.prefill_gpu is not None:
            get_gpu(self.prefill_gpu)
        if self.tp != 1:
            raise ValueError(f"emulate.tp={self.tp!r} is not supported: the cost model is TP 1; valid: 1")
        if self.predictor not in predictor_names():
            raise ValueError(f"emulate.predictor={self.predictor!r} is unknown; valid: {', '.join(predictor_names())}")
        if self.predictor == "table" and not self.profile:
            raise ValueError("emulate.predictor=table needs emulate.profile (a profile CSV)")
        if self.predictor == "table" and (path := prefill_profile_path(self)) is not None and not os.path.isfile(path):
            raise ValueError(f"emulate: no profile CSV for prefill_gpu={self.prefill_gpu!r} at {path}; "
                             "give emulate.prefill_profile")
        if self.executor_colocation not in EXECUTOR_COLOCATIONS:
            raise ValueError(f"emulate.executor_colocation={self.executor_colocation!r} is unknown; valid: "
                             f"{', '.join(EXECUTOR_COLOCATIONS)}")
        get_link(self.link, gpu)
        if not 0.0 < self.mem_fraction <= 1.0:
            raise ValueError(f"emulate.mem_fraction={self.mem_fraction!r} is out of range; valid: (0, 1]")
        check_executor_sm_share(self.executor_sm_share, "emulate.executor_sm_share")
        if not (isinstance(self.clock_scale, int | float) and 1.0 <= self.clock_scale <= 1000.0) or math.isnan(
            self.clock_scale
        ):
            raise ValueError(f"emulate.clock_scale={self.clock_scale!r} is out of range; valid: [1, 1000]")
        from adrenaline_sgl.emulate.pool import kv_pool_tokens

        for name in ("max_total_tokens", "prefill_max_total_tokens"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"emulate.{name}={value!r} must be an integer >= 1 or null")
        if self.max_total_tokens is None and kv_pool_tokens(self) < model.max_context_tokens:  # a given pool may
            # hold less than one context, as a capped real server's does (SGLang serves it)
            raise ValueError(f"emulate: {model.name} leaves {kv_pool_tokens(self)} KV tokens on {gpu.name} at "
                             f"mem_fraction={self.mem_fraction}; need >= {model.max_context_tokens}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> EmulateConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"${ENV_VAR} is not JSON ({err})") from None
        return from_dict(data, where=f"${ENV_VAR}")


def prefill_profile_path(cfg: EmulateConfig) -> str | None:
    """The table predictor's CSV for the prefill instance's device; None when it is decode's (`profile`)."""
    if cfg.prefill_gpu is None or cfg.prefill_gpu == cfg.gpu:
        return cfg.prefill_profile or None
    if cfg.prefill_profile:
        return cfg.prefill_profile
    from adrenaline_sgl.scheduler.specs import get_model
    from adrenaline_sgl.scheduler.table import default_profile_path

    return str(default_profile_path(cfg.prefill_gpu, get_model(cfg.model).name))


def from_dict(data, where: str = "emulate") -> EmulateConfig:
    """Build and validate from a parsed YAML/JSON mapping; unknown keys are errors."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in fields(EmulateConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown keys {unknown}; valid keys are {sorted(names)}")
    return EmulateConfig(**data)


def from_env(environ=os.environ) -> EmulateConfig | None:
    """The config of this process (`$ADRENALINE_EMULATE`), or None when the server is not emulated."""
    text = environ.get(ENV_VAR)
    return EmulateConfig.from_json(text) if text else None


def field_help() -> dict[str, str]:
    return {f.name: f.metadata.get("help", "") for f in fields(EmulateConfig)}

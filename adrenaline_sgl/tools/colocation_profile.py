"""Measure the colocation profile on a GPU: prefill latency and executor decode-attention bandwidth vs SM
share, prefill beside an executor at full load, and the device-to-device copy bandwidth as reference.

    python -m adrenaline_sgl.tools.colocation_profile --out results/colocation/h100   # on the GPU machine

Needs torch and triton only (no sglang). Shares are fractions of the device's SMs, 1/16 .. 1 by default;
each share below 1 runs in a green-context partition rounded to what the architecture allows (the
realised SM count is written). Per share: prefill of `--layers` Llama-shaped layers (random weights) for
each `--tokens`, alone on its SMs; our decode kernel (`adrenaline_kernels`, planned with the partition's
SM count) at `--batch` x `--context`; and prefill again while the executor saturates the other SMs.
Writes `prefill.csv` and `attention.csv` with provenance (see profiles.py) after every share, so a run cut
short keeps what it measured; stops starting new shares after `--budget-s`. `--device cpu` is a smoke
run on a fake partition (provenance source "cpu-smoke"; never preferred over measured profiles).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from adrenaline_sgl.colocation.arch import DeviceInfo
from adrenaline_sgl.colocation.profiles import AttentionPoint, PrefillPoint, Profile, write_profile

DEFAULT_SHARES = tuple(i / 16 for i in range(1, 17))


@dataclass(frozen=True)
class ProfileRunConfig:
    out: str = field(metadata={"help": "folder for prefill.csv and attention.csv"})
    device: str = field(default="cuda:0", metadata={"help": "cuda:N, or cpu for a smoke run"})
    shares: tuple[float, ...] = field(default=DEFAULT_SHARES, metadata={"help": "SM shares in (0, 1]"})
    tokens: tuple[int, ...] = field(default=(512, 2048), metadata={"help": "prefill prompt lengths"})
    layers: int = field(default=2, metadata={"help": "Llama layers per prefill timing"})
    batch: int = field(default=32, metadata={"help": "decode requests per attention call"})
    context: int = field(default=4096, metadata={"help": "KV tokens per request"})
    hidden: int = field(default=4096, metadata={"help": "model hidden size (Llama-2-7B)"})
    heads: int = field(default=32, metadata={"help": "query heads"})
    kv_heads: int = field(default=32, metadata={"help": "KV heads"})
    head_dim: int = field(default=128, metadata={"help": "head dimension"})
    ffn: int = field(default=11008, metadata={"help": "FFN intermediate size"})
    dtype: str = field(default="bfloat16", metadata={"help": "bfloat16 or float16 (float32 on cpu)"})
    api: str = field(default="auto", metadata={"help": "green-context API: auto, torch or driver"})
    attention_impl: str = field(default="triton", metadata={"help": "triton (our kernel) or torch (reference)"})
    reps: int = field(default=10, metadata={"help": "timed repetitions (median)"})
    warmup: int = field(default=3, metadata={"help": "untimed repetitions first"})
    copy_mib: int = field(default=1024, metadata={"help": "copy-bandwidth buffer, MiB"})
    contention: bool = field(default=True, metadata={"help": "also time prefill beside the executor"})
    budget_s: float = field(default=480.0, metadata={"help": "start no new share after this many seconds"})

    def __post_init__(self):
        if not self.shares or any(not 0 < s <= 1 for s in self.shares):
            raise ValueError(f"shares must be in (0, 1], got {self.shares}")
        for name in ("layers", "batch", "context", "reps", "copy_mib"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tokens or min(self.tokens) < 1:
            raise ValueError(f"tokens must be >= 1, got {self.tokens}")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise ValueError(f"dtype must be bfloat16, float16 or float32, got {self.dtype!r}")
        if self.attention_impl not in ("triton", "torch"):
            raise ValueError(f"attention_impl must be triton or torch, got {self.attention_impl!r}")
        if self.budget_s <= 0:
            raise ValueError(f"budget_s must be > 0, got {self.budget_s}")


def _run_text(cmd: list[str], timeout_s: float = 10) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def provenance(cfg: ProfileRunConfig, info: DeviceInfo, copy_gbs: float, mode: str) -> dict[str, str]:
    import torch

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = "missing"
    on_gpu = cfg.device.startswith("cuda")
    return {
        "source": "measured" if on_gpu else "cpu-smoke",
        "title": f"measured on {info.name}" if on_gpu else "CPU smoke run, not a GPU measurement",
        "gpu": info.name,
        "total_sms": str(info.total_sms),
        "compute_capability": f"{info.compute_capability[0]}.{info.compute_capability[1]}",
        "driver": _run_text(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]) if on_gpu else "-",
        "torch": torch.__version__,
        "cuda": str(torch.version.cuda),
        "triton": triton_version,
        "git_sha": _run_text(["git", "rev-parse", "--short", "HEAD"]),
        "date_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python -m adrenaline_sgl.tools.colocation_profile " + " ".join(sys.argv[1:]),
        "model": f"{cfg.layers} Llama layers hidden {cfg.hidden} heads {cfg.heads}/{cfg.kv_heads} head_dim "
        f"{cfg.head_dim} ffn {cfg.ffn} {cfg.dtype}, random weights",
        "attention": f"{cfg.attention_impl} decode attention, batch {cfg.batch} x context {cfg.context}, "
        "planned with the partition's num_sms",
        "reference": f"ref_gbs = device-to-device copy of {cfg.copy_mib} MiB, read+write bytes: {copy_gbs:.1f} GB/s",
        "contention": mode,
        "timing": f"median of {cfg.reps} after {cfg.warmup} warm-up, "
        + ("CUDA events on the partition's stream" if on_gpu else "host clock"),
    }


class _Partitions:
    """Streams for a share: a green-context partition on CUDA, the fake one on CPU, none at share 1."""

    def __init__(self, cfg: ProfileRunConfig, info: DeviceInfo, api: str | None = None):
        self.cfg, self.info, self.api = cfg, info, api or cfg.api

    def open(self, share: float):
        from adrenaline_sgl.colocation.fake import FakePartitioner
        from adrenaline_sgl.colocation.green_context import GreenContextPartitioner
        from adrenaline_sgl.colocation.none import NonePartitioner

        if share >= 1.0:
            return NonePartitioner(self.cfg.device).open(0.5)  # the whole device, its own stream
        if self.cfg.device.startswith("cuda"):
            return GreenContextPartitioner(self.cfg.device, api=self.api).open(share)
        return FakePartitioner(self.cfg.device, info=self.info).open(share)


def _contention_api(cfg: ProfileRunConfig) -> tuple[str, str]:
    """The driver API gives prefill a partition disjoint from the executor's; use it where it works."""
    from adrenaline_sgl.colocation.green_context import GreenContextPartitioner

    if cfg.api in ("auto", "driver"):
        try:
            GreenContextPartitioner(cfg.device, api="driver").open(0.5).close()
            return "driver", "prefill on the SMs the executor's partition leaves (disjoint, driver API)"
        except Exception as e:  # noqa: BLE001 - any failure means: fall back, and say why
            if cfg.api == "driver":
                raise
            why = f"{type(e).__name__}: {str(e)[:120]}"
    else:
        why = "--api torch"
    return "torch", f"prefill unpartitioned (all SMs) beside the executor's partition (driver API not used: {why})"


def _contended_prefill_ms(cfg, parts, info, share, prefill, attention, alone_ms: float) -> tuple[float, int, bool]:
    """Prefill on `share` while the executor runs back to back on the other SMs. Returns (ms, executor SMs,
    whether the executor was still busy when prefill finished)."""
    import torch

    from adrenaline_sgl.colocation.arch import share_to_sms

    prefill_sms = share_to_sms(share, info) if share < 1 else info.total_sms
    exec_part = parts.open(max(1e-6, min(0.999999, (info.total_sms - prefill_sms) / info.total_sms)))
    try:
        attention.plan(exec_part.num_sms)
        exec_stream = exec_part.stream
        prefill_stream = exec_part.partition.prefill_stream or torch.cuda.Stream(device=torch.device(cfg.device))
        attn_ms = _time(cfg, attention.run, exec_stream)
        calls = min(20000, math.ceil(2.0 * (cfg.reps + cfg.warmup) * alone_ms / max(attn_ms, 1e-3)) + 4)
        done = torch.cuda.Event()
        with torch.cuda.stream(exec_stream):
            for _ in range(calls):
                attention.run()
            done.record(exec_stream)
        ms = _time(cfg, prefill.run, prefill_stream)
        still_busy = not done.query()
        torch.cuda.synchronize(torch.device(cfg.device))
        return ms, exec_part.num_sms, still_busy
    finally:
        exec_part.close()


def _time(cfg: ProfileRunConfig, fn, stream) -> float:
    from adrenaline_sgl.tools.colocation_workloads import time_ms

    return time_ms(fn, stream, reps=cfg.reps, warmup=cfg.warmup)


def device_info(device: str) -> DeviceInfo:
    if device.startswith("cuda"):
        from adrenaline_sgl.colocation.partitioner import cuda_device_info

        return cuda_device_info(device)
    from adrenaline_sgl.colocation.fake import H100_SXM

    return H100_SXM


def run(cfg: ProfileRunConfig, progress: bool = True) -> Profile:
    import torch
    from tqdm import tqdm

    from adrenaline_sgl.tools.colocation_workloads import Copy, DecodeAttention, LlamaLayerShape, PrefillLayers

    t_start = time.monotonic()
    info = device_info(cfg.device)
    on_gpu = cfg.device.startswith("cuda")
    dtype = getattr(torch, cfg.dtype)
    shape = LlamaLayerShape(cfg.hidden, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.ffn)
    copy = Copy(cfg.copy_mib << 20, cfg.device)
    copy_gbs = copy.bytes_moved / _time(cfg, copy.run, None) / 1e6
    del copy
    prefills: dict[int, PrefillLayers] = {}
    for t in cfg.tokens:  # one set of random weights, one input per prompt length
        shared = next(iter(prefills.values())).weights if prefills else None
        prefills[t] = PrefillLayers(t, cfg.layers, shape, cfg.device, dtype, weights=shared)
    attention = DecodeAttention(cfg.batch, cfg.context, shape, cfg.device, dtype, cfg.attention_impl)
    parts = _Partitions(cfg, info)
    contention = cfg.contention and on_gpu
    mode, exec_parts = "not measured", parts
    if contention:
        api, mode = _contention_api(cfg)
        exec_parts = _Partitions(cfg, info, api)
    prov_base = provenance(cfg, info, copy_gbs, mode)
    prefill_rows: list[PrefillPoint] = []
    attn_rows: list[AttentionPoint] = []
    notes: list[str] = []
    profile = None
    for share in tqdm(sorted(cfg.shares), desc="SM shares", disable=not progress):
        if time.monotonic() - t_start > cfg.budget_s:
            notes.append(f"stopped before share {share:.4f}: budget {cfg.budget_s} s spent")
            break
        part = parts.open(share)
        try:
            n = part.num_sms if share < 1 else info.total_sms
            attention.plan(n)
            attn_ms = _time(cfg, attention.run, part.stream)
            attn_rows.append(AttentionPoint(share, n, info.total_sms, cfg.batch, cfg.context, attn_ms,
                                            attention.bytes_moved / attn_ms / 1e6, copy_gbs))  # fmt: skip
            for t, prefill in prefills.items():
                alone = _time(cfg, prefill.run, part.stream)
                contended, exec_sms = math.nan, 0
                if contention and share < 1:
                    contended, exec_sms, busy = _contended_prefill_ms(cfg, exec_parts, info, share, prefill, attention,
                                                                      alone)  # fmt: skip
                    if not busy:
                        notes.append(f"share {share:.4f} tokens {t}: executor went idle before prefill finished")
                prefill_rows.append(PrefillPoint(share, n, info.total_sms, t, cfg.layers, alone, contended, exec_sms))
        finally:
            part.close()
        prov = dict(prov_base)
        prov["notes"] = "; ".join(notes) or "none"
        prov["elapsed_s"] = f"{time.monotonic() - t_start:.1f}"
        profile = Profile(Path(cfg.out).name, prov, tuple(prefill_rows), tuple(attn_rows))
        write_profile(profile, cfg.out)
    if profile is None:
        raise RuntimeError(f"no share was measured within budget_s={cfg.budget_s}")
    return profile


def summary(profile: Profile) -> str:
    """The table the run prints last, and the answers the issue asks for."""
    lines = ["share  sms  attn_GB/s  frac_of_copy  " + "  ".join(f"prefill{t}_ms(contended)" for t in
                                                                 profile.token_counts)]  # fmt: skip
    for a in sorted(profile.attention, key=lambda a: a.sm_share):
        cells = []
        for t in profile.token_counts:
            p = next((p for p in profile.prefill if p.tokens == t and p.sm_share == a.sm_share), None)
            cells.append("-" if p is None else f"{p.prefill_ms:.2f}({p.prefill_contended_ms:.2f})")
        lines.append(f"{a.sm_share:.4f} {a.num_sms:4d} {a.attn_gbs:10.1f} {a.frac_of_ref:12.3f}  " + "  ".join(cells))
    frac = profile.attn_gbs(0.2) / profile.attention[0].ref_gbs
    lines.append(f"at 20% of SMs the executor reaches {frac:.1%} of the reference bandwidth "
                 f"({'>=' if frac >= 0.6 else '<'} 60%)")  # fmt: skip
    return "\n".join(lines)


def _parse_share(text: str) -> float:
    num, _, den = text.partition("/")
    return float(num) / float(den) if den else float(num)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    defaults = ProfileRunConfig(out="-")
    for f in ProfileRunConfig.__dataclass_fields__.values():
        flag = "--" + f.name.replace("_", "-")
        value = getattr(defaults, f.name)
        if f.name == "out":
            ap.add_argument(flag, required=True, help=f.metadata["help"])
        elif isinstance(value, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=value, help=f.metadata["help"])
        elif isinstance(value, tuple):
            conv = _parse_share if f.name == "shares" else int
            ap.add_argument(flag, type=lambda s, c=conv: tuple(c(x) for x in s.split(",")), default=value,
                            help=f.metadata["help"] + " (comma-separated)")  # fmt: skip
        else:
            ap.add_argument(flag, type=type(value), default=value, help=f.metadata["help"])
    args = vars(ap.parse_args(argv))
    try:
        cfg = ProfileRunConfig(**args)
    except ValueError as e:
        ap.error(str(e))
    profile = run(cfg)
    print(summary(profile))
    print(f"wrote {cfg.out}/prefill.csv and {cfg.out}/attention.csv")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

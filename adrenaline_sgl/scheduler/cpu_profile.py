"""The raw measurements of a CPU profile, and the link fit the device spec takes from them.

`python -m adrenaline_sgl.tools.profile_cpu` writes three files into `profiles/` for a device `cpu-X` and a
model M (SmolLM2-135M as served on CPU):

- `cpu-X.device.json`: the device spec (specs.py registers it by name) with provenance;
- `cpu-X__M.csv`: a `table.ProfileTable` (per-operator, per-layer times) for `get_predictor("table", ...)`;
- `cpu-X__M.raw.csv`: this module's format, every measurement as taken, for validating the simulator
  against them (item 4 of issue 14) without going through the per-operator split:

| what | rows | context_tokens | ms |
|---|---|---|---|
| prefill_step | prompt tokens | 0 | one prompt's whole prefill (30 layers, LM head row, KV into the pool) |
| decode_step | batch | per sequence | one whole decode step (all layers, LM head, argmax) |
| decode_local_attn | batch | per sequence | one layer's local attention inside that step |
| executor_attn | offloaded rows | per sequence | one layer of `AttentionExecutor.step` (append + attention) |
| executor_begin_step | offloaded rows | per sequence | `AttentionExecutor.begin_step` (once per step) |
| round_trip | offloaded rows | per sequence | one layer's submit -> wait over Mooncake TCP, executor on the peer CPU |

Columns: `what,rows,context_tokens,ms_p50,ms_p99,samples`, after `# key: value` provenance lines.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from adrenaline_sgl.scheduler.table import split_provenance

RAW_KINDS = ("prefill_step", "decode_step", "decode_local_attn", "executor_attn", "executor_begin_step",
             "round_trip")
RAW_COLUMNS = ("what", "rows", "context_tokens", "ms_p50", "ms_p99", "samples")


@dataclass(frozen=True)
class RawRow:
    what: str
    rows: int
    context_tokens: int  # per sequence
    ms_p50: float
    ms_p99: float
    samples: int

    def __post_init__(self) -> None:
        if self.what not in RAW_KINDS:
            raise ValueError(f"raw profile row: what must be one of {list(RAW_KINDS)}, got {self.what!r}")
        if self.rows < 1 or self.context_tokens < 0 or self.samples < 1:
            raise ValueError(f"raw profile row out of range (rows >= 1, context_tokens >= 0, samples >= 1): {self}")
        if not 0 < self.ms_p50 <= self.ms_p99:
            raise ValueError(f"raw profile row needs 0 < ms_p50 <= ms_p99: {self}")


@dataclass(frozen=True)
class RawProfile:
    provenance: dict
    rows: tuple[RawRow, ...]

    def of(self, what: str) -> list[RawRow]:
        if what not in RAW_KINDS:
            raise ValueError(f"what must be one of {list(RAW_KINDS)}, got {what!r}")
        return [r for r in self.rows if r.what == what]

    def to_csv(self) -> str:
        out = io.StringIO()
        for key, value in self.provenance.items():
            out.write(f"# {key}: {value}\n")
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(RAW_COLUMNS)
        for r in self.rows:
            writer.writerow([r.what, r.rows, r.context_tokens, f"{r.ms_p50:.6g}", f"{r.ms_p99:.6g}", r.samples])
        return out.getvalue()

    @staticmethod
    def from_csv(text: str) -> RawProfile:
        prov, body = split_provenance(text)
        reader = csv.DictReader(body)
        if reader.fieldnames is None or list(reader.fieldnames) != list(RAW_COLUMNS):
            raise ValueError(f"raw profile columns must be {list(RAW_COLUMNS)}, got {reader.fieldnames}")
        rows = tuple(RawRow(r["what"], int(r["rows"]), int(r["context_tokens"]), float(r["ms_p50"]),
                            float(r["ms_p99"]), int(r["samples"])) for r in reader)
        return RawProfile(prov, rows)

    @staticmethod
    def load(path: str | os.PathLike) -> RawProfile:
        return RawProfile.from_csv(Path(path).read_text())


def raw_profile_path(folder: str | os.PathLike, device: str, model: str) -> Path:
    return Path(folder) / f"{device}__{model}.raw.csv"


@dataclass(frozen=True)
class LinkFit:
    """time(one message of b bytes) = latency_us + b / gbs, fitted to per-layer round trips (two messages)."""

    gbs: float
    latency_us: float
    max_abs_rel_err: float  # of the fitted round-trip transfer time over the points it was fitted to


MAX_LINK_GBS = 1000.0  # a fit with no measurable per-byte cost gets this bandwidth (bytes then cost ~nothing)


def fit_link(points: list[tuple[float, float]]) -> LinkFit:
    """Least squares of transfer_ms = 2 * latency + bytes / bandwidth over (bytes both ways, ms) points.

    `ms` is a round trip minus the executor's own time, so the two messages' fixed costs (latency) and the
    per-byte cost are what is left. Clamped: latency >= 0, bandwidth <= MAX_LINK_GBS."""
    if len(points) < 2 or len({b for b, _ in points}) < 2:
        raise ValueError(f"fit_link needs points at two or more sizes, got {points}")
    n = len(points)
    mx = sum(b for b, _ in points) / n
    my = sum(ms for _, ms in points) / n
    sxx = sum((b - mx) ** 2 for b, _ in points)
    slope = sum((b - mx) * (ms - my) for b, ms in points) / sxx  # ms per byte
    slope = max(slope, 1e3 / (MAX_LINK_GBS * 1e9))
    intercept = max(0.0, my - slope * mx)
    err = max(abs(intercept + slope * b - ms) / ms for b, ms in points)
    return LinkFit(gbs=1e3 / slope / 1e9, latency_us=intercept / 2 * 1e3, max_abs_rel_err=err)

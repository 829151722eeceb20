"""Table predictor: operator times measured on a real GPU, interpolated; the roofline fills the gaps.

A profile table is a CSV with provenance lines first (`# key: value`, all of `PROVENANCE_KEYS` required),
then the columns of `COLUMNS`, one measured call a row (ms = median time of one call, one layer):

    # gpu: h100-sxm
    # model: llama2-7b
    # driver: 550.54.15
    # torch: 2.11.0+cu130
    # triton: 3.6.0
    # git_sha: 0123abc
    # command: python -m adrenaline_sgl.tools.profile_gpu --model llama2-7b --out ...
    op,phase,num_tokens,context_tokens,num_seqs,sm_share,ms
    qkv,decode,16,0,1,1.0,0.041

Further `# key: value` lines (a CPU profile's machine, date, load average, status) are kept as provenance
and written back after the required ones.

Lookup, per (op, phase, sm_share):
- attention in decode: bilinear over the (batch, context per sequence) grid, which must be complete;
- every other op: linear in num_tokens (prefill attention: per prompt, num_seqs=1 rows).
Outside the measured range, or at an unmeasured sm_share, the nearest measured point is scaled by the
roofline's ratio between the query and that point. Ops absent from the table use the roofline
(`fallback="roofline"`) or raise (`fallback="error"`). FLOPs, bytes and fractions come from the roofline's
work model with the table's time. Measured tables live in `adrenaline_sgl/scheduler/profiles/`
(package data; see its README).

Tensor parallelism: a table holds one GPU's shard times at one TP, named by an optional `# tp: N`
provenance line (absent: 1); a predictor at another `tp` refuses it. The group's collectives are not in
the table: the step helpers add them from the comm model, as for the roofline.
"""

from __future__ import annotations

import bisect
import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path

from adrenaline_sgl.scheduler.collectives import CommModel
from adrenaline_sgl.scheduler.cost_model import OpCost, Predictor, fractions, validate_op_args
from adrenaline_sgl.scheduler.ops import op_work
from adrenaline_sgl.scheduler.roofline import RooflinePredictor
from adrenaline_sgl.scheduler.specs import GPUSpec, ModelSpec

PROVENANCE_KEYS = ("gpu", "model", "driver", "torch", "triton", "git_sha", "command")
COLUMNS = ("op", "phase", "num_tokens", "context_tokens", "num_seqs", "sm_share", "ms")
PROFILES_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass(frozen=True)
class TableRow:
    op: str
    phase: str
    num_tokens: int
    context_tokens: int
    num_seqs: int
    sm_share: float
    ms: float


def split_provenance(text: str) -> tuple[dict[str, str], list[str]]:
    """A profile CSV's `# key: value` provenance lines (a dict) and its non-empty CSV lines."""
    prov, body = {}, []
    for line in text.splitlines():
        if line.startswith("#"):
            key, _, value = line[1:].partition(":")
            prov[key.strip()] = value.strip()
        elif line.strip():
            body.append(line)
    return prov, body


@dataclass(frozen=True)
class ProfileTable:
    """Measured rows plus provenance (every key of PROVENANCE_KEYS)."""

    provenance: dict
    rows: tuple[TableRow, ...]

    def __post_init__(self) -> None:
        missing = [k for k in PROVENANCE_KEYS if not str(self.provenance.get(k, "")).strip()]
        if missing:
            raise ValueError(f"profile table provenance is missing {missing} (required: {list(PROVENANCE_KEYS)})")
        if not self.rows:
            raise ValueError("profile table has no rows")
        for r in self.rows:
            if not r.ms > 0 or r.num_tokens < 1 or r.num_seqs < 1 or not 0 < r.sm_share <= 1:
                raise ValueError(f"profile row out of range (ms > 0, num_tokens >= 1, sm_share in (0, 1]): {r}")

    def to_csv(self) -> str:
        out = io.StringIO()
        for k in PROVENANCE_KEYS:
            out.write(f"# {k}: {self.provenance[k]}\n")
        for k, value in self.provenance.items():
            if k not in PROVENANCE_KEYS:
                out.write(f"# {k}: {value}\n")
        w = csv.writer(out, lineterminator="\n")
        w.writerow(COLUMNS)
        for r in self.rows:
            w.writerow([r.op, r.phase, r.num_tokens, r.context_tokens, r.num_seqs, r.sm_share, f"{r.ms:.6g}"])
        return out.getvalue()

    @staticmethod
    def from_csv(text: str) -> ProfileTable:
        prov, body = split_provenance(text)
        reader = csv.DictReader(body)
        if reader.fieldnames is None or set(COLUMNS) - set(reader.fieldnames):
            raise ValueError(f"profile table columns must include {list(COLUMNS)}, got {reader.fieldnames}")
        rows = tuple(
            TableRow(
                r["op"],
                r["phase"],
                int(r["num_tokens"]),
                int(r["context_tokens"]),
                int(r["num_seqs"]),
                float(r["sm_share"]),
                float(r["ms"]),
            )
            for r in reader
        )
        return ProfileTable(prov, rows)

    @staticmethod
    def load(path: str | os.PathLike) -> ProfileTable:
        return ProfileTable.from_csv(Path(path).read_text())


def default_profile_path(gpu: str, model: str) -> Path:
    """Where the measured table for (gpu, model) lives in the package: profiles/<gpu>__<model>.csv."""
    return PROFILES_DIR / f"{gpu}__{model}.csv"


def preferred_predictor(gpu: str | GPUSpec, model: str | ModelSpec) -> str:
    """`table` when the package holds a measured table for (gpu, model), else `roofline`: measured beats
    modelled (a CPU device has only its table; the roofline's efficiencies are fitted to an A100)."""
    gpu_name = gpu.name if isinstance(gpu, GPUSpec) else gpu
    model_name = model.name if isinstance(model, ModelSpec) else model
    return "table" if default_profile_path(gpu_name, model_name).is_file() else "roofline"


class _Series1D:
    """Linear interpolation over sorted x."""

    def __init__(self, points: list[tuple[float, float]]) -> None:
        points.sort()
        self.xs = [x for x, _ in points]
        self.ys = [y for _, y in points]

    def inside(self, x: float) -> bool:
        return self.xs[0] <= x <= self.xs[-1]

    def nearest(self, x: float) -> float:
        return min(max(x, self.xs[0]), self.xs[-1])

    def __call__(self, x: float) -> float:
        i = bisect.bisect_left(self.xs, x)
        if i < len(self.xs) and self.xs[i] == x:
            return self.ys[i]
        if i == 0 or i == len(self.xs):
            raise ValueError(f"x={x} outside [{self.xs[0]}, {self.xs[-1]}]")
        x0, x1, y0, y1 = self.xs[i - 1], self.xs[i], self.ys[i - 1], self.ys[i]
        return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


class _Grid2D:
    """Bilinear interpolation over a complete (x, y) grid."""

    def __init__(self, points: dict[tuple[float, float], float], what: str) -> None:
        self.xs = sorted({x for x, _ in points})
        self.ys = sorted({y for _, y in points})
        missing = [(x, y) for x in self.xs for y in self.ys if (x, y) not in points]
        if missing:
            raise ValueError(f"{what}: the (batch, context per sequence) grid is incomplete, missing {missing[:4]}")
        self.z = points

    def nearest(self, x: float, y: float) -> tuple[float, float]:
        return min(max(x, self.xs[0]), self.xs[-1]), min(max(y, self.ys[0]), self.ys[-1])

    @staticmethod
    def _bracket(vs: list[float], v: float) -> tuple[float, float, float]:
        i = min(max(bisect.bisect_left(vs, v), 1), len(vs) - 1) if len(vs) > 1 else 0
        if len(vs) == 1:
            return vs[0], vs[0], 0.0
        lo, hi = vs[i - 1], vs[i]
        return lo, hi, (v - lo) / (hi - lo)

    def __call__(self, x: float, y: float) -> float:
        x0, x1, tx = self._bracket(self.xs, x)
        y0, y1, ty = self._bracket(self.ys, y)
        z = self.z
        return (
            (1 - tx) * (1 - ty) * z[(x0, y0)]
            + tx * (1 - ty) * z[(x1, y0)]
            + (1 - tx) * ty * z[(x0, y1)]
            + tx * ty * z[(x1, y1)]
        )


class TablePredictor(Predictor):
    """Interpolates a measured `ProfileTable` (give `table=` or `path=`; default: the package profile)."""

    name = "table"

    def __init__(
        self,
        gpu: str | GPUSpec,
        model: str | ModelSpec,
        table: ProfileTable | None = None,
        path: str | os.PathLike | None = None,
        fallback: str = "roofline",
        check_provenance: bool = True,
        tp: int = 1,
        comm: CommModel | None = None,
    ) -> None:
        super().__init__(gpu, model, tp, comm)
        if fallback not in ("roofline", "error"):
            raise ValueError(f"fallback must be one of ['error', 'roofline'], got {fallback!r}")
        if table is None:
            path = Path(path) if path else default_profile_path(self.gpu.name, self.model.name)
            if not path.exists():
                raise FileNotFoundError(
                    f"no profile table at {path} (measured GPU profiles: see adrenaline_sgl/scheduler/profiles/"
                    "README.md); pass table= or path="
                )
            table = ProfileTable.load(path)
        if check_provenance:
            for key, want in (("gpu", self.gpu.name), ("model", self.model.name)):
                if table.provenance[key] != want:
                    raise ValueError(f"profile table {key} is {table.provenance[key]!r}, predictor wants {want!r}")
        table_tp = str(table.provenance.get("tp", "1")).strip()
        if table_tp != str(self.tp):
            raise ValueError(f"profile table was measured at tp={table_tp}, predictor wants tp={self.tp}")
        self.table = table
        self.fallback = fallback
        self.roofline = RooflinePredictor(self.gpu, self.model, tp=self.tp, comm=comm)
        self._series: dict[tuple[str, str, float], _Series1D | _Grid2D] = {}
        groups: dict[tuple[str, str, float], list[TableRow]] = {}
        for r in table.rows:
            groups.setdefault((r.op, r.phase, r.sm_share), []).append(r)
        for key, rows in groups.items():
            op, phase, _ = key
            if op == "attn" and phase == "decode":
                self._series[key] = _Grid2D(
                    {(r.num_seqs, r.context_tokens / r.num_seqs): r.ms for r in rows}, f"{op}/{phase}"
                )
            else:
                self._series[key] = _Series1D([(float(r.num_tokens), r.ms) for r in rows])

    @property
    def covered(self) -> set[tuple[str, str]]:
        return {(op, phase) for op, phase, _ in self._series}

    def _roof_ms(self, op: str, phase: str, t: float, ctx: float, seqs: int, share: float) -> float:
        return self.roofline.op_cost(op, phase, max(1, round(t)), round(ctx), max(1, seqs), share).ms

    def _table_ms(self, op: str, phase: str, t: int, ctx: int, seqs: int, share: float) -> float | None:
        shares = sorted(s for o, p, s in self._series if (o, p) == (op, phase))
        if not shares:
            return None
        s = min(shares, key=lambda v: abs(v - share))
        series = self._series[(op, phase, s)]
        if isinstance(series, _Grid2D):
            x, y = float(seqs), ctx / seqs
            nx, ny = series.nearest(x, y)
            ms = series(nx, ny)
            if (nx, ny) != (x, y) or s != share:
                ms *= self._roof_ms(op, phase, t, ctx, seqs, share) / self._roof_ms(
                    op, phase, nx, nx * ny, round(nx), s
                )
            return ms
        if op == "attn":  # prefill attention: rows are single prompts; equal-length prompts add up
            per_seq = t / seqs
            nx = series.nearest(per_seq)
            ms = series(nx) * seqs
            if nx != per_seq or s != share:
                ms *= self._roof_ms(op, phase, t, ctx, seqs, share) / self._roof_ms(op, phase, nx * seqs, 0, seqs, s)
            return ms
        nx = series.nearest(float(t))
        ms = series(nx)
        if nx != t or s != share:
            ms *= self._roof_ms(op, phase, t, 0, 1, share) / self._roof_ms(op, phase, nx, 0, 1, s)
        return ms

    def op_cost(
        self,
        op: str,
        phase: str,
        num_tokens: int,
        context_tokens: int = 0,
        num_seqs: int = 1,
        sm_share: float = 1.0,
    ) -> OpCost:
        validate_op_args(op, phase, num_tokens, sm_share)
        roof = self.roofline.op_cost(op, phase, num_tokens, context_tokens, num_seqs, sm_share)
        if num_tokens == 0:
            return roof
        ms = self._table_ms(op, phase, num_tokens, context_tokens, num_seqs, sm_share)
        if ms is None:
            if self.fallback == "error":
                raise ValueError(f"profile table has no rows for op={op!r} phase={phase!r} (fallback='error')")
            return roof
        work = op_work(self.shard, op, phase, num_tokens, context_tokens, num_seqs)
        eff = self.roofline.efficiency[(op, phase)]
        tensor, hbm, compute = fractions(self.gpu, ms, work.flops, roof.bytes, eff.issue_per_hbm, sm_share)
        return OpCost(op, phase, ms, work.flops, roof.bytes, tensor, hbm, compute)

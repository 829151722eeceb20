"""Colocation profiles: prefill latency and executor attention bandwidth vs SM share, with provenance.

A profile is a folder with two CSVs, each starting with `# key: value` provenance lines:
- `prefill.csv`: sm_share, num_sms, total_sms, tokens, layers, prefill_ms (alone on its SMs),
  prefill_contended_ms (with the executor saturating the other SMs; empty where not measured) and
  contended_executor_sms (the executor's SMs then; 0 where not measured).
- `attention.csv`: sm_share, num_sms, total_sms, batch, context, attn_ms, attn_gbs, ref_gbs (the reference
  bandwidth: the measured copy bandwidth for measured profiles, the HBM peak for modelled ones).

Committed profiles live in `profiles/` beside this file. `default_profile()` prefers a measured one (the
one matching the current GPU's name where there are several) and falls back to the modelled one.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

PROFILES_DIR = Path(__file__).parent / "profiles"
PREFILL_CSV, ATTENTION_CSV = "prefill.csv", "attention.csv"


@dataclass(frozen=True)
class PrefillPoint:
    sm_share: float  # fraction of the device's SMs prefill ran on
    num_sms: int
    total_sms: int
    tokens: int  # prompt tokens in the prefill batch
    layers: int  # transformer layers timed
    prefill_ms: float  # alone on its SMs
    prefill_contended_ms: float = math.nan  # executor at full load on the other SMs; nan: not measured
    contended_executor_sms: int = 0  # the executor's SMs during prefill_contended_ms; 0: not measured


@dataclass(frozen=True)
class AttentionPoint:
    sm_share: float  # fraction of the device's SMs the executor ran on
    num_sms: int
    total_sms: int
    batch: int
    context: int  # tokens of KV per request
    attn_ms: float  # one decode-attention call (one layer)
    attn_gbs: float  # KV + q + o bytes over attn_ms, GB/s (1e9 B/s)
    ref_gbs: float  # reference bandwidth (see module doc), GB/s

    @property
    def frac_of_ref(self) -> float:
        return self.attn_gbs / self.ref_gbs


def _interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise linear on sorted xs, clamped at both ends."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


@dataclass(frozen=True)
class Profile:
    name: str
    provenance: dict[str, str]
    prefill: tuple[PrefillPoint, ...]
    attention: tuple[AttentionPoint, ...]
    path: Path | None = field(default=None, compare=False)

    def __post_init__(self):
        if not self.prefill or not self.attention:
            raise ValueError(f"profile {self.name!r} needs at least one prefill and one attention row")
        for p in self.prefill:
            if not (0 < p.sm_share <= 1 and p.prefill_ms > 0 and p.tokens > 0 and p.layers > 0):
                raise ValueError(f"profile {self.name!r}: bad prefill row {p} (sm_share in (0, 1], times > 0)")
        for a in self.attention:
            if not (0 < a.sm_share <= 1 and a.attn_gbs > 0 and a.ref_gbs > 0):
                raise ValueError(f"profile {self.name!r}: bad attention row {a} (sm_share in (0, 1], GB/s > 0)")

    @property
    def source(self) -> str:
        return self.provenance.get("source", "unknown")

    @property
    def measured(self) -> bool:
        return self.source == "measured"

    @property
    def layers(self) -> int:
        return self.prefill[0].layers

    @property
    def token_counts(self) -> list[int]:
        return sorted({p.tokens for p in self.prefill})

    @property
    def has_contended(self) -> bool:
        return any(not math.isnan(p.prefill_contended_ms) for p in self.prefill)

    def _prefill_curve(self, tokens: int, contended: bool) -> tuple[list[float], list[float]]:
        rows = sorted((p for p in self.prefill if p.tokens == tokens), key=lambda p: p.sm_share)
        ys = [p.prefill_contended_ms if contended else p.prefill_ms for p in rows]
        if contended and any(math.isnan(y) for y in ys):
            ys = [p.prefill_ms for p in rows]  # not measured: the uncontended curve
        return [p.sm_share for p in rows], ys

    def prefill_ms(self, sm_share: float, tokens: int, contended: bool = False, layers: int | None = None) -> float:
        """Prefill latency (ms) of `tokens` prompt tokens on `sm_share` of the SMs, for `layers` layers
        (default: the profiled count). Below the smallest profiled share the time grows as 1/share
        (conservative); between token counts linearly; above the largest, proportionally to tokens."""
        counts = self.token_counts
        per_count = []
        for t in counts:
            xs, ys = self._prefill_curve(t, contended)
            per_count.append(ys[0] * xs[0] / sm_share if sm_share < xs[0] else _interp(sm_share, xs, ys))
        if tokens > counts[-1]:
            ms = per_count[-1] * tokens / counts[-1]
        else:
            ms = _interp(tokens, [float(c) for c in counts], per_count)
        return ms * (layers or self.layers) / self.layers

    def attn_gbs(self, sm_share: float) -> float:
        """Executor decode-attention bandwidth (GB/s) on `sm_share` of the SMs; proportional below the
        smallest profiled share."""
        rows = sorted(self.attention, key=lambda a: a.sm_share)
        xs, ys = [a.sm_share for a in rows], [a.attn_gbs for a in rows]
        return ys[0] * sm_share / xs[0] if sm_share < xs[0] else _interp(sm_share, xs, ys)


def _read(path: Path) -> tuple[dict[str, str], list[dict[str, str]]]:
    prov, lines = {}, []
    with open(path, newline="") as f:
        for line in f:
            if line.startswith("#"):
                key, _, value = line[1:].partition(":")
                prov[key.strip()] = value.strip()
            elif line.strip():
                lines.append(line)
    return prov, list(csv.DictReader(lines))


def _convert(cls, row: dict[str, str]):
    out = {}
    for f in fields(cls):
        raw = row.get(f.name, "")
        if f.type == "int":
            out[f.name] = int(raw)
        else:
            out[f.name] = float(raw) if raw not in ("", "nan") else math.nan
    return cls(**out)


def load_profile(folder: str | Path) -> Profile:
    folder = Path(folder)
    for name in (PREFILL_CSV, ATTENTION_CSV):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"profile folder {folder} has no {name}")
    prov, prefill = _read(folder / PREFILL_CSV)
    prov_a, attention = _read(folder / ATTENTION_CSV)
    return Profile(
        name=folder.name,
        provenance={**prov_a, **prov},
        prefill=tuple(_convert(PrefillPoint, r) for r in prefill),
        attention=tuple(_convert(AttentionPoint, r) for r in attention),
        path=folder,
    )


def _write(path: Path, provenance: dict[str, str], rows: list) -> None:
    with open(path, "w", newline="") as f:
        for key, value in provenance.items():
            f.write(f"# {key}: {str(value).replace(chr(10), ' ')}\n")
        writer = csv.DictWriter(f, fieldnames=[x.name for x in fields(rows[0])], lineterminator="\n")
        writer.writeheader()
        for r in rows:
            d = asdict(r)
            writer.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else _fmt(v)) for k, v in d.items()})


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def write_profile(profile: Profile, folder: str | Path) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write(folder / PREFILL_CSV, profile.provenance, list(profile.prefill))
    _write(folder / ATTENTION_CSV, profile.provenance, list(profile.attention))
    return folder


def list_profiles(root: str | Path = PROFILES_DIR) -> list[Profile]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [load_profile(d) for d in sorted(root.iterdir()) if (d / PREFILL_CSV).is_file()]


def default_profile(root: str | Path = PROFILES_DIR, gpu_name: str | None = None) -> Profile:
    """A measured profile when one is committed (matching `gpu_name` first), else the modelled one."""
    found = list_profiles(root)
    if not found:
        raise FileNotFoundError(f"no colocation profile under {root}")
    measured = [p for p in found if p.measured]
    if gpu_name:
        matching = [p for p in measured if p.provenance.get("gpu", "").lower() == gpu_name.lower()]
        measured = matching or measured
    return (measured or found)[0]

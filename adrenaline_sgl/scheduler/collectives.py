"""Collective times of a tensor-parallel group (all-reduce, all-gather) from a point-to-point link curve.

    comm = get_comm_model(gpu)                  # measured A100 NVLink curve when the shared data is there
    comm.allreduce_ms(num_bytes, tp)            # SGLang's custom all-reduce up to 8 MiB, NCCL's ring above
    comm.allgather_ms(total_bytes, tp)          # ring: tp - 1 steps of total_bytes / tp each
    comm.source                                 # which curve was used, in words

The point-to-point curve `p2p_ms(bytes)` is, in order of preference:

1. measured: Vidur's A100 NVLink send/recv medians (`vidur/network/a100_pairwise_nvlink/send_recv.csv`
   under the shared data folder, the rows with both workers on one node; 993 sizes 2 KiB .. 64 MiB),
   made monotone (pool-adjacent-violators: the medians carry 1 us quantisation noise) and interpolated
   linearly; above 64 MiB extended at the slope of the top eighth of the sizes. Used for `a100-80g`, the
   GPU it was measured on. The file is read where it lies (`shared_data_dir()`: `$ADRENALINE_SHARED_DATA`,
   else `../shared/data` beside the repository), never copied into the repository.
2. modelled: `latency + bytes / bandwidth` of the cost model's NVLink link (`cost_model.get_link`: the
   GPU spec's NVLink bandwidth per direction, 7.6 us); for every other GPU, and for the A100 when the
   shared data is absent (a clean clone).

From the point-to-point curve to a collective, as SGLang 0.5.23 runs it on NVLink GPUs (derived, not
measured; every GPU is assumed to reach any peer at the pairwise speed, true on an NVSwitch node such as a
DGX A100 / H100, and reductions to hide under the transfers):

- messages up to `CUSTOM_AR_MAX_BYTES` (8 MiB, `CustomAllreduce._MAX_CAR_SIZE`) at TP 2, 4, 6 or 8: its
  custom all-reduce over peer memory, the faster of one-shot (each GPU reads the whole message from each
  of its tp - 1 peers at once: one transfer of (tp - 1) x bytes through its NVLink ports) and two-shot
  (reduce-scatter then all-gather, each GPU reading (tp - 1) / tp of the message per phase: two transfers);
- larger messages, other TPs, or `custom_allreduce=False` (`--disable-custom-all-reduce`): NCCL's ring,
  2 (tp - 1) steps in which every GPU sends 1/tp of the message to its neighbour (one transfer each);
- all-gather (the logits): ring, tp - 1 steps of 1/tp of the gathered result.

`tools/vidur_check.py --allreduce-csv` compares the NCCL ring with a measured NCCL all-reduce table
(docs/simulator.md: the ring is predicted 37% to 56% short on large messages, where NCCL reaches about
half of the link's point-to-point bandwidth). No measurement of SGLang's custom all-reduce was available.
"""

from __future__ import annotations

import bisect
import csv
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path

from adrenaline_sgl.scheduler.specs import GPUSpec, get_gpu

_REPO_ROOT = Path(__file__).resolve().parents[2]
# GPU spec name -> the measured point-to-point table of its NVLink, relative to the shared data folder
MEASURED_P2P = {"a100-80g": Path("vidur") / "network" / "a100_pairwise_nvlink" / "send_recv.csv"}
CUSTOM_AR_MAX_BYTES = 8192 * 1024  # sglang/srt/distributed/device_communicators/custom_all_reduce.py
CUSTOM_AR_WORLD_SIZES = (2, 4, 6, 8)


def shared_data_dir() -> Path:
    """$ADRENALINE_SHARED_DATA, else ../shared/data relative to the repository root."""
    env = os.environ.get("ADRENALINE_SHARED_DATA")
    return Path(env).expanduser() if env else _REPO_ROOT.parent / "shared" / "data"


def _monotone(ys: list[float]) -> list[float]:
    """Least-squares non-decreasing fit of `ys` (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, count]
    for y in ys:
        blocks.append([y, 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (m1, n1), (m2, n2) = blocks[-2], blocks[-1]
            blocks[-2:] = [[(m1 * n1 + m2 * n2) / (n1 + n2), n1 + n2]]
    out: list[float] = []
    for mean, n in blocks:
        out.extend([mean] * int(n))
    return out


@dataclass(frozen=True)
class P2PCurve:
    """Measured point-to-point time (ms) against message size (bytes), monotone, interpolated linearly."""

    sizes: tuple[float, ...]
    ms: tuple[float, ...]
    source: str

    def __post_init__(self) -> None:
        if len(self.sizes) < 2 or len(self.sizes) != len(self.ms):
            raise ValueError(f"a P2P curve needs >= 2 (size, ms) points of equal count ({self.source})")
        if any(b <= a for a, b in zip(self.sizes, self.sizes[1:])) or any(m <= 0 for m in self.ms):
            raise ValueError(f"P2P curve sizes must increase and times be > 0 ({self.source})")

    def __call__(self, num_bytes: float) -> float:
        if num_bytes <= 0:
            return 0.0
        xs, ys = self.sizes, self.ms
        if num_bytes <= xs[0]:
            return ys[0]  # below the smallest size: the latency floor
        if num_bytes >= xs[-1]:
            k = max(1, len(xs) // 8)  # slope of the top eighth: the bandwidth at large sizes
            slope = (ys[-1] - ys[-1 - k]) / (xs[-1] - xs[-1 - k])
            return ys[-1] + max(slope, 0.0) * (num_bytes - xs[-1])
        i = bisect.bisect_left(xs, num_bytes)
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (num_bytes - x0) / (x1 - x0)


def load_p2p_csv(path: str | os.PathLike) -> P2PCurve:
    """A Vidur `send_recv.csv`: the median times of the rows whose workers all sit on one node."""
    path = Path(path)
    points: dict[float, float] = {}
    try:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                if r["devices_per_node"] != r["num_workers"]:
                    continue  # workers on different nodes: not the NVLink
                points.setdefault(float(r["size"]), float(r["time_stats.send_recv.median"]))
    except (OSError, KeyError, ValueError) as err:
        raise ValueError(f"P2P table {path}: {err}") from err
    sizes = sorted(points)
    ms = _monotone([points[s] for s in sizes])
    return P2PCurve(tuple(sizes), tuple(ms), f"measured: {path.name} of {path.parent.name} ({len(sizes)} sizes)")


@dataclass(frozen=True)
class LatencyBandwidth:
    """time = latency + bytes / bandwidth (the fallback where no measured curve exists)."""

    gbs: float
    latency_us: float

    @property
    def source(self) -> str:
        return f"modelled: NVLink {self.gbs:g} GB/s per direction + {self.latency_us:g} us (no measured table)"

    def __call__(self, num_bytes: float) -> float:
        return 0.0 if num_bytes <= 0 else self.latency_us * 1e-3 + num_bytes / (self.gbs * 1e9) * 1e3


@dataclass(frozen=True)
class CommModel:
    """SGLang's collectives over one point-to-point curve (see the module docstring)."""

    p2p_ms: P2PCurve | LatencyBandwidth
    custom_allreduce: bool = True  # False: NCCL's ring for every size (--disable-custom-all-reduce)

    @property
    def source(self) -> str:
        return self.p2p_ms.source

    @property
    def measured(self) -> bool:
        return isinstance(self.p2p_ms, P2PCurve)

    def nccl_only(self) -> CommModel:
        """The same curve with the custom all-reduce off (what a measured NCCL table compares with)."""
        return replace(self, custom_allreduce=False)

    def ring_allreduce_ms(self, num_bytes: float, tp: int) -> float:
        """NCCL's ring: 2 (tp - 1) steps of num_bytes / tp."""
        return 2 * (tp - 1) * self.p2p_ms(num_bytes / tp)

    def custom_allreduce_ms(self, num_bytes: float, tp: int) -> float:
        """SGLang's custom all-reduce: the faster of one-shot and two-shot."""
        one_shot = self.p2p_ms((tp - 1) * num_bytes)
        two_shot = 2 * self.p2p_ms((tp - 1) * num_bytes / tp)
        return min(one_shot, two_shot)

    def allreduce_ms(self, num_bytes: float, tp: int) -> float:
        """All-reduce of a `num_bytes` message over `tp` GPUs (0 at TP 1), by the algorithm SGLang picks."""
        _check_tp(tp)
        if tp == 1 or num_bytes <= 0:
            return 0.0
        if self.custom_allreduce and tp in CUSTOM_AR_WORLD_SIZES and num_bytes <= CUSTOM_AR_MAX_BYTES:
            return self.custom_allreduce_ms(num_bytes, tp)
        return self.ring_allreduce_ms(num_bytes, tp)

    def allgather_ms(self, total_bytes: float, tp: int) -> float:
        """All-gather whose gathered result is `total_bytes` (each GPU contributes 1/tp)."""
        _check_tp(tp)
        if tp == 1 or total_bytes <= 0:
            return 0.0
        return (tp - 1) * self.p2p_ms(total_bytes / tp)


def _check_tp(tp: int) -> None:
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise ValueError(f"tp must be an integer >= 1, got {tp!r}")


@lru_cache(maxsize=16)
def _measured(path: Path, mtime_ns: int) -> P2PCurve:
    return load_p2p_csv(path)


def get_comm_model(gpu: str | GPUSpec, data_dir: str | os.PathLike | None = None) -> CommModel:
    """The comm model of `gpu`'s NVLink: measured where the shared data has its table, else modelled."""
    from adrenaline_sgl.scheduler.cost_model import get_link  # the one NVLink figure (lazy: cost_model imports us)

    g = get_gpu(gpu)
    rel = MEASURED_P2P.get(g.name)
    if rel is not None:
        path = Path(data_dir).expanduser() if data_dir is not None else shared_data_dir()
        path = path / rel
        if path.is_file():
            return CommModel(_measured(path, path.stat().st_mtime_ns))
    link = get_link("nvlink", g)
    return CommModel(LatencyBandwidth(link.gbs, link.latency_us))

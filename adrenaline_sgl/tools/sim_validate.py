"""The simulator's validation table: what it composes, against measurements we have.

    python -m adrenaline_sgl.tools.sim_validate        # markdown, as in docs/simulator.md (section "Validation")

Rows (Llama-2 7B on A100-80GB unless named):
- decode step, non-attention part (all layers, sampling excluded): the simulator's `SimCosts` against the
  sum of Vidur's measured per-layer operator medians x 32 layers (QKV, O, gate/up, act, down, two norms,
  RoPE, two adds) at the same batch;
- KV transfer of one request's prompt over NVLink: the simulator against Vidur's measured A100 NVLink
  send/recv median of the same byte count (the data stop at 64 MiB = 128 tokens of 7B KV);
- share of decode time spent in attention at batch 80: the paper's 69.5% against the model at the
  ShareGPT context of figure 1 (330 tokens) and at 1024 tokens.
Reads ../shared/data through `adrenaline_sgl.tools.vidur_check.shared_data_dir()`; rows needing it are
skipped (with a note) when it is absent.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from adrenaline_sgl.sim.config import SimConfig
from adrenaline_sgl.sim.costs import SchedulerCosts
from adrenaline_sgl.tools.vidur_check import VIDUR_OPS, shared_data_dir, vidur_mlp_path, vidur_times

DECODE_BATCHES = (1, 8, 32, 64, 128, 256)
TRANSFER_TOKENS = (1, 16, 64, 128)


@dataclass(frozen=True)
class Row:
    quantity: str
    point: str
    simulated: float
    measured: float
    unit: str
    source: str

    @property
    def err_pct(self) -> float:
        return 100.0 * (self.simulated - self.measured) / self.measured


def _nearest(series: dict[int, float], x: int) -> tuple[int, float]:
    key = min(series, key=lambda k: abs(k - x))
    return key, series[key]


def decode_rows(costs: SchedulerCosts, root: Path) -> list[Row]:
    times = vidur_times(vidur_mlp_path("a100-80g", root))
    per_layer = {t: sum(times[op][t] for op in VIDUR_OPS if t in times[op]) for t in times["qkv"]}
    rows = []
    for b in DECODE_BATCHES:
        t, ms = _nearest(per_layer, b)
        sim = costs.decode_nonattn(b).ms - costs.pred.op_cost("sampling", "decode", b).ms
        rows.append(Row("decode non-attention step", f"batch {b}", sim, ms * costs.num_layers, "ms",
                        f"Vidur A100 mlp.csv, {t} tokens x {costs.num_layers} layers"))
    return rows


def _send_recv(root: Path) -> dict[int, float]:
    path = root / "vidur" / "network" / "a100_pairwise_nvlink" / "send_recv.csv"
    out: dict[int, float] = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if int(r["devices_per_node"]) == 2:  # both GPUs in one node: NVLink (1 = across nodes)
                out.setdefault(int(r["size"]), float(r["time_stats.send_recv.median"]))
    return out


def transfer_rows(costs: SchedulerCosts, root: Path) -> list[Row]:
    measured = _send_recv(root)
    rows = []
    for n in TRANSFER_TOKENS:
        size, ms = _nearest(measured, int(n * costs.info.kv_bytes_per_token))
        sim = costs.kv_transfer_ms(n) * size / (n * costs.info.kv_bytes_per_token)
        rows.append(Row("KV transfer over NVLink", f"{n} tokens ({size / 2**20:.1f} MiB)", sim, ms, "ms",
                        "Vidur A100 send_recv.csv, 2 GPUs/node (median)"))
    return rows


def attention_share_rows(costs: SchedulerCosts) -> list[Row]:
    rows = []
    for ctx in (330, 1024):
        attn = costs.decode_attn(80, 80 * ctx, 1.0).ms
        total = attn + costs.decode_nonattn(80).ms
        rows.append(Row("attention share of decode time", f"batch 80, {ctx} tokens/seq", 100 * attn / total, 69.5,
                        "%", "paper (Llama-2 7B, A100, ShareGPT)"))
    return rows


def validation_rows(root: Path | None = None) -> tuple[list[Row], list[str]]:
    """(rows, notes about skipped rows)."""
    root = root or shared_data_dir()
    costs = SchedulerCosts(SimConfig(model="llama2-7b", gpu="a100-80g"))
    rows, notes = [], []
    if (root / "vidur").is_dir():
        rows += decode_rows(costs, root) + transfer_rows(costs, root)
    else:
        notes.append(f"Vidur rows skipped: {root / 'vidur'} not found (set ADRENALINE_SHARED_DATA)")
    return rows + attention_share_rows(costs), notes


def markdown(rows: list[Row], notes: list[str]) -> str:
    lines = ["| quantity | point | simulated | measured | unit | error % | measured by |",
             "|---|---|---:|---:|---|---:|---|"]
    for r in rows:
        lines.append(f"| {r.quantity} | {r.point} | {r.simulated:.3g} | {r.measured:.3g} | {r.unit} | "
                     f"{r.err_pct:+.0f} | {r.source} |")
    return "\n".join(lines + [f"\n{n}" for n in notes])


def main() -> int:
    print(markdown(*validation_rows()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

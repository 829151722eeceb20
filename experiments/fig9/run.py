"""Figure 9: executor attention bandwidth and prefill latency vs SM share, and the planner's split.

Writes `$RESULTS_DIR/fig9/{attention,prefill,planner}.csv` (each with the profile's provenance as `# key:
value` lines) from a colocation profile, then renders `fig9.png` with `plots/fig9.py`. No GPU is needed:
the profile is read, not measured (measure one with `python -m adrenaline_sgl.tools.colocation_profile`).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import os
from pathlib import Path

import yaml

from adrenaline_sgl.colocation.arch import DeviceInfo
from adrenaline_sgl.colocation.planner import PlannerConfig, PrefillLoad, plan
from adrenaline_sgl.colocation.profiles import Profile, default_profile, load_profile

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]


def _write(path: Path, provenance: dict[str, str], header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="") as f:
        for k, v in provenance.items():
            f.write(f"# {k}: {v}\n")
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows([[f"{x:.6g}" if isinstance(x, float) else x for x in r] for r in rows])


def _device_of(profile: Profile) -> DeviceInfo:
    """The profiled GPU's SM count and architecture (the planner's granularity comes from it)."""
    cc = profile.provenance.get("compute_capability")
    if not cc:
        raise ValueError(f"profile {profile.name} has no compute_capability in its provenance")
    major, minor = (int(x) for x in cc.split("."))
    return DeviceInfo(profile.provenance.get("gpu", profile.name), profile.prefill[0].total_sms, (major, minor))


def write_csvs(profile: Profile, cfg: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    prov = {"profile": profile.name, **profile.provenance}
    attn = sorted(profile.attention, key=lambda a: a.sm_share)
    _write(out / "attention.csv", prov, ["sm_share", "num_sms", "attn_gbs", "ref_gbs", "frac_of_ref"],
           [[a.sm_share, a.num_sms, a.attn_gbs, a.ref_gbs, a.frac_of_ref] for a in attn])  # fmt: skip
    rows = []
    for t in profile.token_counts:
        full = profile.prefill_ms(1.0, t)
        for p in sorted((p for p in profile.prefill if p.tokens == t), key=lambda p: p.sm_share):
            rows.append([p.sm_share, p.num_sms, t, p.prefill_ms, p.prefill_contended_ms, p.prefill_ms / full,
                         p.prefill_contended_ms / full, 1.0 / p.sm_share])  # fmt: skip
    header = ["sm_share", "num_sms", "tokens", "prefill_ms", "prefill_contended_ms", "slowdown",
              "contended_slowdown", "compute_roofline_slowdown"]  # fmt: skip
    _write(out / "prefill.csv", prov, header, rows)
    pc = cfg["planner"]
    device = _device_of(profile)
    load = PrefillLoad(float(pc["arrival_tokens_per_s"]), int(pc["batch_tokens"]))
    rows = []
    for slo in pc["ttft_slo_ms"]:
        p = plan(profile, load, PlannerConfig(ttft_slo_ms=float(slo), model_layers=int(pc["model_layers"])), device)
        rows.append([float(slo), p.prefill_sms, p.executor_sms, p.total_sms, p.executor_share, p.predicted_ttft_ms,
                     p.executor_gbs, int(p.slo_met)])  # fmt: skip
    plan_prov = {**prov, "load": f"{load.arrival_tokens_per_s} prompt tokens/s in batches of {load.batch_tokens}",
                 "device": f"{device.name}, {device.total_sms} SMs, granularity {device.granularity}"}  # fmt: skip
    _write(out / "planner.csv", plan_prov, ["ttft_slo_ms", "prefill_sms", "executor_sms", "total_sms",
                                            "executor_share", "predicted_ttft_ms", "executor_gbs", "slo_met"],
           rows)  # fmt: skip


def load_plotter():
    spec = importlib.util.spec_from_file_location("plots_fig9", REPO_ROOT / "plots" / "fig9.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=str(HERE / "config.yaml"), help="figure config (YAML)")
    ap.add_argument("--profile", default=None, help="profile folder; overrides the config's")
    ap.add_argument("--out", default=None, help="output folder (default $RESULTS_DIR/fig9, RESULTS_DIR=results)")
    args = ap.parse_args(argv)
    cfg = yaml.safe_load(Path(args.config).read_text())
    folder = args.profile or cfg.get("profile")
    profile = load_profile(folder) if folder else default_profile()
    out = Path(args.out or Path(os.environ.get("RESULTS_DIR", "results")) / "fig9")
    write_csvs(profile, cfg, out)
    png = load_plotter().plot(out)
    print(f"fig9 from profile {profile.name} ({profile.provenance.get('title', profile.source)}): {png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

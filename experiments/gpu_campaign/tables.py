"""The GPU tables of docs/perf.md, rendered from the committed profiles only (layout.py), between markers:

    <!-- gpu-campaign:NAME begin -->  ...generated...  <!-- gpu-campaign:NAME end -->

NAME: campaigns, kernels, colocation, offload. `update_doc(root)` rewrites those blocks in place; a test
checks that the committed docs equal what this renders, so the tables never drift from the profiles.
Where nothing was imported a block says so.
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

from experiments.gpu_campaign import layout
from experiments.gpu_campaign.verdicts import STEP_RATIO_GOAL, offload_verdicts, share_for_fraction

BLOCKS = ("campaigns", "kernels", "colocation", "offload")
NOT_YET = ("Not measured on a GPU yet: no campaign has been imported. `make gpu-bundle`, then the device call "
           "it prints, then `make gpu-import DIR=<the folder that came back>`.")  # fmt: skip


def _campaigns(root: Path) -> list[dict]:
    out = []
    for path in sorted((root / layout.MEASURED).glob("*/*/provenance.json")):
        prov = json.loads(path.read_text())
        prov["_dir"] = path.parent
        out.append(prov)
    return sorted(out, key=lambda p: p["campaign_id"])


def _mode_note(prov: dict) -> str:
    return "" if prov.get("mode") == "gpu" else " (CPU smoke rehearsal: the numbers mean nothing)"


def render_campaigns(root: Path) -> str:
    camps = _campaigns(root)
    if not camps:
        return NOT_YET
    lines = ["| campaign | GPU, driver, CUDA | torch, triton | git sha (tree matches) | steps (status, s) |",
             "|---|---|---|---|---|"]  # fmt: skip
    for p in camps:
        gpu = p.get("gpu") or {}
        steps = ", ".join(f"{s['name']} {s['status']} {s['duration_s']:.0f}" for s in p["steps"])
        lines.append(f"| {p['campaign_id']}{_mode_note(p)}{'' if p['complete'] else ' (cut short)'} | "
                     f"{gpu.get('name', 'no GPU')}, {gpu.get('driver', '-')}, {gpu.get('cuda', '-')} | "
                     f"{p['software'].get('torch')}, {p['software'].get('triton')} | "
                     f"{p['bundle']['git_sha'][:10]} ({p['tree_matches_bundle']}) | {steps} |")  # fmt: skip
    return "\n".join(lines)


def _rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.open())) if path.is_file() else []


def _fmt(x, spec=".2f") -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def render_kernels(root: Path) -> str:
    folders = sorted(p.parent for p in (root / layout.KERNEL_PROFILES).glob("*/bench.meta.json"))
    if not folders:
        return NOT_YET
    out = []
    for folder in folders:
        meta = json.loads((folder / "bench.meta.json").read_text())
        rows = _rows(folder / "bench.csv")
        note = "" if meta.get("campaign_mode") == "gpu" else " (CPU interpreter rehearsal: the numbers mean nothing)"
        out.append(f"**{folder.name}**{note}: {meta.get('gpu')}, copy bandwidth {meta.get('copy_gbs')} GB/s, "
                   f"campaign {meta.get('campaign_id')}, grid complete: {meta.get('complete')}; SGLang kernel: "
                   f"{meta.get('sglang_kernel') or 'not measured'}.")  # fmt: skip
        out += ["", "| dtype | pages | min frac of copy bw (B>=32, ctx>=2048), goal 0.85 | speedup vs SGLang min / "
                "median | shapes slower than SGLang |", "|---|---|---|---|---|"]  # fmt: skip
        groups = sorted({(r["dtype"], r.get("page_size", "1")) for r in rows}, key=lambda g: (g[0], int(g[1])))
        for dtype, page in groups:
            mine = [r for r in rows if r["dtype"] == dtype and r.get("page_size", "1") == page]
            ours = {(r["model"], r["batch"], r["ctx"]): r for r in mine if r["impl"] == "adrenaline"}
            big = [float(r["frac_copy_bw"]) for (m, b, c), r in ours.items() if int(b) >= 32 and int(c) >= 2048]
            speed = [float(r["time_us"]) / float(ours[(r["model"], r["batch"], r["ctx"])]["time_us"])
                     for r in mine if r["impl"] == "sglang_triton" and (r["model"], r["batch"], r["ctx"]) in ours]
            sp = sorted(speed)
            med = sp[len(sp) // 2] if sp else None
            frac = min(big) if big else None
            verdict = "" if frac is None else (" met" if frac >= 0.85 else " MISSED")
            out.append(f"| {dtype} | {page} | {_fmt(frac, '.3f')}{verdict} | {_fmt(sp[0] if sp else None)}x / "
                       f"{_fmt(med)}x | {sum(s < 1 for s in sp)} of {len(sp)} |")  # fmt: skip
        tunes = sorted(folder.glob("tune-*.csv"))
        if tunes:  # before (the default config, "adrenaline") and after (each variant) on the shapes that missed
            out += ["", "| tuning run | variant | shapes | median time us | min frac of copy bw |",
                    "|---|---|---|---|---|"]
            for t in tunes:
                by_impl: dict[str, list[dict]] = {}
                for r in _rows(t):
                    by_impl.setdefault(f"{r['impl']} (num_sms {r['num_sms']})", []).append(r)
                for impl, rs in by_impl.items():
                    times = sorted(float(r["time_us"]) for r in rs)
                    out.append(f"| {t.stem} | {impl} | {len(rs)} | {times[len(times) // 2]:.1f} | "
                               f"{min(float(r['frac_copy_bw']) for r in rs):.3f} |")  # fmt: skip
        out.append("")
    return "\n".join(out).rstrip()


def _colocation_profiles(root: Path) -> list[Path]:
    """Imported colocation profiles (those carrying a campaign id; not the modelled one), oldest campaign first."""
    found = []
    for path in (root / layout.COLOCATION_PROFILES).glob("*/attention.csv"):
        ids = [ln.split(":", 1)[1].strip() for ln in path.read_text().splitlines() if ln.startswith("# campaign_id:")]
        if ids:
            found.append((ids[0], path.parent))
    return [folder for _, folder in sorted(found)]


def latest_measured_colocation(root: Path) -> Path | None:
    found = _colocation_profiles(root)
    return found[-1] if found else None


def render_colocation(root: Path) -> str:
    folders = _colocation_profiles(root)
    if not folders:
        return NOT_YET
    from adrenaline_sgl.colocation.profiles import load_profile

    out = []
    for folder in folders:
        prof = load_profile(folder)
        prov = prof.provenance
        share = share_for_fraction([(a.sm_share, a.frac_of_ref) for a in prof.attention])
        probe = json.loads((folder / "probe.json").read_text()) if (folder / "probe.json").is_file() else {}
        apis = "; ".join(f"{k}: {'works' if v.get('works') else 'fails'}"
                         + (f" (1/4 share {v.get('num_sms')} SMs, slowdown {v.get('slowdown')} of "
                            f"{v.get('expected_slowdown')}; halves overlap ratio {v.get('overlap_ratio')})"
                            if v.get("works") else f" ({str(v.get('error', ''))[:80]})")
                         for k, v in probe.get("apis", {}).items())  # fmt: skip
        note = "" if prov.get("source") == "measured" else " (CPU smoke rehearsal: the numbers mean nothing)"
        out.append(f"**{folder.name}**{note}: {prov.get('title')}; campaign {prov.get('campaign_id')}; green "
                   f"contexts: {probe.get('chosen') or 'none'} ({apis or 'no probe'}). Executor reaches 60% of "
                   f"copy bandwidth at SM share {_fmt(share, '.3f')}; contention: {prov.get('contention')}.")
        tokens = prof.token_counts
        out += ["", "| share | SMs | attention frac of copy | " + " | ".join(
            f"prefill {t} tok ms alone / beside executor (x)" for t in tokens) + " |",
            "|---|---|---|" + "---|" * len(tokens)]  # fmt: skip
        for a in sorted(prof.attention, key=lambda a: a.sm_share):
            cells = []
            for t in tokens:
                p = next((p for p in prof.prefill if p.tokens == t and p.sm_share == a.sm_share), None)
                if p is None:
                    cells.append("-")
                else:
                    ratio = p.prefill_contended_ms / p.prefill_ms
                    cells.append(f"{p.prefill_ms:.2f} / {_fmt(p.prefill_contended_ms)} ({_fmt(ratio)})")
            out.append(f"| {a.sm_share:.3f} | {a.num_sms} | {a.frac_of_ref:.3f} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def scheduler_bound_rows(gpu_name: str, local_rows: int, context: int) -> int | None:
    """N the scheduler would allow beside M local rows: floor(OB x M), 1P1D Llama-2-7B on this GPU's spec,
    roofline predictor, default TPOT SLO, executor share 0.3, mean context `context`. None if no spec."""
    try:
        from adrenaline_sgl.scheduler import bounds as sb
        from adrenaline_sgl.scheduler.cost_model import get_predictor
        from experiments.gpu_campaign.steps.scheduler import MODEL, gpu_spec

        spec = gpu_spec(gpu_name)
        if spec is None:
            return None
        pred = get_predictor("roofline", spec, MODEL)
        cap = sb.kv_capacity_bytes(pred.gpu, pred.model)
        inp = sb.BoundsInput(pred, sb.DEFAULT_TPOT_SLO_MS, cap, (sb.PrefillCapacity(cap, 0.3),), float(context))
        b = sb.compute_bounds(inp)
        return math.floor(b.ob * local_rows)
    except Exception:  # noqa: BLE001 - a bound we cannot compute is reported as unknown
        return None


def render_offload(root: Path) -> str:
    found = [p for p in _campaigns(root) if list((p["_dir"]).glob("*-offload/status.json"))]
    if not found:
        return NOT_YET
    out = []
    for prov in found:
        step = sorted(prov["_dir"].glob("*-offload"))[0]
        for transport in ("cuda_ipc", "inproc"):
            rows = _rows(step / transport / "bench.csv")
            skipped = step / transport / "SKIPPED"
            if not rows:
                why = skipped.read_text().strip() if skipped.is_file() else "not measured (see the step's log)"
                out += [f"{transport}: {why}.", ""]
                continue
            m, ctx = int(rows[0]["local_rows"]), int(rows[0]["context"])
            gpu = (prov.get("gpu") or {}).get("name", "")
            bound = scheduler_bound_rows(gpu, m, ctx) if prov["mode"] == "gpu" else None
            verdicts = offload_verdicts(rows, bound)
            out.append(f"**{transport}**{_mode_note(prov)}, campaign {prov['campaign_id']}: {rows[0]['model']} "
                       f"{rows[0]['dtype']}, M = {m} local rows, context {ctx}, {rows[0]['steps']} timed steps; "
                       f"scheduler bound N <= {bound if bound is not None else 'unknown'} beside M.")  # fmt: skip
            out += ["", f"| N offloaded | step ms p50 | (M+N)/M, goal <= {STEP_RATIO_GOAL} | round trip ms p50 / p99 |",
                    "|---|---|---|---|"]  # fmt: skip
            for r in sorted(rows, key=lambda r: int(r["offloaded_rows"])):
                n = int(r["offloaded_rows"])
                v = verdicts.get(n)
                ratio = "-" if v is None else f"{v['ratio']:.3f} {'met' if v['meets_1_05'] else 'MISSED'}"
                rt = "-" if not r["round_trip_ms_p50"] else f"{float(r['round_trip_ms_p50']):.3f} / " \
                     f"{float(r['round_trip_ms_p99']):.3f}"
                out.append(f"| {n} | {float(r['step_ms_p50']):.2f} | {ratio} | {rt} |")
            out.append("")
    return "\n".join(out).rstrip()


RENDERERS = {"campaigns": render_campaigns, "kernels": render_kernels, "colocation": render_colocation,
             "offload": render_offload}  # fmt: skip


def marker(name: str, end: bool = False) -> str:
    return f"<!-- gpu-campaign:{name} {'end' if end else 'begin'} -->"


def render_all(root: Path) -> dict[str, str]:
    return {name: RENDERERS[name](root) for name in BLOCKS}


def replace_blocks(text: str, blocks: dict[str, str]) -> str:
    for name, body in blocks.items():
        pattern = re.compile(re.escape(marker(name)) + r".*?" + re.escape(marker(name, end=True)), re.S)
        if not pattern.search(text):
            raise ValueError(f"{layout.PERF_DOC} has no {marker(name)} ... {marker(name, end=True)} block")
        block = f"{marker(name)}\n{body}\n{marker(name, end=True)}"
        text = pattern.sub(lambda _m, block=block: block, text)
    return text


def update_doc(root: Path) -> str:
    path = root / layout.PERF_DOC
    old = path.read_text()
    new = replace_blocks(old, render_all(root))
    if new != old:
        path.write_text(new)
        return f"{layout.PERF_DOC} tables regenerated"
    return f"{layout.PERF_DOC} tables unchanged"

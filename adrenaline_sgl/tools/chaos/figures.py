"""What `make chaos` counts, its goals, the JSON it writes and the table it prints.

Figures (issue 18): cases, requests, crashes (goal 0), hangs > 10 s (goal 0), leaked KV tokens (goal 0),
seconds to a clear error after each kind of fault (goal <= 5), listening sockets not on loopback (goal 0); and
beside them: valid requests that failed outside a fault (goal 0), answers that were neither a result nor a clear
error (goal 0), malformed requests refused with a JSON 4xx, disconnected requests still running, processes or
ports left behind (goal 0), phases not run (time budget).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from adrenaline_sgl.tools.chaos.traffic import Outcome

CLEAR_ERROR_GOAL_S = 5.0
KILLS = ("executor-stop", "prefill-sigkill", "decode-sigkill")


@dataclass
class PhaseRecord:
    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    notes: dict = field(default_factory=dict)
    wall_s: float = 0.0
    crashes: list[dict] = field(default_factory=list)  # {"process", "exit_code", "last_error"}
    unhealthy: list[str] = field(default_factory=list)  # alive but /health failed
    leaked_kv_tokens: int = 0  # newly held after the phase, beyond idle, once settled
    held_kv_tokens: tuple[int, int] = (0, 0)  # (prefill, decode) held after settling
    settle_s: float = 0.0
    non_loopback: list[str] = field(default_factory=list)  # "<process> pid <pid> <host:port>"
    restarted: list[str] = field(default_factory=list)
    skipped: str | None = None  # why it did not run

    @property
    def is_fault(self) -> bool:
        return self.name in ("executor-stop", "prefill-sigstop", "prefill-sigkill", "decode-sigstop",
                             "decode-sigkill")  # fmt: skip

    def counts(self) -> dict:
        got = {k: 0 for k in ("ok", "clear_error", "unclear", "refused", "hang", "disconnected")}
        for o in self.outcomes:
            got[o.result] += 1
        return got

    def to_dict(self) -> dict:
        return {"name": self.name, "skipped": self.skipped, "wall_s": round(self.wall_s, 1), "counts": self.counts(),
                "crashes": self.crashes, "unhealthy": self.unhealthy, "leaked_kv_tokens": self.leaked_kv_tokens,
                "held_kv_tokens": list(self.held_kv_tokens), "settle_s": round(self.settle_s, 1),
                "non_loopback": self.non_loopback, "restarted": self.restarted, "notes": self.notes,
                "outcomes": [o.to_dict() for o in self.outcomes]}  # fmt: skip


def summarize(records: list[PhaseRecord], end: dict) -> dict:
    """The figures of a run, with `goals_met` (every goal) and the goals not met."""
    run = [r for r in records if r.skipped is None]
    outcomes = [o for r in run for o in r.outcomes]
    malformed = [o for r in run if r.name.startswith("malformed") for o in r.outcomes]
    valid_failed = [o for r in run if not r.is_fault and not r.name.startswith("malformed") for o in r.outcomes
                    if o.expect == "ok" and o.result == "clear_error"]  # fmt: skip
    faults = {r.name: r.notes.get("seconds_to_clear_error") for r in run if r.is_fault}
    figures = {
        "cases": len({o.case for o in outcomes}),
        "requests": len(outcomes),
        "crashes": sum(len(r.crashes) for r in run),
        "hangs_over_10s": sum(o.result == "hang" for o in outcomes),
        "leaked_kv_tokens": sum(r.leaked_kv_tokens for r in run),
        "seconds_to_clear_error": faults,  # None: a request the fault failed got no clear error
        "sockets_not_on_loopback": max((len(r.non_loopback) for r in run), default=0),
        "unanswered": sum(o.result in ("unclear", "refused") for o in outcomes),
        "valid_requests_failed": len(valid_failed),
        "malformed_refused": f"{sum(o.as_expected for o in malformed)}/{len(malformed)}",
        "disconnected_still_running": sum(int(r.notes.get("still_running_10s_after_disconnect") or 0) for r in run),
        "left_behind": len(end.get("left_behind", [])),
        "phases_run": len(run),
        "phases_not_run": [f"{r.name} ({r.skipped})" for r in records if r.skipped is not None],
    }
    missed = [k for k in ("crashes", "hangs_over_10s", "leaked_kv_tokens", "sockets_not_on_loopback", "unanswered",
                          "valid_requests_failed", "disconnected_still_running", "left_behind") if figures[k]]
    # a kill must end its in-flight requests with a clear error in time; a stop may let them finish after SIGCONT
    missed += [f"seconds_to_clear_error[{k}]" for k, v in faults.items()
               if (v is None and k in KILLS) or (v is not None and v > CLEAR_ERROR_GOAL_S)]  # fmt: skip
    if malformed and not all(o.as_expected for o in malformed):
        missed.append("malformed_refused")
    if end.get("interrupted") or end.get("error"):
        missed.append("run did not finish")
    figures["goals_missed"] = missed
    figures["goals_met"] = not missed
    return figures


def write(out: Path, mode: str, figures: dict, records: list[PhaseRecord], end: dict) -> Path:
    payload = {"mode": mode, "figures": figures, "end": end, "phases": [r.to_dict() for r in records],
               "machine": {"cpus": os.cpu_count(), "loadavg_at_end": list(os.getloadavg())}}  # fmt: skip
    path = out / "figures.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


def _fmt(v) -> str:
    return "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))


def table(mode: str, figures: dict, records: list[PhaseRecord], end: dict) -> str:
    """The figures as printed at the end of a run: one line per phase, then the figures against their goals."""
    lines = [f"{'phase':22} {'wall s':>6} {'req':>4} {'ok':>4} {'err':>4} {'uncl':>4} {'hang':>4} {'left':>4} "
             f"{'crash':>5} {'leak':>5}  notes"]  # fmt: skip
    for r in records:
        if r.skipped is not None:
            lines.append(f"{r.name:22} not run: {r.skipped}")
            continue
        c = r.counts()
        notes = ", ".join(f"{k}={_fmt(v)}" for k, v in r.notes.items() if not isinstance(v, (dict, list)))
        crashed = "; ".join(f"{x['process']} ({x['exit_code']}): {x['last_error'][:90]}" for x in r.crashes)
        lines.append(f"{r.name:22} {r.wall_s:6.1f} {len(r.outcomes):4} {c['ok']:4} {c['clear_error']:4} "
                     f"{c['unclear'] + c['refused']:4} {c['hang']:4} {c['disconnected']:4} {len(r.crashes):5} "
                     f"{r.leaked_kv_tokens:5}  {notes}{'  CRASH ' + crashed if crashed else ''}")  # fmt: skip
    f = figures
    rows = [("cases", f["cases"], ""), ("requests", f["requests"], ""), ("crashes", f["crashes"], "0"),
            ("hangs > 10 s", f["hangs_over_10s"], "0"), ("leaked KV tokens", f["leaked_kv_tokens"], "0")]
    rows += [(f"s to a clear error: {k}", "none" if v is None else v, "<= 5")  # none: some got no clear error
             for k, v in f["seconds_to_clear_error"].items()]
    rows += [("sockets not on loopback", f["sockets_not_on_loopback"], "0"),
             ("unanswered (no result, no clear error)", f["unanswered"], "0"),
             ("valid requests failed (no fault)", f["valid_requests_failed"], "0"),
             ("malformed refused with a JSON 4xx", f["malformed_refused"], "all"),
             ("disconnected, still running after 10 s", f["disconnected_still_running"], "0"),
             ("processes or ports left behind", f["left_behind"], "0")]  # fmt: skip
    lines += ["", f"chaos figures ({mode}; wall {_fmt(end.get('wall_s'))} s; load average at end "
                  f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"]  # fmt: skip
    lines += [f"  {name:42} {_fmt(value):>14}   goal {goal}" if goal else f"  {name:42} {_fmt(value):>14}"
              for name, value, goal in rows]
    if f["phases_not_run"]:
        lines.append(f"  phases not run: {', '.join(f['phases_not_run'])}")
    lines.append(f"  goals {'met' if f['goals_met'] else 'missed: ' + ', '.join(f['goals_missed'])}")
    return "\n".join(lines)

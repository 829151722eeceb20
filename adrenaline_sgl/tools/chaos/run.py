"""`python -m adrenaline_sgl.tools.chaos`: start the demo stack, replay the phases, check after each, print the
figures, write them to <out>/figures.json, stop everything. Exit 0 when every goal is met, 1 otherwise, 2 when
the stack could not start. SIGTERM and Ctrl-C stop the run and the stack, and the figures so far are written.

Time: a phase runs only when the budget leaves room for it (its estimate plus the stop); the ones that do not
fit are listed as not run. A crash costs a restart (about a minute per server on two busy cores).
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from adrenaline_sgl.tools.chaos import figures, phases
from adrenaline_sgl.tools.chaos.figures import PhaseRecord
from adrenaline_sgl.tools.chaos.reap import reap
from adrenaline_sgl.tools.chaos.stack import NAMES, ChaosStack, demo_config, strays

STOP_RESERVE_S = 60.0  # stopping the stack and writing the figures
SETTLE_S = 10.0  # how long KV may take to return to idle after a phase
RUNNING_S = 60.0  # how long requests still decoding after a phase may take to end before KV is checked
FULL_BUDGET_S, QUICK_BUDGET_S = 720.0, 540.0


@dataclass(frozen=True)
class Phase:
    name: str
    fn: Callable[[phases.Ctx], phases.PhaseRun]
    estimate_s: float  # without restarts after a crash


def plan(quick: bool) -> list[Phase]:
    P = phases
    if quick:  # NOTE: the phases that have crashed servers come last (each crash costs a restart)
        return [Phase("basic", P.basic, 20), Phase("malformed", P.malformed, 30),
                Phase("release-before-adopt", partial(P.release_before_adopt, rounds=3), 30),
                Phase("disconnect", P.disconnect, 60), Phase("burst-16", partial(P.burst, n=16), 30),
                Phase("decode-sigkill", partial(P.fault, kind="decode-sigkill"), 120),
                Phase("n2", P.parallel_samples, 30), Phase("burst-64", partial(P.burst, n=64), 60),
                Phase("malformed-ids", P.malformed_ids, 20)]  # fmt: skip
    # NOTE: ordered so that a run on today's main, where bursts of 64, n: 2 and bad token ids crash prefill, still
    # gets through the faults before its budget runs out; `--phases` picks any of them.
    return [Phase("basic", P.basic, 20), Phase("malformed", P.malformed, 30),
            Phase("release-before-adopt", partial(P.release_before_adopt, rounds=3), 30),
            Phase("disconnect", P.disconnect, 60),
            *(Phase(f"burst-{n}", partial(P.burst, n=n), 15 + n / 2) for n in (1, 8, 16, 32)),
            Phase("executor-stop", partial(P.fault, kind="executor-stop"), 120),
            Phase("prefill-sigstop", partial(P.fault, kind="prefill-sigstop"), 40),
            Phase("decode-sigstop", partial(P.fault, kind="decode-sigstop"), 40),
            Phase("prefill-sigkill", partial(P.fault, kind="prefill-sigkill"), 150),
            Phase("decode-sigkill", partial(P.fault, kind="decode-sigkill"), 120),
            Phase("burst-64", partial(P.burst, n=64), 60), Phase("burst-128", partial(P.burst, n=128), 90),
            Phase("n2", P.parallel_samples, 30), Phase("malformed-ids", P.malformed_ids, 20),
            Phase("long", P.long_offloaded, 200)]  # fmt: skip


class _Stop(Exception):
    """SIGTERM (the Make target's timeout)."""


def _raise_stop(signum, frame):
    raise _Stop(signal.Signals(signum).name)


class Runner:
    """Runs the phases against one stack and checks it after each."""

    def __init__(self, stack: ChaosStack, ctx: phases.Ctx):
        self.stack, self.ctx = stack, ctx
        self.floor = (0, 0)  # KV tokens per side already counted as leaked

    def phase(self, phase: Phase) -> PhaseRecord:
        stack = self.stack
        rec = PhaseRecord(phase.name)
        t0 = time.monotonic()
        print(f"chaos: phase {phase.name} ...", flush=True)
        try:
            got = phase.fn(self.ctx)
            rec.outcomes, rec.notes, rec.restarted = got.outcomes, got.notes, got.restarted
        except (_Stop, KeyboardInterrupt):
            raise
        except Exception as err:  # a harness failure is a finding too, never a hang
            rec.notes["harness_error"] = f"{type(err).__name__}: {err}"[:500]
        if rec.restarted:  # the phase restarted servers: their KV starts from idle again
            self.floor = (0 if "prefill-0" in rec.restarted else self.floor[0],
                          0 if "decode-0" in rec.restarted else self.floor[1])
        dead = [n for n in stack.dead() if n not in stack.killed]
        rec.crashes = [{"process": n, "exit_code": stack.leader_exit(n), "last_error": stack.last_error(n)}
                       for n in dead]  # fmt: skip
        rec.unhealthy = [n for n in NAMES if n not in dead and n not in stack.killed and not stack.healthy(n)
                         and not stack.healthy(n, timeout_s=10.0)]  # alive but not answering: down too
        rec.crashes += [{"process": n, "exit_code": None, "last_error": "alive, /health does not answer; log: "
                         + stack.last_error(n)} for n in rec.unhealthy]  # fmt: skip
        rec.non_loopback = [f"{name} pid {s.pid} {s}" for name, found in stack.listening().items() for s in found
                            if not s.on_loopback]  # fmt: skip
        if dead or rec.unhealthy:
            down = set(dead) | set(rec.unhealthy)
            if "prefill-0" in down:
                down.add("decode-0")  # a restarted prefill needs a restarted decode to offload (issue 18 defect 5)
            print(f"chaos: {sorted(down)} down after {phase.name}: restarting", flush=True)
            rec.notes["restart_after_crash_s"] = round(stack.restart_servers(sorted(down, key=NAMES.index)), 1)
            rec.restarted += sorted(down)
            self.floor = (0 if "prefill-0" in down else self.floor[0], 0 if "decode-0" in down else self.floor[1])
        rec.settle_s, reading = stack.settle(SETTLE_S, self.floor)
        if reading.decode_running:  # requests still decoding hold KV legitimately: let them end (bounded)
            more_s, reading = stack.settle(RUNNING_S, self.floor)
            rec.settle_s += more_s
        held = reading.held_sides(stack.idle)
        rec.held_kv_tokens = held
        if reading.decode_running:
            rec.notes["decode_still_running_at_check"] = reading.decode_running  # KV not counted as leaked
        else:
            rec.leaked_kv_tokens = max(0, held[0] - self.floor[0]) + max(0, held[1] - self.floor[1])
        self.floor = held  # what is held now; earlier leaks freed later (a lease) lower it
        rec.wall_s = time.monotonic() - t0
        c = rec.counts()
        print(f"chaos: phase {phase.name}: {len(rec.outcomes)} requests, {c['ok']} ok, {c['clear_error']} clear "
              f"errors, {c['unclear'] + c['refused']} unclear, {c['hang']} hung, {len(rec.crashes)} crashes, "
              f"{rec.leaked_kv_tokens} KV tokens leaked ({rec.wall_s:.0f} s)", flush=True)  # fmt: skip
        return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m adrenaline_sgl.tools.chaos", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="the quick subset of phases (docs/chaos.md)")
    parser.add_argument("--out", default=None, help="run folder (default results/chaos/<UTC stamp>)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help=f"time for the phases (default {FULL_BUDGET_S:.0f}, quick {QUICK_BUDGET_S:.0f})")
    parser.add_argument("--hard-timeout-s", type=float, default=None,
                        help="the caller's hard timeout: the budget stays this minus a stop reserve below it")
    parser.add_argument("--hang-s", type=float, default=10.0, help="no progress for this long is a hang")
    parser.add_argument("--phases", default=None, help="comma-separated phase names to run (of the plan)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    out = Path(args.out or os.path.join(os.environ.get("RESULTS_DIR", "results"), "chaos",
                                        time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())))  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (QUICK_BUDGET_S if args.quick else FULL_BUDGET_S)
    if args.hard_timeout_s:
        budget = min(budget, args.hard_timeout_s - 2 * STOP_RESERVE_S - 60)
    todo = plan(args.quick)
    if args.phases:
        wanted = args.phases.split(",")
        unknown = sorted(set(wanted) - {p.name for p in todo})
        if unknown:
            print(f"chaos: unknown phases {unknown}; the {mode} plan has {[p.name for p in todo]}", file=sys.stderr)
            return 2
        todo = [p for p in todo if p.name in wanted]
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    t0 = time.monotonic()
    records: list[PhaseRecord] = []
    end: dict = {"out": str(out), "budget_s": budget}
    code = 1
    print(f"chaos: {mode} run, {len(todo)} phases, budget {budget:.0f} s, folder {out}", flush=True)
    try:
        from adrenaline_sgl.launch import LaunchError

        try:
            with ChaosStack.start(demo_config(out / "stack")) as stack:
                end["stack_ready_s"] = round(time.monotonic() - t0, 1)
                runner = Runner(stack, phases.Ctx(stack, random.Random(args.seed), hang_s=args.hang_s))
                for phase in todo:
                    left = budget - (time.monotonic() - t0)
                    if left < phase.estimate_s + STOP_RESERVE_S:
                        records.append(PhaseRecord(phase.name, skipped=f"time budget: {left:.0f} s left, needs "
                                                                       f"~{phase.estimate_s:.0f} s"))  # fmt: skip
                        continue
                    records.append(runner.phase(phase))
        except LaunchError as err:
            text = str(err)
            if "clean-up left" in text:
                end["left_behind"] = [text[:1000]]
            else:
                end["error"] = f"LaunchError: {text[:2000]}"
                code = 2
    except (KeyboardInterrupt, _Stop) as why:
        end["interrupted"] = f"{type(why).__name__} {why}"
        print(f"chaos: interrupted ({end['interrupted']}): stopping", flush=True)
    except Exception as err:
        end["error"] = f"{type(err).__name__}: {err}"[:2000]
    finally:
        # NOTE: a second Ctrl-C (or `timeout` forwarding the first) must not cut the clean-up and the figures short
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        left = strays(out / "stack")
        if left:
            end.setdefault("left_behind", []).extend(f"pid {p}" for p in left)
            reap(out / "stack")
        end["wall_s"] = round(time.monotonic() - t0, 1)
        figs = figures.summarize(records, end)
        path = figures.write(out, mode, figs, records, end)
        print(figures.table(mode, figs, records, end), flush=True)
        print(f"chaos: figures in {path}", flush=True)
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
    if code == 2:
        print(f"chaos: the stack did not start: {end['error']}", file=sys.stderr)
        return 2
    return 0 if figs["goals_met"] else 1


if __name__ == "__main__":
    sys.exit(main())

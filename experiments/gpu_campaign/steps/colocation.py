"""Step colocation: which green-context path works (probe_green.py), then the colocation profile with it.

The profile (the colocation profiler CLI): for SM shares 1/16 .. 1, our decode kernel's bandwidth on the
executor's partition (batch 32 x context 4096, Llama-2-7B heads) against the copy bandwidth, and prefill of
two Llama-2-7B layers (512 and 2048 tokens) alone on its partition and beside the executor running back to
back on the other SMs. Partitions are made once per share, never per timed call. With the driver API both
partitions come from one split, so prefill has its own SMs (the fair contention number); with the torch API
prefill runs unpartitioned (the profile's provenance says so); with neither, only the whole GPU is profiled.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

from experiments.gpu_campaign.steps import common

PROBE_TIMEOUT_S = 60.0
SMOKE_PROFILE = ["--device", "cpu", "--attention-impl", "torch", "--shares", "0.5,1", "--tokens", "16",
                 "--layers", "1", "--batch", "2", "--context", "32", "--hidden", "64", "--heads", "4",
                 "--kv-heads", "2", "--head-dim", "16", "--ffn", "128", "--reps", "1", "--warmup", "0",
                 "--copy-mib", "1", "--dtype", "float32"]  # fmt: skip


PROFILER = "adrenaline_sgl.tools.colocation_profile"


def main(argv: Sequence[str] | None = None) -> int:
    args = common.parse_args(argv, __doc__.splitlines()[0])
    smoke = args.smoke or not common.has_cuda()
    probe_json = args.out / "probe.json"
    rc_probe = common.run([common.python(), "-m", "experiments.gpu_campaign.probe_green", "--out", probe_json],
                          min(PROBE_TIMEOUT_S, args.remaining_s(10)))  # fmt: skip
    probe = json.loads(probe_json.read_text()) if probe_json.is_file() else {}
    api = probe.get("chosen")
    profile_dir = args.out / "profile"
    if smoke:
        extra = SMOKE_PROFILE
    elif api:
        extra = ["--api", api]
    else:
        extra = ["--shares", "1", "--no-contention"]
    budget = max(5.0, args.remaining_s(15))
    rc = common.run([common.python(), "-m", PROFILER, "--out", profile_dir, "--budget-s", f"{budget:.0f}",
                     *extra], args.remaining_s(3))  # fmt: skip
    verdicts = {"probe_rc": rc_probe, "api": api, "probe_reason": probe.get("reason", "probe wrote nothing"),
                "apis": {k: {x: v.get(x) for x in ("works", "num_sms", "slowdown", "expected_slowdown",
                                                      "overlap_ratio", "disjoint", "error")}
                         for k, v in probe.get("apis", {}).items()}}  # fmt: skip
    have_profile = (profile_dir / "attention.csv").is_file() and (profile_dir / "prefill.csv").is_file()
    if have_profile:
        from experiments.gpu_campaign.verdicts import colocation_verdicts

        verdicts.update(colocation_verdicts(profile_dir))
    summary = (f"green contexts: {api or 'none works'}; executor reaches 60% of copy bandwidth at share "
               f"{verdicts.get('share_for_60pct', 'n/a')}; prefill slowdown beside a loaded executor "
               f"{verdicts.get('contended_slowdown', 'n/a')}")
    if smoke:
        summary = "CPU smoke profile (fake partitions, numbers mean nothing): " + summary
    status = "ok" if rc == 0 and rc_probe == 0 and have_profile else ("partial" if have_profile else "failed")
    common.write_status(args.out, status, summary, "" if status == "ok" else
                        f"probe rc {rc_probe}, profiler rc {rc}, profile written: {have_profile}", **verdicts)
    return 0 if have_profile else 1


if __name__ == "__main__":
    sys.exit(main())

"""Which green-context path works on this GPU, and do its partitions really hold their SMs apart?

    python -m experiments.gpu_campaign.probe_green --out probe.json

For each API of `adrenaline_sgl.colocation.green_context` ("torch": `torch.cuda.green_contexts`, "driver":
the CUDA driver API through cuda-python, which splits the SMs once into the executor's group and the rest):

- limit: a bf16 matmul loop on a 1/4 partition against the whole GPU; a partition that really holds
  `num_sms` SMs is about total/num_sms times slower (`slowdown`, `expected_slowdown`);
- overlap: two half partitions running the same loop at once, against one alone (`overlap_ratio`). Disjoint
  halves take about as long together as one alone (ratio near 1); halves that share SMs (two separate
  `GreenContext.create` calls may hand out the same SMs) take about twice as long (ratio near 2). "torch"
  makes its two halves with two create calls, "driver" from one split (the executor's group and the rest).

`chosen`: the API the colocation profiler should use: driver when it works with disjoint halves (prefill
then gets its own partition, the fair contention number), else torch (prefill unpartitioned beside the
executor), else none (no partition works; the profile is taken on the whole GPU only).
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

PROBE_SHARE = 0.25
DISJOINT_MAX_RATIO = 1.4  # disjoint halves: about 1.0 together vs alone; shared SMs: about 2.0
MATMUL_N = 4096
ITERS = 100


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"


def _versions() -> dict:
    out = {}
    for name in ("cuda.bindings", "cuda.core"):
        try:
            mod = __import__(name, fromlist=["__version__"])
            out[name] = getattr(mod, "__version__", "present")
        except Exception as exc:  # noqa: BLE001 - absent or broken: record it
            out[name] = f"missing ({_error(exc)})"
    from adrenaline_sgl.colocation.green_context import torch_green_contexts_supported

    out["torch.cuda.green_contexts.SUPPORTED"] = torch_green_contexts_supported()
    return out


class _Loop:
    """ITERS bf16 matmuls of MATMUL_N^3 per stream, each stream writing its own output."""

    def __init__(self, device: str):
        import torch

        g = torch.Generator(device=device).manual_seed(0)
        n = MATMUL_N
        self.torch = torch
        self.a = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)  # never time on zeros
        self.b = torch.randn(n, n, device=device, dtype=torch.bfloat16, generator=g)
        self.outs: dict[int, object] = {}

    def ms(self, streams: list) -> float:
        """Wall time of ITERS matmuls enqueued on each stream at once, host clock around full syncs."""
        torch = self.torch
        outs = [self.outs.setdefault(i, torch.empty_like(self.a)) for i in range(len(streams))]
        for stream, out in zip(streams, outs):  # warm-up on every stream
            with torch.cuda.stream(stream):
                torch.matmul(self.a, self.b, out=out)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(ITERS // 4):  # interleave, so that both streams have work queued from the start
            for stream, out in zip(streams, outs):
                with torch.cuda.stream(stream):
                    for _ in range(4):
                        torch.matmul(self.a, self.b, out=out)
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1e3


def probe_api(api: str, device: str, loop: _Loop, whole_ms: float, total_sms: int) -> dict:
    from adrenaline_sgl.colocation.green_context import GreenContextPartitioner

    rec: dict = {"api": api}
    try:
        quarter = GreenContextPartitioner(device, api=api).open(PROBE_SHARE)
    except Exception as exc:  # noqa: BLE001
        rec.update(works=False, error=_error(exc))
        return rec
    try:
        rec["num_sms"] = quarter.num_sms
        part_ms = loop.ms([quarter.stream])
        rec.update(part_ms=round(part_ms, 3), slowdown=round(part_ms / whole_ms, 3),
                   expected_slowdown=round(total_sms / quarter.num_sms, 3))  # fmt: skip
        rec["limits_sms"] = part_ms / whole_ms >= 0.6 * total_sms / quarter.num_sms
    except Exception as exc:  # noqa: BLE001
        rec.update(works=False, error=_error(exc), traceback=traceback.format_exc()[-1500:])
        return rec
    finally:
        quarter.close()
    halves = []
    try:
        if api == "driver":  # one split: the executor's group and the rest
            half = GreenContextPartitioner(device, api=api).open(0.5)
            halves.append(half)
            streams = [half.stream, half.partition.prefill_stream]
            rec["pair"] = "one split: executor group + remaining SMs"
        else:  # two separate create calls, as two independent users of the API would do
            halves = [GreenContextPartitioner(device, api=api).open(0.5) for _ in range(2)]
            streams = [h.stream for h in halves]
            rec["pair"] = "two separate GreenContext.create calls"
        alone = loop.ms(streams[:1])
        both = loop.ms(streams)
        rec.update(half_sms=[h.num_sms for h in halves], alone_ms=round(alone, 3), both_ms=round(both, 3),
                   overlap_ratio=round(both / alone, 3), disjoint=both / alone < DISJOINT_MAX_RATIO)  # fmt: skip
        rec["works"] = True
    except Exception as exc:  # noqa: BLE001
        rec.update(works=False, error=_error(exc), traceback=traceback.format_exc()[-1500:])
    finally:
        for h in halves:
            h.close()
    return rec


def probe(device: str = "cuda:0") -> dict:
    import torch

    result: dict = {"device": device, "probe_share": PROBE_SHARE, "matmul": f"bf16 {MATMUL_N}^3 x {ITERS}"}
    try:
        result["versions"] = _versions()
    except Exception as exc:  # noqa: BLE001
        result["versions"] = {"error": _error(exc)}
    if not torch.cuda.is_available():
        from adrenaline_sgl.colocation.green_context import GreenContextPartitioner

        apis = {}
        for api in ("torch", "driver"):  # the errors a CPU machine gets, so the rehearsal exercises this path
            try:
                GreenContextPartitioner(device, api=api)
                apis[api] = {"api": api, "works": False, "error": "constructed without a GPU (unexpected)"}
            except Exception as exc:  # noqa: BLE001
                apis[api] = {"api": api, "works": False, "error": _error(exc)}
        result.update(cuda=False, apis=apis, chosen=None, reason="no GPU")
        return result
    props = torch.cuda.get_device_properties(torch.device(device))
    loop = _Loop(device)
    whole_ms = loop.ms([torch.cuda.current_stream()])
    result.update(cuda=True, gpu=props.name, total_sms=props.multi_processor_count, whole_ms=round(whole_ms, 3))
    result["apis"] = {api: probe_api(api, device, loop, whole_ms, props.multi_processor_count)
                      for api in ("torch", "driver")}  # fmt: skip
    drv, tor = result["apis"]["driver"], result["apis"]["torch"]
    if drv.get("works") and drv.get("disjoint"):
        result.update(chosen="driver", reason="driver API works and its one split gives disjoint partitions")
    elif tor.get("works"):
        result.update(chosen="torch", reason="torch API works; prefill runs unpartitioned beside the executor"
                      + ("" if drv.get("works") else f" (driver API: {drv.get('error', 'halves not disjoint')})"))
    elif drv.get("works"):
        result.update(chosen="driver", reason="only the driver API works (its halves did not look disjoint)")
    else:
        result.update(chosen=None, reason="no green-context API works here")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="JSON file to write")
    ap.add_argument("--device", default="cuda:0")
    args = ap.parse_args(argv)
    result = probe(args.device)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result.get(k) for k in ("cuda", "chosen", "reason")}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

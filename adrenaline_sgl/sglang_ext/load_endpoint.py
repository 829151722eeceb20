"""`GET /adrenaline/load` on an instance's HTTP server: what the proxy pulls (schema: `protocol.py`).

Hook (registered only in the launcher process, where the HTTP server runs): AROUND
`sglang.srt.entrypoints.http_server.launch_server`. Changes: when `--adrenaline-role` is set, one route is
added to SGLang's FastAPI app before it starts serving. Why: the proxy needs each instance's role, load and
executor address, and SGLang has no route for the Adrenaline parts.

Sources: queue lengths and KV usage from SGLang's own `tokenizer_manager.get_loads()` (what `/v1/loads`
serves); on prefill, the executor's own `stats` answer over its control socket (ZMQ, the executor
protocol's `call`; timeout `HEALTH_TIMEOUT_S`): healthy when it answers, and the KV it holds; on decode, the
scheduler's offload statistics (round trips, offloaded requests) through SGLang's `get_internal_state`
(`decode_stats.py`; timeout `decode_stats.FETCH_TIMEOUT_S`, after which `offload_stats_ok` is False).
"""

from __future__ import annotations

import asyncio
import logging

from adrenaline_sgl.protocol import FAULT_STOP_PATH, LOAD_PATH, LoadReport
from adrenaline_sgl.sglang_ext import decode_stats, flags

logger = logging.getLogger(__name__)

LAUNCH_SERVER = "sglang.srt.entrypoints.http_server.launch_server"
HEALTH_TIMEOUT_S = 0.5
LOADS_TIMEOUT_S = 2.0


async def executor_stats(host: str, port: int, timeout_s: float = HEALTH_TIMEOUT_S) -> dict | None:
    """The executor's `stats` (AttentionExecutor.stats as a dict), or None when it does not answer in time."""
    ok, result = await executor_call(host, port, "stats", timeout_s)
    return result if ok else None


async def executor_call(host: str, port: int, op: str, timeout_s: float) -> tuple[bool, object]:
    """One control `op` on the executor: (True, result), or (False, why) on an error reply or no reply
    (`offload.control.call` on a worker thread, so the event loop never waits on the socket)."""
    from adrenaline_sgl.offload import control

    return await asyncio.to_thread(control.call, f"{host}:{port}", op, None, timeout_s)


def colocation_report(executor: dict | None) -> dict:
    """The LoadReport colocation fields from the executor's `stats` (its "colocation" part, colocation.replan)."""
    coloc = (executor or {}).get("colocation") or {}
    plan = coloc.get("plan") or {}
    ttft = float(plan.get("predicted_ttft_ms", 0.0))
    return {"executor_sm_share": float(coloc.get("executor_sm_share") or 0.0),
            "colocation_ttft_ms": -1.0 if ttft == float("inf") else ttft,
            "colocation_slo_met": bool(plan.get("slo_met", True))}


def executor_capacity_tokens(args: flags.AdrenalineArgs, executor: dict | None) -> int:
    """The executor's reserve in tokens: `--adrenaline-executor-max-tokens`, else (its default share of the pool)
    what is free plus what it holds, at most its pool's slots; 0 when the executor did not answer."""
    if not executor:
        return 0
    if args.executor_max_tokens > 0:
        return args.executor_max_tokens
    seen = int(executor.get("slots_free", 0)) + int(executor.get("tokens_held", 0))
    return min(seen, int(executor.get("capacity_slots", seen)))


def report_from_loads(args: flags.AdrenalineArgs, loads: list[dict], executor: dict | None,
                      decode: decode_stats.DecodeStats | None = None) -> LoadReport:
    """Sum SGLang's per-DP-rank load dicts (`LoadSnapshot.to_dict`) into one report for this instance, with the
    prefill's `executor` stats or the decode scheduler's offload stats (None: did not answer)."""
    running = sum(int(d.get("num_running_reqs", 0)) for d in loads)
    waiting = sum(int(d.get("num_waiting_reqs", 0)) for d in loads)
    total = sum(int(d.get("max_total_num_tokens", 0)) for d in loads)
    used = sum(int(d.get("num_used_tokens", 0)) for d in loads)
    return LoadReport(
        role=args.role,
        num_running_reqs=running,
        num_waiting_reqs=waiting,
        token_usage=min(1.0, used / total) if total else 0.0,
        max_total_tokens=total,
        executor_addr=args.executor_addr if args.role == "prefill" else "",
        executor_healthy=executor is not None,
        executor_kv_tokens=int(executor.get("tokens_held", 0)) if executor else 0,
        executor_kv_bytes=int(executor.get("tokens_held", 0)) * int(executor.get("bytes_per_slot", 0)) if executor
        else 0,
        executor_free_tokens=int(executor.get("slots_free", 0)) if executor else 0,
        executor_capacity_tokens=executor_capacity_tokens(args, executor),
        **colocation_report(executor),
        offloaded_reqs=int(executor.get("requests", 0)) if executor else decode.offloaded_reqs if decode else 0,
        offload_rtt_ms=decode.rtt_mean_ms if decode else 0.0,
        offload_stats_ok=decode is not None,
        offload_rtt_p50_ms=decode.rtt_p50_ms if decode else 0.0,
        offload_rtt_p99_ms=decode.rtt_p99_ms if decode else 0.0,
        offload_rtt_samples=decode.rtt_samples if decode else 0,
        offload_failed_reqs=decode.failed_reqs if decode else 0,
        offload_failures_total=decode.failed_total if decode else 0,
    )


async def _none() -> None:
    return None


def make_handler(args: flags.AdrenalineArgs, get_tokenizer_manager,
                 stats_timeout_s: float = decode_stats.FETCH_TIMEOUT_S):
    async def loads_of(tokenizer_manager) -> list[dict]:
        try:
            snapshots = await asyncio.wait_for(tokenizer_manager.get_loads(include=["core"], dp_rank=None),
                                               LOADS_TIMEOUT_S)  # fmt: skip
            return [s.to_dict({"core"}) if hasattr(s, "to_dict") else dict(s) for s in snapshots]
        except (TimeoutError, ValueError) as err:
            logger.warning("adrenaline load: get_loads failed: %s", err)
            return []

    async def adrenaline_load():
        tokenizer_manager = get_tokenizer_manager()
        loads, executor, decode = await asyncio.gather(
            loads_of(tokenizer_manager),
            executor_stats(args.executor_host, args.executor_port) if args.role == "prefill" else _none(),
            decode_stats.fetch(tokenizer_manager, stats_timeout_s) if args.role == "decode" else _none(),
        )
        return report_from_loads(args, loads, executor, decode).to_dict()

    return adrenaline_load


LOOPBACK = ("127.0.0.1", "::1", "localhost")
FAULT_STOP_TIMEOUT_S = 5.0


def make_fault_stop_handler(args: flags.AdrenalineArgs):
    """Fault injection (`--adrenaline-enable-fault-injection`, prefill): stop this instance's executor thread;
    SGLang keeps serving. Loopback clients only (403 otherwise); 503 when the executor does not confirm."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    async def stop_executor(request: Request):
        client = request.client.host if request.client else ""
        if client not in LOOPBACK:
            return JSONResponse({"error": f"{FAULT_STOP_PATH}: loopback clients only, not {client!r}"}, 403)
        ok, result = await executor_call(args.executor_host, args.executor_port, "fault_stop", FAULT_STOP_TIMEOUT_S)
        if not ok:
            return JSONResponse({"error": f"executor at {args.executor_addr} did not stop: {result}"}, 503)
        logger.warning("adrenaline: fault injection stopped the executor at %s", args.executor_addr)
        return {"stopped": args.executor_addr}

    stop_executor.__annotations__["request"] = Request  # a class, not the string `from __future__` leaves
    return stop_executor


def launch_server_hook(original, server_args, *a, **kw):
    """AROUND `http_server.launch_server`: add the route, then start SGLang's server unchanged."""
    args = flags.of(server_args)
    if args.enabled:
        from sglang.srt.entrypoints import http_server

        def tokenizer_manager():
            return http_server.get_global_state().tokenizer_manager

        http_server.app.add_api_route(LOAD_PATH, make_handler(args, tokenizer_manager), methods=["GET"])
        logger.info("adrenaline: %s serves this %s instance's load", LOAD_PATH, args.role)
        if args.enable_fault_injection and args.role == "prefill":
            http_server.app.add_api_route(FAULT_STOP_PATH, make_fault_stop_handler(args), methods=["POST"])
            logger.warning("adrenaline: fault injection on: POST %s stops the executor", FAULT_STOP_PATH)
    return original(server_args, *a, **kw)

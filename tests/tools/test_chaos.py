"""`make chaos`'s parts that need no servers: /proc socket tables, how an answer is classified (against a small
aiohttp app behaving as a good, failing, dying or silent instance would), the figures and their goals, and
that the Make target keeps a hard timeout and a reaper."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from pathlib import Path

import pytest
from aiohttp import web

from adrenaline_sgl.tools.chaos import sockets
from adrenaline_sgl.tools.chaos.figures import PhaseRecord, summarize, table
from adrenaline_sgl.tools.chaos.stack import KV
from adrenaline_sgl.tools.chaos.traffic import Call, Outcome, run_calls

ROOT = Path(__file__).resolve().parents[2]


# ---- sockets ----------------------------------------------------------------------------------------------

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0
   1: 00000000:3039 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 222 1 0 100 0 0 10 0
   2: 0100007F:1F91 0100007F:A000 01 00000000:00000000 00:00000000 00000000     0        0 333 1 0 100 0 0 10 0
"""
TCP6 = """  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000000000000:4E21 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 444 1 0 100 0 0 10 0
   1: 00000000000000000000000001000000:4E22 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0 100 0 0 10 0
   2: 0000000000000000FFFF00000100007F:4E23 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 666 1 0 100 0 0 10 0
"""  # noqa: E501


def test_proc_net_tables_decode_to_listening_addresses():
    assert sockets.parse_proc_net(TCP) == {111: ("127.0.0.1", 8080), 222: ("0.0.0.0", 12345)}  # 333: not LISTEN
    assert sockets.parse_proc_net(TCP6) == {444: ("::", 20001), 555: ("::1", 20002), 666: ("::ffff:7f00:1", 20003)}
    on_loopback = {str(s): s.on_loopback for s in (sockets.Listening(1, "127.0.0.1", 1), sockets.Listening(1, "::1", 2),
                                                  sockets.Listening(1, "0.0.0.0", 3), sockets.Listening(1, "::", 4),
                                                  sockets.Listening(1, "::ffff:127.0.0.1", 5))}  # fmt: skip
    assert on_loopback == {"127.0.0.1:1": True, "[::1]:2": True, "0.0.0.0:3": False, "[::]:4": False,
                           "[::ffff:127.0.0.1]:5": True}  # fmt: skip


def test_listening_finds_this_process_sockets_by_inode():
    import os

    with socket.socket() as loop, socket.socket() as wild:
        loop.bind(("127.0.0.1", 0))
        wild.bind(("0.0.0.0", 0))
        loop.listen()
        wild.listen()
        found = {(s.host, s.port) for s in sockets.listening([os.getpid()])}
        assert ("127.0.0.1", loop.getsockname()[1]) in found and ("0.0.0.0", wild.getsockname()[1]) in found
    assert sockets.listening([2**22 + 12345]) == []  # no such process: nothing, no error


# ---- traffic: how answers are classified ------------------------------------------------------------------


async def _stream(request, events, end=b"data: [DONE]\n\n", cut=False):
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for event in events:
        await resp.write(f"data: {json.dumps(event)}\n\n".encode())
    if cut:
        await asyncio.sleep(0.1)
        request.transport.abort()
        return resp
    await resp.write(end)
    return resp


async def _instance(request: web.Request):
    body = await request.read()
    kind = request.path.strip("/")
    if kind == "ok":
        return web.json_response({"text": "Paris", "meta_info": {"completion_tokens": 3}})
    if kind == "json-error":
        return web.json_response({"error": {"message": "bad", "code": 400}}, status=400)
    if kind == "plain-500":
        return web.Response(text="500 Internal Server Error", status=500)
    if kind == "abort":
        return web.json_response({"text": "", "meta_info": {"finish_reason": {"type": "abort", "message": "gone"}}})
    if kind == "stream-ok":
        return await _stream(request, [{"text": "a"}, {"text": "ab", "meta_info": {"completion_tokens": 2}}])
    if kind == "stream-error":
        return await _stream(request, [{"text": "a"}, {"error": {"message": "executor failed"}}])
    if kind == "stream-cut":
        return await _stream(request, [{"text": "a"}], cut=True)
    if kind == "stream-truncated":
        return await _stream(request, [{"text": "a"}], end=b"")
    if kind == "silent":
        await asyncio.sleep(30)
    return web.json_response({"echo": len(body)})


def _classify(calls, hang_s=1.0):
    async def go():
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", _instance)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        try:
            url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
            return await run_calls(url, calls, hang_s=hang_s, bound_s=20)
        finally:
            await runner.cleanup()

    return asyncio.run(asyncio.wait_for(go(), 30))


def test_answers_are_classified_ok_clear_unclear_or_hung():
    stream = {"stream": True}
    calls = [Call("ok", "/ok", {}), Call("json-error", "/json-error", {}), Call("plain-500", "/plain-500", {}),
             Call("abort", "/abort", {}), Call("stream-ok", "/stream-ok", stream),
             Call("stream-error", "/stream-error", stream), Call("stream-cut", "/stream-cut", stream),
             Call("stream-truncated", "/stream-truncated", stream), Call("silent", "/silent", {}),
             Call("left", "/silent", {}, leave_after_s=0.2)]  # fmt: skip
    got = {o.case: o for o in _classify(calls)}
    assert {k: o.result for k, o in got.items()} == {
        "ok": "ok", "json-error": "clear_error", "plain-500": "unclear", "abort": "clear_error", "stream-ok": "ok",
        "stream-error": "clear_error", "stream-cut": "unclear", "stream-truncated": "unclear", "silent": "hang",
        "left": "disconnected"}  # fmt: skip
    assert got["ok"].tokens == 3 and got["stream-ok"].tokens == 2 and got["stream-ok"].events == 3
    assert "executor failed" in got["stream-error"].detail and got["json-error"].status == 400
    assert 1.0 <= got["silent"].seconds < 5.0  # declared hung once nothing progressed for hang_s


def test_a_malformed_call_is_as_expected_only_with_its_status_and_a_json_error():
    calls = [Call("refused", "/json-error", b"{", expect="400"), Call("500", "/plain-500", b"{", expect="400"),
             Call("accepted", "/ok", b"{}", expect="400")]  # fmt: skip
    got = {o.case: o.as_expected for o in _classify(calls)}
    assert got == {"refused": True, "500": False, "accepted": False}


# ---- figures ----------------------------------------------------------------------------------------------


def _out(case, result, expect="ok", status=200):
    return Outcome(case, expect, result, status=status, sent_at=0.0, ended_at=1.0)


def test_figures_count_goals_and_name_what_missed():
    clean = [PhaseRecord("basic", [_out("basic/a", "ok"), _out("basic/b", "ok")]),
             PhaseRecord("malformed", [_out("malformed/x", "clear_error", "400", 400)]),
             PhaseRecord("decode-sigkill", [_out("decode-sigkill/in-flight", "clear_error", status=200)],
                         notes={"seconds_to_clear_error": 2.5})]  # fmt: skip
    figures = summarize(clean, {})
    assert figures["goals_met"] and figures["requests"] == 4 and figures["cases"] == 4
    assert figures["malformed_refused"] == "1/1" and figures["seconds_to_clear_error"] == {"decode-sigkill": 2.5}

    bad = [PhaseRecord("burst-64", [_out("burst-64/chat", "hang"), _out("burst-64/gen", "clear_error", status=502)],
                       crashes=[{"process": "prefill-0", "exit_code": -9, "last_error": "PoolFullError"}],
                       leaked_kv_tokens=143, non_loopback=["prefill-0 pid 1 0.0.0.0:5"]),
           PhaseRecord("malformed", [_out("malformed/deep", "unclear", "400", 500)]),
           PhaseRecord("decode-sigkill", [_out("decode-sigkill/in-flight", "unclear")],
                       notes={"seconds_to_clear_error": None}),
           PhaseRecord("long", skipped="time budget")]  # fmt: skip
    figures = summarize(bad, {"left_behind": ["pid 7"]})
    assert not figures["goals_met"]
    assert set(figures["goals_missed"]) == {"crashes", "hangs_over_10s", "leaked_kv_tokens", "sockets_not_on_loopback",
                                            "unanswered", "valid_requests_failed", "left_behind",
                                            "seconds_to_clear_error[decode-sigkill]", "malformed_refused"}
    assert figures["phases_not_run"] == ["long (time budget)"]
    printed = table("quick", figures, bad, {"wall_s": 1.0})
    assert re.search(r"crashes\s+1\s+goal 0", printed) and re.search(r"leaked KV tokens\s+143\s+goal 0", printed)
    assert "long" in printed and "not run: time budget" in printed


def test_kv_held_beyond_idle_per_side():
    idle = KV(0, 0, 1024, 0, 0)
    assert KV(0, 0, 1024, 0, 0).held_sides(idle) == (0, 0)
    assert KV(143, 13, 1100, 0, 0).held_sides(idle) == (143, 0)  # the executor's count wins over SGLang's
    assert KV(0, 0, 1024, 40, 1).held_sides(idle) == (0, 40)
    assert KV(143, 13, 1100, 0, 0).settled(idle, (143, 0)) and not KV(150, 14, 1100, 0, 0).settled(idle, (143, 0))
    assert not KV(None, None, None, 0, 0).settled(idle, (0, 0))  # prefill did not answer: not settled


# ---- the Make target --------------------------------------------------------------------------------------


def test_make_chaos_has_a_hard_timeout_and_reaps_what_it_started():
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile[makefile.index("\nchaos:"):].split("\n\n")[0]
    assert "timeout" in recipe and "adrenaline_sgl.tools.chaos" in recipe
    assert "trap" in recipe and "adrenaline_sgl.tools.chaos.reap" in recipe
    assert "make chaos" in makefile[: makefile.index("\nsetup:")]  # in `make help`


@pytest.mark.parametrize("quick", [True, False])
def test_plans_name_every_phase_once_and_replay_the_issue(quick):
    from adrenaline_sgl.tools.chaos.run import plan

    names = [p.name for p in plan(quick)]
    assert len(names) == len(set(names))
    needed = {"malformed", "malformed-ids", "release-before-adopt", "disconnect", "burst-64", "n2", "decode-sigkill"}
    if not quick:
        needed |= {"burst-1", "burst-128", "long", "executor-stop", "prefill-sigstop", "prefill-sigkill",
                   "decode-sigstop"}  # fmt: skip
    assert needed <= set(names)


def test_reap_stops_the_processes_of_a_run_and_only_those(tmp_path):
    import os
    import subprocess
    import sys

    from adrenaline_sgl.tools.chaos.reap import reap

    (tmp_path / "run" / "stack" / "20260101T000000Z-1" / "cpu_support").mkdir(parents=True)
    (tmp_path / "other" / "cpu_support").mkdir(parents=True)
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]

    def start(support):
        env = {**os.environ, "PYTHONPATH": f"{support}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        return subprocess.Popen(sleep, env=env, start_new_session=True)

    ours, theirs = start(next((tmp_path / "run").rglob("cpu_support"))), start(tmp_path / "other" / "cpu_support")
    try:
        assert reap(tmp_path / "run", grace_s=5.0) == [ours.pid]
        assert ours.wait(timeout=10) is not None and theirs.poll() is None  # another run's process is left alone
    finally:
        for proc in (ours, theirs):
            proc.kill()
            proc.wait(timeout=10)

"""Requests against the stack and how each one was answered.

`run_calls(url, calls)` sends every `Call` at once (asyncio + aiohttp) and returns one `Outcome` each. An
outcome is `ok` (a well-formed result), `clear_error` (an HTTP error with a JSON error body, an abort or
error event in a stream), `unclear` (a plain-text error, a cut or truncated stream, a connection reset),
`refused` (no connection: the proxy is down), `hang` (no answer although nothing in the phase progressed
for `hang_s`: no stream event, no answer of another request), or `disconnected` (the client left on
purpose, `Call.leave_after_s`). NOTE: progress is phase-wide so that a burst of 128 requests queued behind
each other on two cores is not a hang while the stack works through it; a request alone that gets no
answer for `hang_s` is one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import aiohttp

ANSWERED = ("ok", "clear_error")


@dataclass(frozen=True)
class Call:
    """One request: `body` is a JSON-able object, or raw bytes sent as they are (malformed cases)."""

    case: str  # the case's name, e.g. "burst-64/chat-stream"
    path: str = "/generate"
    body: object = None
    method: str = "POST"
    expect: str = "ok"  # "ok", or the HTTP status a refused request must get (e.g. "400")
    leave_after_s: float | None = None  # the client goes away: streams after their first event, else after this
    offloaded: bool = True  # the proxy's policy `always` offloads it (for the figures of kills)

    @property
    def stream(self) -> bool:
        return isinstance(self.body, dict) and bool(self.body.get("stream"))


@dataclass
class Outcome:
    case: str
    expect: str
    result: str  # ok | clear_error | unclear | refused | hang | disconnected
    status: int | None = None
    sent_at: float = 0.0  # time.monotonic()
    ended_at: float = 0.0
    events: int = 0  # stream events received
    tokens: int | None = None  # completion tokens when the answer says
    detail: str = ""  # one line: the error, or why it is unclear

    @property
    def seconds(self) -> float:
        return self.ended_at - self.sent_at

    @property
    def as_expected(self) -> bool:
        if self.expect == "ok":
            return self.result in ("ok", "disconnected")
        return self.status is not None and str(self.status) == self.expect and self.result == "clear_error"

    def to_dict(self) -> dict:
        return {"case": self.case, "expect": self.expect, "result": self.result, "status": self.status,
                "seconds": round(self.seconds, 2), "events": self.events, "tokens": self.tokens,
                "detail": self.detail[:300]}  # fmt: skip


@dataclass
class Progress:
    """Phase-wide: when anything last happened (an event, an answer)."""

    last: float = field(default_factory=time.monotonic)

    def tick(self) -> None:
        self.last = time.monotonic()


def _error_of(obj) -> str | None:
    """The error an answer carries (SGLang's, OpenAI's, ours, an abort finish reason), else None."""
    items = obj if isinstance(obj, list) else [obj]
    for item in items:
        if not isinstance(item, dict):
            continue
        if "error" in item:
            err = item["error"]
            return json.dumps(err)[:300] if not isinstance(err, str) else err[:300]
        if item.get("object") == "error":
            return str(item.get("message", item))[:300]
        reasons = [item.get("meta_info", {}).get("finish_reason")]
        reasons += [c.get("finish_reason") for c in item.get("choices", []) if isinstance(c, dict)]
        for reason in reasons:
            if isinstance(reason, dict) and reason.get("type") == "abort":
                return f"abort: {reason.get('message', '')}"[:300]
            if reason == "abort":
                return "abort"
    return None


def _tokens_of(obj) -> int | None:
    items = obj if isinstance(obj, list) else [obj]
    counts = []
    for item in items:
        if isinstance(item, dict):
            meta = item.get("meta_info") or {}
            usage = item.get("usage") or {}
            n = meta.get("completion_tokens", usage.get("completion_tokens"))
            if isinstance(n, int):
                counts.append(n)
    return sum(counts) if counts else None


def _well_formed(path: str, obj) -> bool:
    items = obj if isinstance(obj, list) else [obj]
    if path.startswith("/v1/"):
        return all(isinstance(i, dict) and i.get("choices") for i in items)
    return all(isinstance(i, dict) and "text" in i for i in items)


async def _read_stream(resp: aiohttp.ClientResponse, call: Call, out: Outcome, progress: Progress) -> None:
    done = False
    last = None
    async for raw in resp.content:
        line = raw.decode(errors="replace").strip()
        if not line.startswith("data:"):
            continue
        progress.tick()
        out.events += 1
        data = line[5:].strip()
        if data == "[DONE]":
            done = True
            continue
        try:
            last = json.loads(data)
        except ValueError:
            out.result, out.detail = "unclear", f"stream event is not JSON: {data[:120]}"
            return
        error = _error_of(last)
        if error is not None:
            out.result, out.detail = "clear_error", f"error event: {error}"
            return
        if call.leave_after_s is not None:
            out.result, out.detail = "disconnected", "client left after the first event"
            return
    out.tokens = _tokens_of(last) if last is not None else None
    if done:
        out.result = "ok"
    else:
        out.result, out.detail = "unclear", f"stream ended after {out.events} events without [DONE] or an error"


async def _one(http: aiohttp.ClientSession, base: str, call: Call, progress: Progress) -> Outcome:
    out = Outcome(call.case, call.expect, "unclear", sent_at=time.monotonic())
    kwargs = {"data": call.body, "headers": {"Content-Type": "application/json"}} if isinstance(call.body, bytes) \
        else ({"json": call.body} if call.body is not None else {})  # fmt: skip
    try:
        async with http.request(call.method, base + call.path, **kwargs) as resp:
            out.status = resp.status
            if resp.status == 200 and call.stream:
                await _read_stream(resp, call, out, progress)
                return out
            text = await resp.text(errors="replace")
            progress.tick()
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            if resp.status >= 400:
                error = _error_of(obj) if obj is not None else None
                out.result = "clear_error" if error else "unclear"
                out.detail = error or f"HTTP {resp.status}, not a JSON error: {text[:150]!r}"
            elif obj is None or not _well_formed(call.path, obj):
                out.result, out.detail = "unclear", f"HTTP {resp.status} with an unexpected body: {text[:150]!r}"
            else:
                error = _error_of(obj)
                out.result = "clear_error" if error else "ok"
                out.detail, out.tokens = error or "", _tokens_of(obj)
    except aiohttp.ClientConnectorError as err:
        out.result, out.detail = "refused", f"no connection: {err}"
    except (aiohttp.ClientError, TimeoutError, OSError) as err:  # payload cut, server disconnected, reset
        out.result, out.detail = "unclear", f"connection cut: {type(err).__name__}: {err}"
    finally:
        out.ended_at = time.monotonic()
    return out


async def _with_leave(http, base, call, progress) -> Outcome:
    """A non-streaming call whose client leaves after `leave_after_s` (the connection is closed)."""
    task = asyncio.ensure_future(_one(http, base, call, progress))
    try:
        return await asyncio.wait_for(asyncio.shield(task), call.leave_after_s)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        out = Outcome(call.case, call.expect, "disconnected", sent_at=time.monotonic() - call.leave_after_s,
                      ended_at=time.monotonic(), detail=f"client left after {call.leave_after_s} s")  # fmt: skip
        return out


async def run_calls(base: str, calls: list[Call], hang_s: float = 10.0, bound_s: float = 600.0,
                    progress: Progress | None = None, started: asyncio.Event | None = None) -> list[Outcome]:
    """Send every call at once; wait until each is answered, or hung (nothing progressed for `hang_s` and the
    call is older than that), or `bound_s` passed. `started` is set once every call is sent."""
    progress = progress or Progress()
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:
        tasks = {}
        for call in calls:
            runner = _with_leave if (call.leave_after_s is not None and not call.stream) else _one
            tasks[asyncio.ensure_future(runner(http, base, call, progress))] = (call, time.monotonic())
        if started is not None:
            started.set()
        t0 = time.monotonic()
        pending, given_up = set(tasks), []
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.25)
            now = time.monotonic()
            stuck = now - progress.last > hang_s
            for task in list(pending):
                call, sent = tasks[task]
                if (stuck and now - sent > hang_s) or now - t0 > bound_s:
                    task.cancel()  # the client leaves: its connection closes
                    pending.discard(task)
                    given_up.append(task)
        await asyncio.gather(*given_up, return_exceptions=True)
        results = []
        for task, (call, sent) in tasks.items():
            if task.cancelled():
                results.append(Outcome(call.case, call.expect, "hang", sent_at=sent, ended_at=time.monotonic(),
                                       detail=f"no answer, nothing progressed for {hang_s:.0f} s"))  # fmt: skip
            else:
                results.append(task.result())
        return results

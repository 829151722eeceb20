"""The proxy's HTTP server (aiohttp): route, decide, mark, forward to prefill and decode, relay decode.

Errors are JSON `{"error": {"message", "type", "code"}}` on one line: 400 for a malformed request, 404 / 405 for
an unknown path or method, 502 when an instance cannot be reached or answers garbage, 504 when it does not
answer in time, 500 (logged in one bounded line, no traceback) for a bug of ours. Every outbound call has a
connect timeout and a total timeout, so nothing waits forever. A client that leaves cancels its request: the
handler is cancelled (`handler_cancellation`) and closes its connections to both instances, which is how SGLang
learns to abort it. A decode stream that breaks after HTTP 200 was sent ends with an error event.

Every answered request counts once in `adrenaline_proxy_outcomes_total` (ok, error, bad_request, client_gone):
an offloaded request that failed is an error there and in `adrenaline_proxy_offload_failures_total`, never ok.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from urllib.parse import urlparse

import aiohttp
from aiohttp import web

from adrenaline_sgl.protocol import LOAD_PATH
from adrenaline_sgl.proxy import request as rq
from adrenaline_sgl.proxy.config import ProxyConfig
from adrenaline_sgl.proxy.decide import Ledger, build_policy, decide
from adrenaline_sgl.proxy.health import OffloadBreaker
from adrenaline_sgl.proxy.load import LoadPoller
from adrenaline_sgl.proxy.metrics import CONTENT_TYPE, ProxyMetrics
from adrenaline_sgl.proxy.tokens import TokenCounter, load_counter

logger = logging.getLogger(__name__)

ENDPOINTS = ("generate", "v1/chat/completions", "v1/completions")
# Read-only GETs forwarded like SGLang's mini load balancer: model info from the first prefill instance,
# server info from the first decode instance.
READ_ONLY_GETS = {"v1/models": "prefill", "model_info": "prefill", "get_model_info": "prefill",
                  "get_server_info": "decode", "server_info": "decode"}
MESSAGE_CHARS = 300  # the most of an error message that is answered or logged
STATUS_KINDS = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


class UpstreamError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind = status, kind


class _ClientGone(Exception):
    """The client closed its connection while its answer was being written."""


def _one_line(text: str) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= MESSAGE_CHARS else text[:MESSAGE_CHARS] + "..."


def error_response(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": _one_line(message), "type": kind, "code": status}}, status=status)


def error_event(status: int, kind: str, message: str) -> bytes:
    """A server-sent event carrying the same error object (the stream's last event)."""
    error = {"message": _one_line(message), "type": kind, "code": status}
    return f"data: {json.dumps({'error': error})}\n\n".encode()


@web.middleware
async def json_errors(request: web.Request, handler):
    """aiohttp's own 404/405/413 and any exception a handler lets out, as our JSON error; one bounded log line
    (a request must not be able to fill the log)."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        return error_response(err.status, STATUS_KINDS.get(err.status, "http_error"),
                              f"{request.method} {request.path[:100]}: {err.reason}")  # fmt: skip
    except (asyncio.CancelledError, _ClientGone):
        raise
    except Exception as err:  # noqa: BLE001 (a bug of ours: one request fails, with a clear error)
        logger.error("%s %s failed: %s: %s", request.method, request.path[:100], type(err).__name__,
                     _one_line(str(err)))  # fmt: skip
        return error_response(500, "internal_error", f"the proxy failed on this request: {type(err).__name__}")


def _bootstrap_host(url: str) -> str:
    host = urlparse(url).hostname or ""
    return f"[{host}]" if ":" in host else host  # IPv6 literal, as the mini LB does


def _aborted(answer) -> bool:
    """An SGLang answer (one, or a batch's list) whose finish reason is an abort, or an error object."""
    items = answer if isinstance(answer, list) else [answer]
    for item in items:
        if not isinstance(item, dict):
            continue
        if "error" in item:
            return True
        reason = (item.get("meta_info") or {}).get("finish_reason") if isinstance(item.get("meta_info"), dict) else None
        if isinstance(reason, dict) and reason.get("type") == "abort":
            return True
        for choice in item.get("choices") or []:
            if isinstance(choice, dict) and choice.get("finish_reason") == "abort":
                return True
    return False


def _events_failed(events: bytes) -> bool:
    """Complete server-sent events carrying an error or an abort (cheap filter before any parsing)."""
    if b'"error"' not in events and b"abort" not in events:
        return False
    for line in events.split(b"\n"):
        if line.startswith(b"data:") and line[5:].strip() != b"[DONE]":
            try:
                if _aborted(json.loads(line[5:])):
                    return True
            except ValueError:
                continue
    return False


class Proxy:
    """Start with `await proxy.start()`; `proxy.url` is where it listens; stop with `await proxy.stop()`."""

    def __init__(self, cfg: ProxyConfig, policy=None, rng: random.Random | None = None,
                 tokens: TokenCounter | None = None):  # fmt: skip
        self.cfg = cfg
        self.policy = policy if policy is not None else build_policy(cfg)
        self.tokens = tokens if tokens is not None else load_counter(cfg.model_path)
        self.ledger = Ledger()
        self.breaker = OffloadBreaker(cfg.offload_failures_to_pause, cfg.offload_pause_s)
        self.rng = rng or random.Random()
        self.metrics = ProxyMetrics()
        self.poller = LoadPoller(
            [u for u, _ in cfg.prefill] + list(cfg.decode), cfg.load_interval_s, cfg.load_timeout_s, cfg.load_stale_s
        )
        self.session: aiohttp.ClientSession | None = None  # requests and passthrough GETs
        self._load_session: aiohttp.ClientSession | None = None  # the poller's /adrenaline/load pulls
        self._runners: list[web.AppRunner] = []
        self.port: int | None = None
        self.metrics_port: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2, middlewares=[json_errors])
        for endpoint in ENDPOINTS:
            app.router.add_post("/" + endpoint, self._handler(endpoint))
        app.router.add_get("/health", self.health)
        app.router.add_get("/adrenaline/status", self.status)
        app.router.add_get(LOAD_PATH, self.load)
        for path, role in READ_ONLY_GETS.items():
            app.router.add_get("/" + path, self._passthrough(path, role))
        app.router.add_get("/metrics", self.metrics_handler)  # also here when a separate port serves them
        return app

    async def start(self) -> None:
        # Every request holds one connection to prefill and one to decode for its whole life, so the pool has
        # no cap (aiohttp's default 100 made a burst of 128 wait for slots), and the connect timeout covers the
        # TCP connect only (aiohttp's `connect` also counts that wait: the burst got 504s, issue 18).
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout_s, sock_connect=self.cfg.connect_timeout_s)
        self.session = aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0))
        # load pulls on their own session: a busy request pool never delays them into staleness
        self._load_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        await self.poller.pull_once(self._load_session)  # first decisions already see the instances
        self.poller.start(self._load_session)
        self.port = await self._serve(self.app(), self.cfg.host, self.cfg.port)
        if self.cfg.metrics_port is not None:
            metrics_app = web.Application(middlewares=[json_errors])
            metrics_app.router.add_get("/metrics", self.metrics_handler)
            self.metrics_port = await self._serve(metrics_app, self.cfg.metrics_host, self.cfg.metrics_port)
        logger.info("adrenaline proxy on %s (policy %s)", self.url, self.cfg.policy)

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        # handler_cancellation: a client that leaves cancels its handler, which closes the upstream connections
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self._runners.append(runner)
        return site._server.sockets[0].getsockname()[1]  # the real port when 0 was asked for

    async def stop(self) -> None:
        await self.poller.stop()
        for runner in self._runners:
            await runner.cleanup()
        self._runners.clear()
        for session in (self.session, self._load_session):
            if session is not None:
                await session.close()
        self.session = self._load_session = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    # ---- small endpoints -------------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics_handler(self, _request: web.Request) -> web.Response:
        self.metrics.refresh(self.poller.snapshot())
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    def _instances(self) -> dict:
        roles = {**{u: "prefill" for u, _ in self.cfg.prefill}, **{u: "decode" for u in self.cfg.decode}}
        snapshot = self.poller.snapshot()
        found = {}
        for url, role in roles.items():
            pulled = snapshot.get(url)
            found[url] = {"role": role, "up": self.poller.up(url),
                          "report": None if pulled is None or pulled.report is None else pulled.report.to_dict(),
                          "error": "" if pulled is None else pulled.error,
                          "age_s": None if pulled is None else round(time.monotonic() - pulled.at_s, 1)}  # fmt: skip
        return found

    async def status(self, _request: web.Request) -> web.Response:
        return web.json_response({"policy": self.cfg.policy, "instances": self._instances()})

    async def load(self, _request: web.Request) -> web.Response:
        """`GET /adrenaline/load` on the proxy: the last report of every instance it routes to, what it has in
        flight, and the executors it has paused offloading to (the servers' own reports: `protocol.LoadReport`)."""
        return web.json_response({"role": "proxy", "policy": self.cfg.policy, "instances": self._instances(),
                                  "in_flight": self.ledger.in_flight(),
                                  "offload_failures": self.breaker.snapshot()})  # fmt: skip

    def _passthrough(self, path: str, role: str):
        """GET `path` from one instance as SGLang's mini load balancer does (clients such as
        `sglang.benchmark.serving` poll /v1/models before they start)."""

        async def handle(_request: web.Request) -> web.Response:
            url = self.cfg.prefill[0][0] if role == "prefill" else self.cfg.decode[0]
            try:
                async with self.session.get(f"{url}/{path}") as resp:
                    return web.Response(status=resp.status, body=await resp.read(),
                                        content_type=resp.content_type)  # fmt: skip
            except (TimeoutError, aiohttp.ClientError) as err:
                return error_response(502, "upstream_unreachable", f"{url}/{path} unreachable: {err}")

        return handle

    # ---- the request path ------------------------------------------------------------------------------
    def _handler(self, endpoint: str):
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self.route(request, endpoint)

        return handle

    def _pick(self, candidates: list):
        """One of `candidates` (URLs, or (URL, port) pairs) at random among those not down, else among all (a
        down one then fails fast with a clear 502)."""
        up = [c for c in candidates if self.poller.up(c if isinstance(c, str) else c[0])]
        pool = up or candidates
        return pool[self.rng.randrange(len(pool))]

    async def route(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        t0 = time.monotonic()
        try:
            body = rq.parse_body(await request.read())
            info = rq.request_info(body, endpoint, self.tokens)
            sequences = rq.sequences(body, endpoint)
        except rq.BadRequest as err:
            self.metrics.errors.labels(kind="bad_request").inc()
            self.metrics.count_outcome(False, "bad_request")
            return error_response(400, "invalid_request", str(err))

        prefill_url, bootstrap_port = self._pick(list(self.cfg.prefill))
        decode_url = self._pick(list(self.cfg.decode))
        prefill_load, decode_load = self.poller.get(prefill_url), self.poller.get(decode_url)
        room = None
        if prefill_load is not None:
            room = self.ledger.executor_room_tokens(prefill_url, prefill_load, self.poller.pulled_at(prefill_url))
        decision = decide(self.policy, info, prefill_load, decode_load,
                          lambda: self.ledger.stats(decode_url, decode_load, {prefill_url: prefill_load}),
                          room_tokens=room, need_tokens=sequences * info.max_seq_tokens,
                          paused=self.breaker.paused(prefill_url))  # fmt: skip
        self.metrics.count_decision(decision.offload, decision.reason)
        executor = prefill_load.executor_addr if decision.offload else ""
        out = rq.prepare(body, endpoint, _bootstrap_host(prefill_url), bootstrap_port, decision.offload, executor,
                         self.rng)  # fmt: skip
        key = self.ledger.add(decode_url, prefill_url, info, decision.offload, sequences)
        outcome, blame = "error", False
        try:
            if out.get("stream", False):
                resp, outcome, blame = await self._forward_stream(request, out, prefill_url, decode_url, endpoint, t0)
            else:
                resp, outcome, blame = await self._forward(out, prefill_url, decode_url, endpoint, t0)
            return resp
        except UpstreamError as err:
            self.metrics.errors.labels(kind=err.kind).inc()
            return error_response(err.status, err.kind, str(err))
        except (asyncio.CancelledError, _ClientGone):
            outcome = "client_gone"
            raise
        finally:
            self.ledger.done(key)
            self._count(decision.offload, prefill_url, outcome, blame)

    def _count(self, offloaded: bool, prefill_url: str, outcome: str, blame: bool) -> None:
        """One request's outcome; an offloaded one that failed is an offload failure, and, when decode answered
        it with the failure (`blame`), counts against its executor."""
        self.metrics.count_outcome(offloaded, outcome)
        if not offloaded:
            return
        if outcome == "ok":
            self.breaker.succeeded(prefill_url)
        elif outcome == "error":
            self.metrics.offload_failures.labels(instance=prefill_url).inc()
            if blame and self.breaker.failed(prefill_url):
                logger.warning("offloading to %s paused for %.0f s: %d offloaded requests failed in a row",
                               prefill_url, self.cfg.offload_pause_s, self.cfg.offload_failures_to_pause)  # fmt: skip

    async def _post(self, url: str, endpoint: str, body: dict) -> aiohttp.ClientResponse:
        try:
            return await self.session.post(f"{url}/{endpoint}", json=body)
        except TimeoutError as err:
            raise UpstreamError(504, "upstream_timeout", f"{url} did not answer in time") from err
        except aiohttp.ClientError as err:
            raise UpstreamError(502, "upstream_unreachable", f"{url} unreachable: {err}") from err

    async def _both(self, out: dict, prefill_url: str, decode_url: str, endpoint: str):
        """POST the same body to both; if either fails, cancel the other and raise (nothing left waiting)."""
        tasks = [asyncio.ensure_future(self._post(u, endpoint, out)) for u in (prefill_url, decode_url)]
        try:
            return await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is None:
                    task.result().close()
            raise

    async def _forward(self, out, prefill_url, decode_url, endpoint, t0) -> tuple[web.Response, str, bool]:
        prefill_resp, decode_resp = await self._both(out, prefill_url, decode_url, endpoint)
        finished = False
        try:
            try:
                decode_json = await decode_resp.json(content_type=None)
                prefill_json = await prefill_resp.json(content_type=None) if out.get("return_logprob") else None
            except (json.JSONDecodeError, aiohttp.ContentTypeError, UnicodeDecodeError) as err:
                raise UpstreamError(502, "upstream_bad_response", f"non-JSON answer from an instance: {err}") from err
            except TimeoutError as err:
                raise UpstreamError(504, "upstream_timeout", "an instance did not finish in time") from err
            except aiohttp.ClientError as err:  # decode died before its answer was complete
                raise UpstreamError(502, "upstream_broken", f"{decode_url} broke off its answer: {err}") from err
            finished = True
            _merge_input_logprobs(prefill_json, decode_json)
            self.metrics.latency_s.observe(time.monotonic() - t0)
            status = decode_resp.status
            if status >= 500 or (status < 400 and _aborted(decode_json)):
                self.metrics.errors.labels(kind="upstream_status" if status >= 500 else "upstream_abort").inc()
                outcome = "error"
            else:
                outcome = "bad_request" if status >= 400 else "ok"
            return web.json_response(decode_json, status=status), outcome, outcome == "error"
        finally:
            for resp in (prefill_resp, decode_resp):
                resp.release() if finished else resp.close()

    async def _forward_stream(self, request, out, prefill_url, decode_url, endpoint,
                              t0) -> tuple[web.StreamResponse, str, bool]:  # fmt: skip
        prefill_resp, decode_resp = await self._both(out, prefill_url, decode_url, endpoint)
        finished = False
        try:
            if decode_resp.status != 200:
                text = await decode_resp.text()
                finished = True
                outcome = "error" if decode_resp.status >= 500 else "bad_request"
                if outcome == "error":
                    self.metrics.errors.labels(kind="upstream_status").inc()
                resp = web.Response(text=text, status=decode_resp.status, content_type="application/json")
                return resp, outcome, outcome == "error"
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                outcome, blame, finished = await self._relay(resp, decode_resp, decode_url)
                await _write(resp, None)
            except _ClientGone:  # answered as is: aiohttp ends a response whose client left quietly
                return resp, "client_gone", False
            self.metrics.latency_s.observe(time.monotonic() - t0)
            return resp, outcome, blame
        finally:
            for upstream in (prefill_resp, decode_resp):
                upstream.release() if finished else upstream.close()

    async def _relay(self, resp: web.StreamResponse, decode_resp: aiohttp.ClientResponse,
                     decode_url: str) -> tuple[str, bool, bool]:  # fmt: skip
        """Copy decode's events to the client, whole events only; a stream that breaks (decode died, timed out)
        loses its partial event and ends with an error event. Returns (outcome, decode reported the failure,
        decode's stream ended cleanly)."""
        pending, failed = b"", False
        try:
            async for chunk in decode_resp.content.iter_any():
                pending += chunk
                cut = pending.rfind(b"\n\n")
                if cut < 0:
                    continue
                events, pending = pending[:cut + 2], pending[cut + 2:]
                failed = failed or _events_failed(events)
                await _write(resp, events)
            if pending:
                failed = failed or _events_failed(pending)
                await _write(resp, pending)
            return ("error" if failed else "ok"), failed, True
        except TimeoutError:
            kind, status, message = "upstream_timeout", 504, "decode stream timed out"
        except aiohttp.ClientError as err:
            kind, status, message = "upstream_broken", 502, f"decode stream from {decode_url} broke off: {err}"
        self.metrics.errors.labels(kind=kind).inc()
        logger.warning("%s", _one_line(message))
        await _write(resp, error_event(status, kind, message))
        return "error", False, False


async def _write(resp: web.StreamResponse, data: bytes | None) -> None:
    """Write to the client (None: end the stream); a client that left raises `_ClientGone`, logged once at debug
    level without a traceback (it is the client's choice, not a fault)."""
    try:
        if data is None:
            await resp.write_eof()
        else:
            await resp.write(data)
    except (ConnectionResetError, aiohttp.ClientConnectionResetError) as err:
        logger.debug("client left mid-stream: %s", err)
        raise _ClientGone() from None


def _merge_input_logprobs(prefill_json, decode_json) -> None:
    """As the mini LB: decode's `input_token_logprobs` get prefill's in front (prompt logprobs live there)."""
    if not isinstance(prefill_json, dict) or not isinstance(decode_json, dict):
        return
    p, d = prefill_json.get("meta_info", {}), decode_json.get("meta_info", {})
    if "input_token_logprobs" in p and "input_token_logprobs" in d:
        d["input_token_logprobs"] = p["input_token_logprobs"] + d["input_token_logprobs"]

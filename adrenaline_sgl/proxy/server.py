"""The proxy's HTTP server (aiohttp): route, decide, mark, forward to prefill and decode, relay decode.

Errors are JSON `{"error": {"message", "type", "code"}}`: 400 for a malformed request, 502 when an
instance cannot be reached or answers garbage, 504 when it does not answer in time. Every outbound call has
a connect timeout and a total timeout, so nothing waits forever.
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

from adrenaline_sgl.proxy import request as rq
from adrenaline_sgl.proxy.config import ProxyConfig
from adrenaline_sgl.proxy.decide import Ledger, build_policy, decide
from adrenaline_sgl.proxy.load import LoadPoller
from adrenaline_sgl.proxy.metrics import CONTENT_TYPE, ProxyMetrics
from adrenaline_sgl.proxy.tokens import TokenCounter, load_counter

logger = logging.getLogger(__name__)

ENDPOINTS = ("generate", "v1/chat/completions", "v1/completions")
# Read-only GETs forwarded like SGLang's mini load balancer: model info from the first prefill instance,
# server info from the first decode instance.
READ_ONLY_GETS = {"v1/models": "prefill", "model_info": "prefill", "get_model_info": "prefill",
                  "get_server_info": "decode", "server_info": "decode"}


class UpstreamError(Exception):
    def __init__(self, status: int, kind: str, message: str):
        super().__init__(message)
        self.status, self.kind = status, kind


def error_response(status: int, kind: str, message: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def _bootstrap_host(url: str) -> str:
    host = urlparse(url).hostname or ""
    return f"[{host}]" if ":" in host else host  # IPv6 literal, as the mini LB does


class Proxy:
    """Start with `await proxy.start()`; `proxy.url` is where it listens; stop with `await proxy.stop()`."""

    def __init__(self, cfg: ProxyConfig, policy=None, rng: random.Random | None = None,
                 tokens: TokenCounter | None = None):  # fmt: skip
        self.cfg = cfg
        self.policy = policy if policy is not None else build_policy(cfg)
        self.tokens = tokens if tokens is not None else load_counter(cfg.model_path)
        self.ledger = Ledger()
        self.rng = rng or random.Random()
        self.metrics = ProxyMetrics()
        self.poller = LoadPoller(
            [u for u, _ in cfg.prefill] + list(cfg.decode), cfg.load_interval_s, cfg.load_timeout_s, cfg.load_stale_s
        )
        self.session: aiohttp.ClientSession | None = None
        self._runners: list[web.AppRunner] = []
        self.port: int | None = None
        self.metrics_port: int | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        for endpoint in ENDPOINTS:
            app.router.add_post("/" + endpoint, self._handler(endpoint))
        app.router.add_get("/health", self.health)
        app.router.add_get("/adrenaline/status", self.status)
        for path, role in READ_ONLY_GETS.items():
            app.router.add_get("/" + path, self._passthrough(path, role))
        if self.cfg.metrics_port is None:
            app.router.add_get("/metrics", self.metrics_handler)
        return app

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.cfg.request_timeout_s, connect=self.cfg.connect_timeout_s)
        self.session = aiohttp.ClientSession(timeout=timeout)
        await self.poller.pull_once(self.session)  # first decisions already see the instances
        self.poller.start(self.session)
        self.port = await self._serve(self.app(), self.cfg.host, self.cfg.port)
        if self.cfg.metrics_port is not None:
            metrics_app = web.Application()
            metrics_app.router.add_get("/metrics", self.metrics_handler)
            self.metrics_port = await self._serve(metrics_app, self.cfg.metrics_host, self.cfg.metrics_port)
        logger.info("adrenaline proxy on %s (policy %s)", self.url, self.cfg.policy)

    async def _serve(self, app: web.Application, host: str, port: int) -> int:
        runner = web.AppRunner(app, access_log=None)
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
        if self.session is not None:
            await self.session.close()
            self.session = None

    @property
    def url(self) -> str:
        return f"http://{self.cfg.host}:{self.port}"

    # ---- small endpoints -------------------------------------------------------------------------------
    async def health(self, _request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def metrics_handler(self, _request: web.Request) -> web.Response:
        self.metrics.refresh(self.poller.snapshot())
        return web.Response(body=self.metrics.render(), headers={"Content-Type": CONTENT_TYPE})

    async def status(self, _request: web.Request) -> web.Response:
        instances = {
            url: {"report": None if p.report is None else p.report.to_dict(), "error": p.error}
            for url, p in self.poller.snapshot().items()
        }
        return web.json_response({"policy": self.cfg.policy, "instances": instances})

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

    async def route(self, request: web.Request, endpoint: str) -> web.StreamResponse:
        t0 = time.monotonic()
        try:
            body = json.loads(await request.read())
            info = rq.request_info(body, endpoint, self.tokens)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            self.metrics.errors.labels(kind="bad_request").inc()
            return error_response(400, "invalid_request", f"request body is not valid JSON: {err}")
        except rq.BadRequest as err:
            self.metrics.errors.labels(kind="bad_request").inc()
            return error_response(400, "invalid_request", str(err))

        prefill_url, bootstrap_port = self.cfg.prefill[self.rng.randrange(len(self.cfg.prefill))]
        decode_url = self.cfg.decode[self.rng.randrange(len(self.cfg.decode))]
        prefill_load, decode_load = self.poller.get(prefill_url), self.poller.get(decode_url)
        decision = decide(self.policy, info, prefill_load, decode_load,
                          lambda: self.ledger.stats(decode_url, decode_load, {prefill_url: prefill_load}))  # fmt: skip
        self.metrics.count_decision(decision.offload, decision.reason)
        executor = prefill_load.executor_addr if decision.offload else ""
        out = rq.prepare(body, endpoint, _bootstrap_host(prefill_url), bootstrap_port, decision.offload, executor,
                         self.rng)  # fmt: skip
        key = self.ledger.add(decode_url, prefill_url, info, decision.offload)
        try:
            if out.get("stream", False):
                return await self._forward_stream(request, out, prefill_url, decode_url, endpoint, t0)
            return await self._forward(out, prefill_url, decode_url, endpoint, t0)
        except UpstreamError as err:
            self.metrics.errors.labels(kind=err.kind).inc()
            return error_response(err.status, err.kind, str(err))
        finally:
            self.ledger.done(key)

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
                    task.result().release()
            raise

    async def _forward(self, out, prefill_url, decode_url, endpoint, t0) -> web.Response:
        prefill_resp, decode_resp = await self._both(out, prefill_url, decode_url, endpoint)
        try:
            try:
                decode_json = await decode_resp.json(content_type=None)
                prefill_json = await prefill_resp.json(content_type=None) if out.get("return_logprob") else None
            except (json.JSONDecodeError, aiohttp.ContentTypeError, UnicodeDecodeError) as err:
                raise UpstreamError(502, "upstream_bad_response", f"non-JSON answer from an instance: {err}") from err
            except TimeoutError as err:
                raise UpstreamError(504, "upstream_timeout", "an instance did not finish in time") from err
            _merge_input_logprobs(prefill_json, decode_json)
            self.metrics.latency_s.observe(time.monotonic() - t0)
            return web.json_response(decode_json, status=decode_resp.status)
        finally:
            prefill_resp.release()
            decode_resp.release()

    async def _forward_stream(self, request, out, prefill_url, decode_url, endpoint, t0) -> web.StreamResponse:
        prefill_resp, decode_resp = await self._both(out, prefill_url, decode_url, endpoint)
        try:
            if decode_resp.status != 200:
                text = await decode_resp.text()
                return web.Response(text=text, status=decode_resp.status, content_type="application/json")
            resp = web.StreamResponse(status=200, headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                async for chunk in decode_resp.content.iter_chunked(64 * 1024):
                    await resp.write(chunk)
            except TimeoutError:
                self.metrics.errors.labels(kind="upstream_timeout").inc()
                await resp.write(b'data: {"error": {"message": "decode stream timed out", "code": 504}}\n\n')
            await resp.write_eof()
            self.metrics.latency_s.observe(time.monotonic() - t0)
            return resp
        finally:
            prefill_resp.release()
            decode_resp.release()


def _merge_input_logprobs(prefill_json, decode_json) -> None:
    """As the mini LB: decode's `input_token_logprobs` get prefill's in front (prompt logprobs live there)."""
    if not isinstance(prefill_json, dict) or not isinstance(decode_json, dict):
        return
    p, d = prefill_json.get("meta_info", {}), decode_json.get("meta_info", {})
    if "input_token_logprobs" in p and "input_token_logprobs" in d:
        d["input_token_logprobs"] = p["input_token_logprobs"] + d["input_token_logprobs"]

"""A stand-in SGLang instance (prefill or decode) for proxy tests and demos: aiohttp on 127.0.0.1, free port."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from adrenaline_sgl.protocol import LOAD_PATH, OFFLOAD_KEY


class StandIn:
    """Records every body posted to it; answers /generate and the OpenAI endpoints like an instance would."""

    def __init__(self, name: str, load: dict | None, delay_s: float = 0.0):
        self.name = name
        self.load = load  # None: no /adrenaline/load route (stock SGLang without the plugin)
        self.delay_s = delay_s
        self.fail_offloaded = 0  # HTTP status answered to offloaded requests (as a decode whose executor failed)
        self.bodies: list[dict] = []
        self.cancelled = 0
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> StandIn:
        app = web.Application()
        for path in ("/generate", "/v1/chat/completions", "/v1/completions"):
            app.router.add_post(path, self._generate)
        if self.load is not None:
            app.router.add_get(LOAD_PATH, self._load)
        for path in ("/v1/models", "/get_server_info"):  # read-only info, each answer names this instance
            app.router.add_get(path, self._info)
        # handler_cancellation: a client that gives up (the proxy timing out) cancels the handler, as in SGLang.
        self._runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _load(self, _request):
        return web.json_response(self.load)

    async def _info(self, request: web.Request):
        return web.json_response({"instance": self.name, "path": request.path})

    async def _generate(self, request: web.Request):
        body = await request.json()
        self.bodies.append(body)
        try:
            await asyncio.sleep(self.delay_s)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.fail_offloaded and _offloaded(body):
            error = {"message": "executor failed", "type": "offload_error", "code": self.fail_offloaded}
            return web.json_response({"error": error}, status=self.fail_offloaded)
        meta = {"id": self.name, "input_token_logprobs": [[-0.5, 1, None]] if self.name == "prefill" else []}
        if not body.get("stream"):
            return web.json_response({"text": f"answer from {self.name}", "meta_info": meta})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i in range(3):
            await resp.write(f"data: {json.dumps({'text': f'{self.name}-{i}'})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _offloaded(body: dict) -> bool:
    sp = body.get("sampling_params") or {}
    params = (sp[0] if isinstance(sp, list) and sp else sp).get("custom_params") or body.get("custom_params") or {}
    return bool(params.get(OFFLOAD_KEY))


def prefill_load(healthy: bool = True, kv_bytes: int = 0, max_total_tokens: int = 100_000,
                 executor_free_tokens: int = 0, executor_capacity_tokens: int = 0) -> dict:  # fmt: skip
    """A prefill's load report; executor capacity 0 = not reported (no capacity admission)."""
    return {"role": "prefill", "executor_addr": "127.0.0.1:31000", "executor_healthy": healthy,
            "executor_kv_bytes": kv_bytes, "executor_kv_tokens": kv_bytes // 64,
            "executor_free_tokens": executor_free_tokens, "executor_capacity_tokens": executor_capacity_tokens,
            "max_total_tokens": max_total_tokens}  # fmt: skip


def decode_load(rtt_ms: float = 0.0, max_total_tokens: int = 100_000) -> dict:
    return {"role": "decode", "offload_rtt_ms": rtt_ms, "max_total_tokens": max_total_tokens}

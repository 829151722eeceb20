"""Pulls every instance's `GET /adrenaline/load` periodically; each pull has a timeout."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import aiohttp

from adrenaline_sgl.protocol import LOAD_PATH, LoadReport

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Pulled:
    report: LoadReport | None  # None: never answered, or the last pull failed
    at_s: float  # time.monotonic() of the pull
    error: str = ""
    reachable: bool = True  # False: the last pull's connection was refused or reset (the instance is down)


class LoadPoller:
    """Keeps the latest load report per instance URL."""

    def __init__(self, urls: list[str], interval_s: float, timeout_s: float, stale_s: float):
        self.urls = list(dict.fromkeys(urls))
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.stale_s = stale_s
        self._latest: dict[str, Pulled] = {}
        self._task: asyncio.Task | None = None

    def get(self, url: str) -> LoadReport | None:
        """The fresh report of `url`, or None when it is missing, failed or stale."""
        pulled = self._latest.get(url)
        if pulled is None or pulled.report is None or time.monotonic() - pulled.at_s > self.stale_s:
            return None
        return pulled.report

    def up(self, url: str) -> bool:
        """False when the last pull of `url` was refused or reset (the instance is down: route around it); True
        before the first pull and for instances without the load route (stock SGLang answers 404)."""
        pulled = self._latest.get(url)
        return pulled is None or pulled.reachable

    def pulled_at(self, url: str) -> float:
        """time.monotonic() of `url`'s last pull (0.0 before the first)."""
        pulled = self._latest.get(url)
        return 0.0 if pulled is None else pulled.at_s

    def snapshot(self) -> dict[str, Pulled]:
        return dict(self._latest)

    async def pull_once(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._pull(session, url) for url in self.urls))

    async def _pull(self, session: aiohttp.ClientSession, url: str) -> None:
        answered = False
        try:
            async with session.get(url + LOAD_PATH, timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as resp:
                answered = True
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status}")
                report = LoadReport.from_dict(await resp.json(content_type=None))
            self._latest[url] = Pulled(report, time.monotonic())
        except (TimeoutError, aiohttp.ClientError, ValueError, TypeError) as err:
            # down: refused or reset; a slow answer (timeout) is a busy instance, not a dead one
            answered = answered or isinstance(err, TimeoutError) or not isinstance(err, aiohttp.ClientConnectionError)
            previous = self._latest.get(url)
            if previous is None or previous.report is not None or previous.reachable != answered:
                logger.warning("load pull from %s failed: %s", url, str(err)[:200] or type(err).__name__)
            self._latest[url] = Pulled(None, time.monotonic(), f"{type(err).__name__}: {str(err)[:200]}", answered)

    async def run(self, session: aiohttp.ClientSession) -> None:
        while True:
            await self.pull_once(session)
            await asyncio.sleep(self.interval_s)

    def start(self, session: aiohttp.ClientSession) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(session))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

"""`python -m adrenaline_sgl.proxy --prefill URL [BOOTSTRAP_PORT] --decode URL [--host H] [--port P]
[--policy never|always|ratio:F|auto] [--model SPEC --gpu SPEC] [--model-path DIR] [--metrics-port M]`: run
the proxy until SIGINT/SIGTERM (`--help` lists every setting)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from adrenaline_sgl.proxy.config import build_parser, from_args
from adrenaline_sgl.proxy.server import Proxy


async def _serve(proxy: Proxy) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await proxy.start()
    print(f"adrenaline proxy listening on {proxy.url} (policy {proxy.cfg.policy})", flush=True)
    try:
        await stop.wait()
    finally:
        await proxy.stop()


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=ns.log_level.upper(), format="[%(asctime)s] %(name)s: %(message)s")
    try:
        proxy = Proxy(from_args(ns))
    except (ValueError, FileNotFoundError) as err:  # a bad setting, or a predictor's missing profile
        print(f"adrenaline proxy: {err}", file=sys.stderr)
        return 2
    asyncio.run(_serve(proxy))
    return 0


if __name__ == "__main__":
    sys.exit(main())

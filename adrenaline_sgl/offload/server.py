"""Run an attention executor in its own process, reachable over the `mooncake` or `cuda_ipc` transport.

    python -m adrenaline_sgl.offload.server --num-layers 30 --num-kv-heads 3 --head-dim 64 \
        --num-slots 65536 --dtype float32 [--transport mooncake --host 127.0.0.1 --port 0 --attention auto
        --parent-pid PID]

Prints one JSON line `{"address": "host:port", "pid": ...}` once it serves, then answers until SIGTERM,
SIGINT or (with --parent-pid) the parent's exit. The pool is its own (adoption by copy).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading

import torch

from .attention import ATTENTION_CHOICES
from .cli_args import int_in
from .executor import AttentionExecutor
from .pool import KVPool
from .service import ExecutorService
from .transports.base import DEFAULT_TRANSPORT, SERVER_TRANSPORTS
from .wire import dtype_from_name


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m adrenaline_sgl.offload.server", description=__doc__.split("\n")[0])
    p.add_argument("--num-layers", type=int_in("num-layers", 1, 1024), required=True, help="model layers")
    p.add_argument("--num-kv-heads", type=int_in("num-kv-heads", 1, 1024), required=True, help="KV heads (Hkv)")
    p.add_argument("--head-dim", type=int_in("head-dim", 1, 1024), required=True, help="head dimension (D)")
    p.add_argument("--num-slots", type=int_in("num-slots", 1, 1 << 26), default=65536, help="KV pool size in tokens")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32", help="KV dtype")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="pool device")
    p.add_argument("--attention", choices=ATTENTION_CHOICES, default="auto", help="decode attention kernel")
    p.add_argument("--transport", choices=SERVER_TRANSPORTS, default=DEFAULT_TRANSPORT, help="how layer data moves")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (control and doorbells)")
    p.add_argument("--port", type=int, default=0, help="port to bind; 0 picks a free one")
    p.add_argument("--threads", type=int_in("threads", 1, 1024), default=1,
                   help="torch CPU threads of this process (1: the executor's ops are small and cores are shared)")
    p.add_argument("--parent-pid", type=int, default=None, help="exit when this process is gone")
    return p


def _watch_parent(pid: int, stop: threading.Event) -> None:
    while not stop.wait(1.0):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            stop.set()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not 0 <= args.port <= 65535:
        raise SystemExit(f"--port must lie in [0, 65535], got {args.port}")
    torch.set_num_threads(args.threads)
    pool = KVPool.standalone(args.num_layers, args.num_slots, args.num_kv_heads, args.head_dim,
                             dtype_from_name(args.dtype), args.device)
    service = ExecutorService(AttentionExecutor(pool, args.attention))
    if args.transport == "cuda_ipc":
        from .transports.cuda_ipc import CudaIpcServer

        server = CudaIpcServer(service, args.host, args.port)
    else:
        from .transports.mooncake_server import MooncakeServer

        server = MooncakeServer(service, args.host, args.port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(args.parent_pid, stop), daemon=True).start()
    print(json.dumps({"address": server.address, "pid": os.getpid()}), flush=True)
    try:
        server.serve(stop)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

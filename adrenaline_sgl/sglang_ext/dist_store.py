"""torch's TCPStore of each scheduler process, on the configured host instead of every interface.

Why (issue 18 defect 11): SGLang starts torch.distributed with `init_method="tcp://<host>:<port>"` (host: the
server's `--host` or `--dist-init-addr`), and rank 0's `TCPStore` server then listens on `[::]` (all
interfaces, IPv4 included), whatever the host: torch binds the wildcard in both its libuv and its classic
backend. On a stack configured for loopback, that was one socket open to the network per scheduler.

Supported knobs of torch that move it: a `TCPStore` may be given a listening socket to serve on
(`master_listen_fd`), and `init_process_group` creates its store with `multi_tenant=True`, which reuses the
server already running in this process on that port. So before SGLang initialises torch.distributed, rank 0
binds a socket to exactly the host of the init method, starts a multi-tenant `TCPStore` on it, and keeps it;
SGLang's store then shares that server. The other ranks connect to the same host:port as before.

Hook (scheduler processes): AROUND `sglang.srt.distributed.bootstrap._init_parallel_groups`. Inert unless the
instance has `--adrenaline-role`, the init method is `tcp://` with a literal IP address, this is rank 0 and
torch.distributed is not initialised yet. If the socket cannot be set up, SGLang's own store is used (logged).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from datetime import timedelta

from adrenaline_sgl.sglang_ext import flags

logger = logging.getLogger(__name__)

INIT_PARALLEL_GROUPS = "sglang.srt.distributed.bootstrap._init_parallel_groups"
STORE_TIMEOUT_S = 600.0  # our own handle's client timeout (SGLang's store keeps its own)
LISTEN_BACKLOG = 512

_STORES: list = []  # held for the process's life: the server stops with the last store object using it


def tcp_host_port(init_method: str | None) -> tuple[str, int] | None:
    """(IP address, port) of a `tcp://ip:port` init method (IPv6 in brackets); None for anything else."""
    if not init_method or not init_method.startswith("tcp://"):
        return None
    host, _, port = init_method[len("tcp://"):].rpartition(":")
    host = host.strip("[]")
    try:
        ipaddress.ip_address(host)
        return host, int(port)
    except ValueError:
        return None


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to exactly `host`:`port` and listening (what the store then serves on)."""
    family = socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def host_store(host: str, port: int):
    """Start this process's multi-tenant TCPStore server on `host`:`port` only, and keep it."""
    import torch.distributed as dist

    fd = listening_socket(host, port).detach()  # NOTE: the store's server owns the descriptor from here
    try:
        store = dist.TCPStore(host, port, None, True, timedelta(seconds=STORE_TIMEOUT_S), wait_for_workers=False,
                              multi_tenant=True, master_listen_fd=fd)  # fmt: skip
    except BaseException:
        socket.close(fd)
        raise
    _STORES.append(store)
    return store


def _is_rank0() -> bool:
    from sglang.srt.runtime_context import get_parallel

    parallel = get_parallel()
    return parallel.tp_rank == 0 and parallel.pp_rank == 0 and not getattr(parallel, "ep_join_rank_offset", 0)


def init_parallel_groups_hook(original, *args, **kwargs):
    """Changes: on rank 0 of an Adrenaline instance, torch.distributed's TCPStore listens on the init method's
    host only (see the module doc). Why: the stack must open no socket beyond its configured host."""
    server_args = kwargs.get("server_args")
    found = tcp_host_port(kwargs.get("dist_init_method"))
    if server_args is not None and found is not None and flags.of(server_args).enabled:
        import torch.distributed as dist

        if not dist.is_initialized() and _is_rank0():
            try:
                host_store(*found)
                logger.info("adrenaline: torch.distributed's store listens on %s:%d only", *found)
            except (OSError, RuntimeError) as err:  # SGLang's own store then, on every interface, as before
                logger.warning("adrenaline: could not serve torch.distributed's store on %s:%d only (%s); "
                               "SGLang's store listens on all interfaces", found[0], found[1], err)  # fmt: skip
    return original(*args, **kwargs)


def hooks(hook_type) -> list[tuple[str, object, object]]:
    return [(INIT_PARALLEL_GROUPS, init_parallel_groups_hook, hook_type.AROUND)]

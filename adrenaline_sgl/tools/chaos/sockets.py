"""Listening TCP sockets of processes, from /proc (no `ss`, no psutil's connection API needing root).

`/proc/net/tcp` and `/proc/net/tcp6` of the process's network namespace list every socket with its local
address, state (0A = LISTEN) and inode; `/proc/<pid>/fd/*` links name `socket:[inode]` for the sockets a
process holds. Joining the two gives the listening sockets of a process, whatever opened them (uvicorn,
ZMQ, Mooncake's engine, torch's TCPStore).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

LISTEN = "0A"


@dataclass(frozen=True)
class Listening:
    pid: int
    host: str  # "127.0.0.1", "0.0.0.0", "::", "::1", ...
    port: int

    @property
    def on_loopback(self) -> bool:
        ip = ipaddress.ip_address(self.host)
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def decode_address(hex_addr: str) -> tuple[str, int]:
    """`0100007F:1F90` (tcp) or a 32-hex-digit IPv6 address with a port (tcp6), as the kernel prints them in
    host byte order per 32-bit word, to (host, port)."""
    addr, port = hex_addr.split(":")
    raw = bytes.fromhex(addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is little-endian
    return str(ipaddress.ip_address(words)), int(port, 16)


def parse_proc_net(text: str) -> dict[int, tuple[str, int]]:
    """inode -> (host, port) of the LISTEN sockets in one /proc/net/tcp{,6} table."""
    found = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 9 and fields[3] == LISTEN:
            found[int(fields[9])] = decode_address(fields[1])
    return found


def socket_inodes(pid: int) -> set[int]:
    """Inodes of the sockets `pid` holds (empty when it is gone or not ours to read)."""
    inodes = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[8:-1]))
    return inodes


def listening(pids: list[int]) -> list[Listening]:
    """Every LISTEN TCP socket held by one of `pids` (each socket once per process holding it)."""
    tables: dict[int, tuple[str, int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            with open(f"/proc/net/{name}") as f:
                tables.update(parse_proc_net(f.read()))
        except OSError:
            continue
    found = []
    for pid in pids:
        for inode in sorted(socket_inodes(pid)):
            if inode in tables:
                found.append(Listening(pid, *tables[inode]))
    return found

"""Servers listen only on their host: the bind-host shim (`bind_host.c`), built per launch and preloaded.

Mooncake 0.3.13 binds its handshake and TCP data listeners to 0.0.0.0 / [::] whatever host it is given (issue 18
defect 11, docs/chaos.md). The launcher compiles `bind_host.c` with the machine's C compiler into the run folder
and starts every server with it in `LD_PRELOAD` and `ADRENALINE_BIND_HOST` = the instance's host: a wildcard
bind becomes a bind to that host. The cluster YAML's `bind_host_shim: false` turns it off; without a C compiler
the launcher says so in one line and the servers start without it (Mooncake's listeners then stay wildcard).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import subprocess
from pathlib import Path

ENV_VAR = "ADRENALINE_BIND_HOST"
SOURCE = Path(__file__).with_name("bind_host.c")
LIBRARY = "libadrenaline_bind_host.so"


def build(out_dir: Path, cc: str | None = None) -> tuple[Path | None, str]:
    """Compile the shim into `out_dir`: (its path, "") or (None, why not, one line)."""
    cc = cc or os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None, "no C compiler (cc, gcc or $CC) to build the bind-host shim"
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / LIBRARY
    try:
        done = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(SOURCE), "-ldl"],
                              capture_output=True, text=True, timeout=120)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as err:
        return None, f"building the bind-host shim with {cc} failed: {err}"
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"building the bind-host shim with {cc} failed (exit {done.returncode}): {last}"
    return out, ""


def bind_address(host: str) -> str | None:
    """The address wildcard binds go to for an instance on `host` (an IP literal); None for a wildcard host (the
    user asked for every interface) or a name that does not resolve."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        try:
            ip = ipaddress.ip_address(socket.gethostbyname(host))
        except OSError:
            return None
    return None if ip.is_unspecified else str(ip)


def server_env(shim: Path, host: str, inherited_preload: str = "") -> dict[str, str]:
    """`LD_PRELOAD` and `ADRENALINE_BIND_HOST` for a server on `host` ({} when wildcard binds are what it wants)."""
    address = bind_address(host)
    if address is None:
        return {}
    return {"LD_PRELOAD": " ".join(p for p in (str(shim), inherited_preload) if p), ENV_VAR: address}

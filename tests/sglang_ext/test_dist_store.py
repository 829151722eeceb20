"""Issue 18 defect 11, torch.distributed's part: rank 0's TCPStore listens on the init method's host only.

Before: `init_process_group(init_method="tcp://127.0.0.1:P")` left a store server on `[::]:P` (every
interface). In a child process (torch.distributed is process-wide): the hook runs before a stand-in of SGLang's
`_init_parallel_groups` that calls `init_process_group` as SGLang does, then the process's listening sockets are
read from /proc."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from adrenaline_sgl.sglang_ext.dist_store import tcp_host_port

CHILD = textwrap.dedent("""
    import json, os, socket, sys, types
    import torch, torch.distributed as dist
    from adrenaline_sgl.sglang_ext import dist_store, flags
    from adrenaline_sgl.tools.chaos.sockets import listening

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    method = f"tcp://127.0.0.1:{port}"
    dist_store._is_rank0 = lambda: True  # SGLang's runtime context is not set up here
    def sglang_init(*, backend, dist_init_method, server_args, gpu_id):  # what SGLang's bootstrap does
        dist.init_process_group(backend=backend, init_method=dist_init_method, world_size=1, rank=0)
    role = sys.argv[1]
    server_args = types.SimpleNamespace(_adrenaline=flags.AdrenalineArgs(role=role))
    dist_store.init_parallel_groups_hook(sglang_init, backend="gloo", dist_init_method=method,
                                         server_args=server_args, gpu_id=0)
    t = torch.ones(3); dist.all_reduce(t)
    found = [(s.host, s.port, s.on_loopback) for s in listening([os.getpid()])]
    print(json.dumps({"port": port, "sockets": found, "sum": t.tolist()}))
""")


def _run(role: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, role], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_store_of_an_adrenaline_instance_listens_on_its_host_only():
    got = _run("prefill")
    store = [s for s in got["sockets"] if s[1] == got["port"]]
    assert store and all(address == "127.0.0.1" for address, _, _ in store), got  # was [::]
    assert all(on_loopback for _, _, on_loopback in got["sockets"]), got  # gloo's own sockets too
    assert got["sum"] == [1.0, 1.0, 1.0]  # torch.distributed works on the shared store


def test_without_adrenaline_role_the_hook_changes_nothing():
    got = _run("none")
    store = [s for s in got["sockets"] if s[1] == got["port"]]
    assert store and not store[0][2], got  # SGLang's store as stock: on every interface


def test_init_method_parsing():
    assert tcp_host_port("tcp://127.0.0.1:29500") == ("127.0.0.1", 29500)
    assert tcp_host_port("tcp://[::1]:29500") == ("::1", 29500)
    assert tcp_host_port("tcp://localhost:29500") is None  # a name: left to SGLang
    assert tcp_host_port("env://") is None and tcp_host_port(None) is None

"""Two processes move 4 MiB over Mooncake's transfer engine (TCP on loopback); the bytes match."""

import hashlib
import subprocess
import sys
import textwrap

import pytest

mooncake_engine = pytest.importorskip("mooncake.engine", reason="mooncake-transfer-engine is not installed")

NBYTES = 4 << 20

# The receiving process: registers a zeroed 4 MiB buffer, announces its session and address, and on
# request prints the sha256 of what landed in it.
_RECEIVER = textwrap.dedent(
    f"""
    import hashlib, sys
    import numpy as np
    from mooncake.engine import TransferEngine
    eng = TransferEngine()
    assert eng.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
    buf = np.zeros({NBYTES}, dtype=np.uint8)
    assert eng.register_memory(buf.ctypes.data, {NBYTES}) == 0
    print(f"127.0.0.1:{{eng.get_rpc_port()}} {{buf.ctypes.data}}", flush=True)
    sys.stdin.readline()
    print(hashlib.sha256(buf.tobytes()).hexdigest(), flush=True)
    """
)


def test_two_processes_move_4mib_over_tcp():
    import numpy as np

    receiver = subprocess.Popen(
        [sys.executable, "-c", _RECEIVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        session, remote_addr = receiver.stdout.readline().split()
        eng = mooncake_engine.TransferEngine()
        assert eng.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "") == 0
        src = np.random.default_rng(0).integers(0, 256, NBYTES, dtype=np.uint8)
        assert eng.register_memory(src.ctypes.data, NBYTES) == 0
        assert eng.transfer_sync_write(session, src.ctypes.data, int(remote_addr), NBYTES) == 0
        receiver.stdin.write("check\n")
        receiver.stdin.flush()
        remote_digest = receiver.stdout.readline().strip()
        assert remote_digest == hashlib.sha256(src.tobytes()).hexdigest()
    finally:
        receiver.kill()
        receiver.wait(timeout=30)

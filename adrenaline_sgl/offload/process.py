"""Start and stop an executor process (`python -m adrenaline_sgl.offload.server`) from Python."""

from __future__ import annotations

import json
import os
import selectors
import signal
import subprocess
import sys
import tempfile
import time

from .errors import OffloadError
from .transports.base import DEFAULT_TRANSPORT


class ExecutorProcess:
    """A running executor server; `address` is what `MooncakeChannel` connects to. Use as a context manager."""

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_slots: int, dtype: str = "float32",
                 attention: str = "auto", start_timeout_s: float = 120.0, extra_args: list[str] | None = None,
                 transport: str = DEFAULT_TRANSPORT):
        cmd = [sys.executable, "-m", "adrenaline_sgl.offload.server", "--transport", transport,
               "--num-layers", str(num_layers),
               "--num-kv-heads", str(num_kv_heads), "--head-dim", str(head_dim), "--num-slots", str(num_slots),
               "--dtype", dtype, "--attention", attention, "--parent-pid", str(os.getpid()), *(extra_args or [])]
        # NOTE: own session, so that stop() can end the whole process group and nothing outlives us.
        # stderr goes to a file, not a pipe: nobody drains a pipe while we decode, and a full one blocks.
        self._log = tempfile.TemporaryFile(mode="w+", prefix="adrenaline-executor-")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._log, text=True,
                                     start_new_session=True)
        self.address = self._read_address(start_timeout_s)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_address(self, timeout_s: float) -> str:
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if sel.select(timeout=min(1.0, max(0.0, deadline - time.monotonic()))):
                    line = self.proc.stdout.readline()
                    if line:
                        return json.loads(line)["address"]
                if self.proc.poll() is not None:
                    err = self.log_tail()
                    raise OffloadError(f"executor process exited with {self.proc.returncode} before serving: {err}")
            raise OffloadError(f"executor process did not report its address within {timeout_s} s")
        except BaseException:
            self.stop()
            raise
        finally:
            sel.close()

    def kill(self) -> None:
        """SIGKILL the executor (fault injection): no goodbye, as in a crash."""
        self._signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.proc.wait(timeout=30)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def log_tail(self, nbytes: int = 2000) -> str:
        """The end of the executor's stderr (Mooncake and Python messages)."""
        self._log.flush()
        self._log.seek(0)
        return self._log.read()[-nbytes:]

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass

    def __enter__(self) -> ExecutorProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

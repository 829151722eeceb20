"""The ZMQ part shared by the staged transports (`mooncake`, `cuda_ipc`): control RPCs and doorbells.

Client: a DEALER socket (routing id "<client>-main") for control calls and the executor's per-layer
doorbells back, polled with deadlines. Server: one ROUTER socket, a single-threaded loop that answers
`connect` / `call` / `disconnect` and runs each `layer` doorbell. How the layer bytes move (Mooncake
writes, CUDA IPC buffers) is the subclasses' business. Every reply carries the request's `seq`, so a late
answer to an abandoned request is skipped, never mistaken for the current one.

Several clients (decode instances) share one server, each with its own open step in the executor, keyed
by the client id every message carries. Fairness: the loop takes messages in arrival order (ZMQ's ROUTER
fair-queues between peers) and each is one layer or one short control op; an op that must wait (a
`begin_step` whose request the prefill scheduler has not handed over yet, `NotReadyError`) is parked and
retried between messages, so it never holds up another client's layers. Per layer the server checks only
the row count against the client's buffers; the layout was checked at `connect` (`ExecutorService`).
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import torch
import zmq
import zmq.utils.monitor

from .. import errors
from ..errors import NotConnectedError, NotReadyError, OffloadError
from ..executor import DIRECT
from ..service import ExecutorService
from ..wire import RowLayout, decode, decode_layer, encode, encode_layer
from .base import Channel

_POLL_SLICE_MS = 50
PEER_GONE_S = 1.0  # s without a connection to the executor that end a wait (ZMQ reconnects every 0.1 s)


def raise_remote(address: str, what: str, header: dict[str, Any]) -> None:
    """Re-raise an executor-side error with its class (UnknownRequestError, PoolFullError, ...)."""
    cls = getattr(errors, header.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, OffloadError)):
        cls = OffloadError
    raise cls(f"executor at {address}: {what}: {header.get('error', 'unknown error')}")


class RouterChannel(Channel):
    """Client end: control calls and layer-reply polling over one DEALER socket."""

    def __init__(self, address: str, layout: RowLayout, max_rows: int):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.address = address
        self.layout = layout
        self.max_rows = max_rows
        self._client_id = uuid.uuid4().hex
        self._ctx = zmq.Context.instance()
        self._main, self._monitor = self._socket(f"{self._client_id}-main")
        # The executor's end of the connection, watched: a dead or stopped executor closes it (the kernel does,
        # for a killed process); when ZMQ has not re-established it within PEER_GONE_S of a wait's start, the
        # wait ends then instead of at its timeout. A stalled (SIGSTOPped) executor keeps the connection open:
        # only the timeout ends that wait. An executor restarted on the address is reconnected to by ZMQ.
        self._connected = False
        self._peer_seen = False  # a connection to the executor was up once
        self._down_since = time.monotonic()
        self._wait_start = self._down_since
        self._seq = 0
        self._broken: str | None = None

    @property
    def client_id(self) -> str:
        """This channel's id at the executor (its open step, its line in the executor's stats)."""
        return self._client_id

    def call(self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor] | None, timeout_s: float):
        self._check_usable(op)
        return self._request("call", {"op": op, "args": args}, tensors, timeout_s, op)

    def _connect(self, header: dict, timeout_s: float) -> dict:
        header = {**header, "client": self._client_id, "max_rows": self.max_rows, "layout": self.layout.to_json()}
        reply, _ = self._request("connect", header, None, timeout_s, "connect")
        return reply

    def _socket(self, identity: str) -> tuple[zmq.Socket, zmq.Socket]:
        """The DEALER, connected, and its monitor (attached first: no connection event is missed)."""
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, identity.encode())
        sock.setsockopt(zmq.LINGER, 0)
        monitor = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        sock.connect(f"tcp://{self.address}")
        return sock, monitor

    def _check_usable(self, what: str) -> None:
        if self._broken is not None:
            raise OffloadError(f"executor at {self.address}: {what}: channel is broken ({self._broken})")

    def _check_rows(self, layer: int, rows: int) -> None:
        self._check_usable(f"layer {layer}")
        if rows > self.max_rows:
            raise OffloadError(f"executor at {self.address}, layer {layer}: {rows} rows exceed max_rows "
                               f"{self.max_rows} of this channel")

    def _local_error(self) -> str | None:
        """A failure noticed on this side that should end the current wait early: no connection to the executor
        for PEER_GONE_S since the later of the wait's start and the connection's loss."""
        while self._monitor.poll(0, zmq.POLLIN):
            event = zmq.utils.monitor.parse_monitor_message(self._monitor.recv_multipart())["event"]
            if event == zmq.EVENT_CONNECTED:
                self._connected = self._peer_seen = True
            elif event == zmq.EVENT_DISCONNECTED and self._connected:
                self._connected, self._down_since = False, time.monotonic()
        if self._connected or time.monotonic() - max(self._down_since, self._wait_start) < PEER_GONE_S:
            return None
        if self._peer_seen:
            return f"the executor closed its connection and is not back after {PEER_GONE_S} s (process died or stopped)"
        return f"no connection within {PEER_GONE_S} s (nothing listens there)"

    def _close_main(self) -> None:
        """Close the DEALER and its monitor (subclasses' `close`; a second call does nothing)."""
        if self._main.closed:
            return
        self._main.disable_monitor()
        self._monitor.close(linger=0)
        self._main.close(linger=0)

    def _poll(self, deadline: float) -> list[bytes] | None:
        while True:
            left_ms = (deadline - time.monotonic()) * 1e3
            if left_ms <= 0:  # one last look: a reply that came while this process was stopped still counts
                return self._main.recv_multipart() if self._main.poll(0, zmq.POLLIN) else None
            if self._main.poll(min(_POLL_SLICE_MS, max(1, int(left_ms))), zmq.POLLIN):
                return self._main.recv_multipart()
            if self._local_error() is not None:
                return None

    def _request(self, kind: str, header: dict, tensors, timeout_s: float, what: str):
        self._seq += 1
        header = {**header, "client": self._client_id, "seq": self._seq}
        self._main.send_multipart(encode(kind, header, tensors))
        self._wait_start = time.monotonic()
        deadline = self._wait_start + timeout_s
        while True:
            frames = self._poll(deadline)
            if frames is None:
                lost = self._local_error()
                self._broken = lost or f"{what} timed out"
                raise OffloadError(f"executor at {self.address}: {what}: {lost or f'no reply within {timeout_s} s'}")
            reply_kind, reply, reply_tensors = decode(frames)
            if reply.get("seq") != self._seq:
                continue  # a stale layer reply or an answer to a timed-out call
            if reply_kind == "err":
                raise_remote(self.address, what, reply)
            return reply.get("result"), reply_tensors

    def _wait_layer(self, step_id: int, layer: int, timeout_s: float) -> int:
        """The row count of the executor's `layer_done` for (step_id, layer); raises on error or timeout."""
        self._wait_start = time.monotonic()
        deadline = self._wait_start + timeout_s
        while True:
            error = self._local_error()
            if error is not None:
                self._broken = error
                raise OffloadError(f"executor at {self.address}, layer {layer}: {error}")
            frames = self._poll(deadline)
            if frames is None and self._local_error() is not None:
                continue  # reported at the top of the loop
            if frames is None:
                self._broken = f"no reply for layer {layer} within {timeout_s} s"
                raise OffloadError(f"executor at {self.address}: no reply for layer {layer} within {timeout_s} s "
                                   "(executor dead or stalled)")
            if frames[0] == b"layer_done":  # the per-layer path: a packed doorbell, no JSON
                _, got_step, got_layer, rows = decode_layer(frames)
                if (got_step, got_layer) == (step_id, layer):
                    return rows
                continue  # a late answer to an earlier, abandoned request
            kind, header, _ = decode(frames)
            if kind == "layer_err" and (header.get("step_id"), header.get("layer")) == (step_id, layer):
                raise_remote(self.address, f"layer {layer}", header)
            # anything else: a late answer to an earlier, abandoned request

    def _say_goodbye(self) -> None:
        """Tell the executor this client is gone (it rolls back an unfinished step, frees the buffers).
        NOTE: not from a broken channel: a Mooncake write of ours may still be in flight into those buffers.
        The step of a client that vanished is closed once decode has released its requests (executor)."""
        if self._broken is None:
            try:
                self._main.send_multipart(encode("disconnect", {"client": self._client_id}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass


MAX_ROWS = 65536  # the most rows a client may ask the executor to size its buffers for
_PARKED_POLL_MS = 2  # how often parked ops are retried while nothing arrives


class RouterServer:
    """Executor end: one ROUTER socket, single-threaded; subclasses move the layer bytes."""

    def __init__(self, service: ExecutorService, host: str = "127.0.0.1", port: int = 0):
        self.service = service
        self._ctx = zmq.Context.instance()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        if port == 0:
            port = self._router.bind_to_random_port(f"tcp://{host}")
        else:
            self._router.bind(f"tcp://{host}:{port}")
        self.address = f"{host}:{port}"
        self._peers: dict[str, Any] = {}
        self._parked: list[tuple[bytes, dict, dict, float]] = []  # (identity, header, tensors, give-up time)
        self.layers_served = 0

    # ---- what a transport provides ----

    def _open_peer(self, identity: bytes, header: dict, layout: RowLayout, max_rows: int) -> tuple[Any, dict]:
        """Set up a client's buffers; returns (peer state, the `connect` reply)."""
        raise NotImplementedError

    def _run_layer(self, peer: Any, client: str, step_id: int, layer: int, rows: int) -> None:
        """Read the peer's q|k|v, run `client`'s layer on the executor, deliver o|lse to the peer (before the
        doorbell)."""
        raise NotImplementedError

    def _close_peer(self, peer: Any) -> None:
        """Release what `_open_peer` set up."""

    # ---- the loop ----

    def serve(self, stop: threading.Event, poll_ms: int = 100) -> None:
        """Answer messages until `stop` is set."""
        while not stop.is_set():
            if self._router.poll(_PARKED_POLL_MS if self._parked else poll_ms, zmq.POLLIN):
                self.handle(self._router.recv_multipart())
            if self._parked:
                self._retry_parked()

    def close(self) -> None:
        for client, peer in self._peers.items():
            self._close_peer(peer)
            self.service.disconnect(client)
        self._peers.clear()
        self._router.close(linger=0)

    def handle(self, frames: list[bytes]) -> None:
        identity, frames = frames[0], frames[1:]
        try:
            if frames and frames[0] == b"layer":  # the per-layer path: a packed doorbell, no JSON
                self._layer(*decode_layer(frames))
                return
            kind, header, tensors = decode(frames)
        except (ValueError, UnicodeDecodeError) as exc:
            self._reply(identity, "err", {"error": f"malformed message: {exc}", "type": "OffloadError"})
            return
        if kind == "call":
            self._call(identity, header, tensors, None)
            return
        seq = header.get("seq")
        try:
            if kind == "connect":
                result = self._connect(identity, header)
            elif kind == "disconnect":
                client = header.get("client")
                peer = self._peers.pop(client, None)
                if peer is not None:
                    self._close_peer(peer)
                    self.service.disconnect(client)
                    self._parked = [p for p in self._parked if p[1].get("client") != client]  # nobody to answer
                return
            else:
                raise OffloadError(f"unknown message kind {kind!r}")
        except Exception as exc:  # every failure goes back to the caller, the loop keeps serving
            self._reply(identity, "err", {"seq": seq, "error": str(exc), "type": type(exc).__name__})
            return
        self._reply(identity, "ok", {"seq": seq, "result": result})

    def _call(self, identity: bytes, header: dict, tensors: dict, give_up_at: float | None) -> None:
        """One control op for the client the header names (none: the control socket, `DIRECT`); one that is
        not ready yet is parked until `give_up_at` (then its final error goes back)."""
        seq = header.get("seq")
        try:
            self._check_connected(header)
            try:
                result, out_tensors = self.service.try_control(header["op"], header.get("args", {}), tensors,
                                                               header.get("client") or DIRECT)
            except NotReadyError as wait:
                now = time.monotonic()
                give_up_at = give_up_at if give_up_at is not None else now + wait.wait_s
                if now < give_up_at:
                    self._parked.append((identity, header, tensors, give_up_at))
                    return
                raise wait.final from None
        except Exception as exc:  # every failure goes back to the caller, the loop keeps serving
            self._reply(identity, "err", {"seq": seq, "error": str(exc), "type": type(exc).__name__})
            return
        self._reply(identity, "ok", {"seq": seq, "result": result}, out_tensors)

    # ops whose layers would follow over buffers set up at `connect`: refused from a client this server never saw
    _NEEDS_CONNECTION = ("begin_step",)

    def _check_connected(self, header: dict) -> None:
        """A step from a client id without buffers here (the executor restarted after it connected) would run
        layers nobody answers until the client's timeout: refuse it at once with `NotConnectedError`, which
        tells the client to connect again (issue 18 defect 5)."""
        client = header.get("client")
        if client and header.get("op") in self._NEEDS_CONNECTION and client not in self._peers:
            raise NotConnectedError(f"{header['op']}: client {client} is not connected to this executor (it "
                                    "restarted since?); connect again")

    def _retry_parked(self) -> None:
        parked, self._parked = self._parked, []
        for identity, header, tensors, give_up_at in parked:
            self._call(identity, header, tensors, give_up_at)

    def _connect(self, identity: bytes, header: dict) -> dict:
        layout = RowLayout.from_json(header["layout"])
        max_rows = int(header["max_rows"])
        if not 1 <= max_rows <= MAX_ROWS:
            raise OffloadError(f"connect: max_rows must lie in [1, {MAX_ROWS}], got {max_rows}")
        client = header["client"]
        old = self._peers.pop(client, None)
        if old is not None:
            self._close_peer(old)
        self.service.connect(client, layout, max_rows)  # layout against the pool, once per client
        peer, reply = self._open_peer(identity, header, layout, max_rows)
        self._peers[client] = peer
        return reply

    def _layer(self, client: str, step_id: int, layer: int, rows: int) -> None:
        peer = self._peers.get(client)
        if peer is None:
            return  # a doorbell from a client that never connected: nobody to answer
        try:
            if not 0 <= rows <= peer.max_rows:  # the one transport check: the rows fit this client's buffers
                raise OffloadError(f"layer {layer}: {rows} rows exceed max_rows {peer.max_rows}")
            self._run_layer(peer, client, step_id, layer, rows)
        except Exception as exc:
            self._reply(peer.reply_to, "layer_err", {"step_id": step_id, "layer": layer, "rows": rows,
                                                     "error": str(exc), "type": type(exc).__name__})
            return
        self.layers_served += 1
        try:
            self._router.send_multipart([peer.reply_to, *encode_layer("layer_done", client, step_id, layer, rows)],
                                        zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone; it will time out on its side

    def _reply(self, identity: bytes, kind: str, header: dict, tensors=None) -> None:
        try:
            self._router.send_multipart([identity, *encode(kind, header, tensors)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone; it will time out on its side

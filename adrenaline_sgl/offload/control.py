"""One control call to an executor without a channel: a ZMQ DEALER, one request, one reply, bounded.

For callers that hold no channel (no registered buffers) or whose channel is broken: the load endpoint's
health and stats check, fault injection, and decode's retried releases after an executor failure. The
executor's router answers a `call` from any peer (`RouterServer.handle`), so nothing is set up first.
"""

from __future__ import annotations

from adrenaline_sgl.offload.wire import decode, encode


def call(address: str, op: str, args: dict | None = None, timeout_s: float = 1.0) -> tuple[bool, object]:
    """`op(args)` on the executor at "host:port": (True, result), or (False, why) on an error reply, a refused
    connection or no reply within `timeout_s` seconds. Never raises for a dead executor; never waits longer."""
    import zmq

    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    try:
        sock.connect(f"tcp://{address}")
        sock.send_multipart(encode("call", {"op": op, "args": args or {}, "seq": 1}), flags=zmq.NOBLOCK)
        if not sock.poll(int(timeout_s * 1000), zmq.POLLIN):
            return False, f"no reply within {timeout_s} s"
        kind, header, _ = decode(sock.recv_multipart())
        return (True, header.get("result")) if kind == "ok" else (False, header.get("error", kind))
    except (zmq.ZMQError, ValueError) as err:
        return False, str(err)
    finally:
        sock.close(linger=0)

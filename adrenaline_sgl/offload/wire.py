"""What crosses a process boundary: the per-layer row layout and the control-message framing.

Per layer (data plane), one contiguous byte buffer each way, N = offloaded rows of the step:
    request  q [N, Hq, D] | k [N, Hkv, D] | v [N, Hkv, D]          (model dtype)
    reply    o [N, Hq, D] (model dtype) | lse [N, Hq] (float32, natural log)

Control plane (adopt, release, begin_step, ...): ZMQ multipart frames
    [kind, json header, raw tensor bytes...]; the header lists each tensor's name, dtype and shape.
Per-layer doorbells (`layer`, `layer_done`): [kind, 16 packed bytes (step id, layer, rows) + client id],
no JSON on the per-layer path. No pickle: a peer can only send tensors, JSON and those integers.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "int64": torch.int64,
           "int32": torch.int32, "uint8": torch.uint8, "bool": torch.bool}


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype}")
    return name


def dtype_from_name(name: str) -> torch.dtype:
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


@dataclass(frozen=True)
class RowLayout:
    """Shapes of one offloaded row; both sides must agree (checked at connect)."""

    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype

    def __post_init__(self):
        for name in ("num_q_heads", "num_kv_heads", "head_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(f"num_q_heads ({self.num_q_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        dtype_name(self.dtype)

    @property
    def elem_bytes(self) -> int:
        return torch.empty(0, dtype=self.dtype).element_size()

    def request_bytes(self, rows: int) -> int:
        return rows * (self.num_q_heads + 2 * self.num_kv_heads) * self.head_dim * self.elem_bytes

    def reply_bytes(self, rows: int) -> int:
        return rows * self.num_q_heads * (self.head_dim * self.elem_bytes + 4)

    def rows_match(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
        """q `[N, Hq, D]`, k, v `[N, Hkv, D]` in this dtype (for transports that pass tensors, not bytes)."""
        n = q.shape[0]
        kv_shape = (n, self.num_kv_heads, self.head_dim)
        return (tuple(q.shape) == (n, self.num_q_heads, self.head_dim) and tuple(k.shape) == kv_shape
                and tuple(v.shape) == kv_shape and q.dtype == k.dtype == v.dtype == self.dtype)

    def to_json(self) -> dict[str, Any]:
        return {"num_q_heads": self.num_q_heads, "num_kv_heads": self.num_kv_heads, "head_dim": self.head_dim,
                "dtype": dtype_name(self.dtype)}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RowLayout:
        return cls(int(d["num_q_heads"]), int(d["num_kv_heads"]), int(d["head_dim"]), dtype_from_name(d["dtype"]))

    # ---- packing into / out of a flat uint8 buffer ----

    def _views(self, buf: torch.Tensor, rows: int, shapes: list[tuple[tuple[int, ...], torch.dtype]]):
        return _typed_views(buf, shapes)

    def _request_shapes(self, rows: int):
        d, dt = self.head_dim, self.dtype
        return [((rows, self.num_q_heads, d), dt), ((rows, self.num_kv_heads, d), dt),
                ((rows, self.num_kv_heads, d), dt)]

    def _reply_shapes(self, rows: int):
        return [((rows, self.num_q_heads, self.head_dim), self.dtype), ((rows, self.num_q_heads), torch.float32)]

    def pack_request(self, buf: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> int:
        """Copy q, k, v into `buf` (uint8); returns the byte count."""
        rows = q.shape[0]
        for view, src in zip(self._views(buf, rows, self._request_shapes(rows)), (q, k, v)):
            view.copy_(src)
        return self.request_bytes(rows)

    def unpack_request(self, buf: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Views (no copy) of q `[N, Hq, D]`, k, v `[N, Hkv, D]` inside `buf`."""
        q, k, v = self._views(buf, rows, self._request_shapes(rows))
        return q, k, v

    def pack_reply(self, buf: torch.Tensor, o: torch.Tensor, lse: torch.Tensor) -> int:
        rows = o.shape[0]
        for view, src in zip(self._views(buf, rows, self._reply_shapes(rows)), (o, lse)):
            view.copy_(src)
        return self.reply_bytes(rows)

    def unpack_reply(self, buf: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of o `[N, Hq, D]` and lse `[N, Hq]` (the staging buffer is reused by the next layer)."""
        o, lse = self._views(buf, rows, self._reply_shapes(rows))
        return o.clone(), lse.clone()

    def request_staging(self, buf: torch.Tensor) -> Staging:
        """`buf` (uint8, at least `request_bytes(max rows)`) as q|k|v rows, views built once per row count."""
        return Staging(buf, self._request_shapes, self.request_bytes)

    def reply_staging(self, buf: torch.Tensor) -> Staging:
        """`buf` (uint8, at least `reply_bytes(max rows)`) as o|lse rows, views built once per row count."""
        return Staging(buf, self._reply_shapes, self.reply_bytes)


def _typed_views(buf: torch.Tensor, shapes: list[tuple[tuple[int, ...], torch.dtype]]) -> list[torch.Tensor]:
    out, offset = [], 0
    for shape, dtype in shapes:
        nbytes = torch.Size(shape).numel() * dtype.itemsize
        out.append(buf[offset : offset + nbytes].view(dtype).view(shape))
        offset += nbytes
    return out


class Staging:
    """One registered staging buffer seen as a layer's rows (q|k|v or o|lse) for any row count.

    NOTE: the typed views of a row count are built on its first use and kept, so the per-layer path only
    copies: building three views took about 20 us per layer and direction, more than the copies themselves.
    """

    def __init__(self, buf: torch.Tensor, shapes: Callable[[int], list], nbytes: Callable[[int], int]):
        self.buf = buf
        self._shapes = shapes
        self._nbytes = nbytes
        self._views: dict[int, tuple[tuple[torch.Tensor, ...], int]] = {}

    def views(self, rows: int) -> tuple[torch.Tensor, ...]:
        """Views (no copy) of the row count's tensors inside the buffer."""
        return self._entry(rows)[0]

    def nbytes(self, rows: int) -> int:
        return self._entry(rows)[1]

    def pack(self, *tensors: torch.Tensor) -> int:
        """Copy the tensors (rows first) into the buffer; returns the byte count."""
        views, nbytes = self._entry(tensors[0].shape[0])
        for view, src in zip(views, tensors):
            view.copy_(src)
        return nbytes

    def copy_out(self, rows: int) -> tuple[torch.Tensor, ...]:
        """Copies of the row count's tensors (the buffer is reused by the next layer)."""
        return tuple(view.clone() for view in self.views(rows))

    def _entry(self, rows: int) -> tuple[tuple[torch.Tensor, ...], int]:
        entry = self._views.get(rows)
        if entry is None:
            entry = self._views[rows] = (tuple(_typed_views(self.buf, self._shapes(rows))), self._nbytes(rows))
        return entry


_LAYER = struct.Struct("<qii")  # step id, layer, rows


def encode_layer(kind: str, client: str, step_id: int, layer: int, rows: int) -> list[bytes]:
    """Frames of a per-layer doorbell (`layer` to the executor, `layer_done` back): no JSON on this path."""
    return [kind.encode(), _LAYER.pack(step_id, layer, rows) + client.encode()]


def decode_layer(frames: list[bytes]) -> tuple[str, int, int, int]:
    """(client, step id, layer, rows) of a doorbell's frames after the kind; ValueError if malformed."""
    if len(frames) != 2 or len(frames[1]) < _LAYER.size:
        raise ValueError(f"a layer doorbell is 2 frames with at least {_LAYER.size} bytes of header")
    step_id, layer, rows = _LAYER.unpack_from(frames[1])
    return bytes(frames[1][_LAYER.size :]).decode(), step_id, layer, rows


def encode(kind: str, header: dict[str, Any], tensors: dict[str, torch.Tensor] | None = None) -> list[bytes]:
    """Frames for one control message: [kind, json header, tensor bytes...]."""
    tensors = tensors or {}
    meta = [{"name": n, "dtype": dtype_name(t.dtype), "shape": list(t.shape)} for n, t in tensors.items()]
    frames = [kind.encode(), json.dumps({"header": header, "tensors": meta}).encode()]
    for t in tensors.values():
        frames.append(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return frames


def decode(frames: list[bytes]) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """Inverse of `encode`; raises ValueError on a malformed message."""
    if len(frames) < 2:
        raise ValueError(f"a message needs at least 2 frames (kind, header), got {len(frames)}")
    kind = bytes(frames[0]).decode()
    body = json.loads(bytes(frames[1]))
    meta = body.get("tensors", [])
    if len(meta) != len(frames) - 2:
        raise ValueError(f"message {kind!r} lists {len(meta)} tensors but carries {len(frames) - 2}")
    tensors = {}
    for m, raw in zip(meta, frames[2:]):
        dtype = dtype_from_name(m["dtype"])
        flat = torch.frombuffer(bytearray(raw), dtype=torch.uint8) if len(raw) else torch.empty(0, dtype=torch.uint8)
        tensors[m["name"]] = flat.view(dtype).view(m["shape"])
    return kind, body["header"], tensors

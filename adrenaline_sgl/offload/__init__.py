"""Attention offload runtime: executor (prefill side), client (decode side), transports.

Public API (see docs/design.md for how the pieces fit):
    KVPool, SlotAllocator            SGLang-layout KV pools (shared with prefill, or standalone)
    AttentionExecutor, ExecutorStats adopt / begin_step / run_layer / release, one open step per decode client;
                                     capacity and time for the scheduler
    ExecutorService                  the executor's side of the protocol, for any transport and any number of
                                     clients (static checks once at connect)
    OffloadClient, ClientConfig      begin_step / submit / wait, timeouts raising OffloadError
    create_channel, TRANSPORTS       `inproc` | `mooncake` by name
    OffloadError and subclasses      PoolFullError, UnknownRequestError, SlotError, NotReadyError
Heavier pieces import on demand: `.transports.mooncake` (mooncake), `.process`. The decode harness and
the check and bench CLIs are in `adrenaline_sgl.tools`.
"""

from .client import ClientConfig, OffloadClient
from .errors import OffloadError, PoolFullError, SlotError, UnknownRequestError
from .executor import AttentionExecutor, ExecutorStats, StepPlan
from .pool import KVPool, SlotAllocator
from .service import ExecutorService
from .transports.base import TRANSPORTS, Channel, create_channel
from .wire import RowLayout

__all__ = [
    "AttentionExecutor",
    "Channel",
    "ClientConfig",
    "ExecutorService",
    "ExecutorStats",
    "KVPool",
    "OffloadClient",
    "OffloadError",
    "PoolFullError",
    "RowLayout",
    "SlotAllocator",
    "SlotError",
    "StepPlan",
    "TRANSPORTS",
    "UnknownRequestError",
    "create_channel",
]

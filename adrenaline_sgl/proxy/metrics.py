"""The proxy's Prometheus metrics, on a private registry (several proxies may live in one test process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from adrenaline_sgl.proxy.load import Pulled

CONTENT_TYPE = CONTENT_TYPE_LATEST


class ProxyMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("adrenaline_proxy_requests", "Requests routed, by offload decision and reason.",
                                ["offloaded", "reason"], registry=r)  # fmt: skip
        self.errors = Counter("adrenaline_proxy_errors", "Requests answered with an error, by kind.", ["kind"],
                              registry=r)  # fmt: skip
        self.offloaded_share = Gauge("adrenaline_proxy_offloaded_share",
                                     "Offloaded requests / routed requests since start.", registry=r)  # fmt: skip
        self.latency_s = Histogram("adrenaline_proxy_request_latency_seconds",
                                   "Time from arrival to the end of the decode response.", registry=r,
                                   buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))  # fmt: skip
        self.instance_up = Gauge("adrenaline_instance_up", "1 when the last load pull succeeded.",
                                 ["instance"], registry=r)  # fmt: skip
        self.executor_kv_bytes = Gauge("adrenaline_executor_kv_bytes",
                                       "KV bytes a prefill's executor holds for offloaded requests.",
                                       ["instance"], registry=r)  # fmt: skip
        self.executor_kv_tokens = Gauge("adrenaline_executor_kv_tokens",
                                        "KV tokens a prefill's executor holds for offloaded requests.",
                                        ["instance"], registry=r)  # fmt: skip
        self.offload_rtt_ms = Gauge("adrenaline_offload_round_trip_ms",
                                    "Decode's mean per-layer round trip to the executor (last window).",
                                    ["instance"], registry=r)  # fmt: skip
        self._routed = 0
        self._offloaded = 0

    def count_decision(self, offloaded: bool, reason: str) -> None:
        self.requests.labels(offloaded=str(offloaded).lower(), reason=reason).inc()
        self._routed += 1
        self._offloaded += int(offloaded)
        self.offloaded_share.set(self._offloaded / self._routed)

    def refresh(self, pulled: dict[str, Pulled]) -> None:
        for url, item in pulled.items():
            self.instance_up.labels(instance=url).set(0 if item.report is None else 1)
            if item.report is None:
                continue
            if item.report.role == "prefill":
                self.executor_kv_bytes.labels(instance=url).set(item.report.executor_kv_bytes)
                self.executor_kv_tokens.labels(instance=url).set(item.report.executor_kv_tokens)
            if item.report.role == "decode":
                self.offload_rtt_ms.labels(instance=url).set(item.report.offload_rtt_ms)

    def render(self) -> bytes:
        return generate_latest(self.registry)

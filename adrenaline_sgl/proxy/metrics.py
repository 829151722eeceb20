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
        self.outcomes = Counter("adrenaline_proxy_outcomes", "Requests by offload decision and how they ended: ok, "
                                "error (an instance's error, an abort, a broken stream), bad_request, client_gone.",
                                ["offloaded", "outcome"], registry=r)  # fmt: skip
        self.offload_failures = Counter("adrenaline_proxy_offload_failures",
                                        "Offloaded requests that ended in an error, by prefill instance (executor).",
                                        ["instance"], registry=r)  # fmt: skip
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
        self.offload_rtt_p99_ms = Gauge("adrenaline_offload_round_trip_p99_ms",
                                        "Decode's 99th percentile per-layer round trip to the executor (last window).",
                                        ["instance"], registry=r)  # fmt: skip
        self.decode_offloaded = Gauge("adrenaline_decode_offloaded_requests",
                                      "Offloaded requests running on a decode instance (its own count).",
                                      ["instance"], registry=r)  # fmt: skip
        self.decode_offload_failed = Gauge("adrenaline_decode_offload_failed_requests",
                                           "Offloaded requests on a decode instance whose executor failed.",
                                           ["instance"], registry=r)  # fmt: skip
        self.offload_stats_ok = Gauge("adrenaline_decode_offload_stats_ok",
                                      "1 when decode's scheduler answered with its offload statistics in time; "
                                      "0: the decode offload gauges read 0 (unknown).", ["instance"],
                                      registry=r)  # fmt: skip
        self._routed = 0
        self._offloaded = 0

    def count_decision(self, offloaded: bool, reason: str) -> None:
        self.requests.labels(offloaded=str(offloaded).lower(), reason=reason).inc()
        self._routed += 1
        self._offloaded += int(offloaded)
        self.offloaded_share.set(self._offloaded / self._routed)

    def count_outcome(self, offloaded: bool, outcome: str) -> None:
        self.outcomes.labels(offloaded=str(offloaded).lower(), outcome=outcome).inc()

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
                self.offload_rtt_p99_ms.labels(instance=url).set(item.report.offload_rtt_p99_ms)
                self.decode_offloaded.labels(instance=url).set(item.report.offloaded_reqs)
                self.decode_offload_failed.labels(instance=url).set(item.report.offload_failed_reqs)
                self.offload_stats_ok.labels(instance=url).set(int(item.report.offload_stats_ok))

    def render(self) -> bytes:
        return generate_latest(self.registry)

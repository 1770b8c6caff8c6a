"""Prometheus metrics of the HTTP front, through ``prometheus_client``.

Request counts and durations and the open live connections are kept as the app runs;
per-stream records and bytes, subscription lag and pending counts, and the streaming
services' lag and last error are read from the file at each scrape (one snapshot each),
so they are right whichever process wrote them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..records import StreamInfo
from ..subscriptions import SubscriptionInfo


class Metrics:
    """One app's metrics registry (its own, so several apps in one process never collide)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("sqlstream_http_requests", "HTTP requests answered", ["method", "status"],
                                registry=self.registry)
        self.duration = Histogram("sqlstream_http_request_seconds", "Time to answer a request (live reads: "
                                  "until they end)", ["method"], registry=self.registry)
        self.live_connections = Gauge("sqlstream_http_live_connections", "Open long-poll and SSE responses",
                                      registry=self.registry)
        self.live_direct = Counter("sqlstream_http_live_direct", "Live reads answered straight from an append "
                                   "made over HTTP in this process (the others read the file after a wake-up)",
                                   registry=self.registry)
        self.catch_up_open = Gauge("sqlstream_http_catch_up_streaming", "Catch-up responses being sent in "
                                   "pieces now", registry=self.registry)
        self.catch_up_abandoned = Counter("sqlstream_http_catch_up_abandoned", "Catch-up responses ended "
                                          "without their last piece (records of their range removed meanwhile, "
                                          "or a damaged record found): the client retries", registry=self.registry)

    def request(self, method: str, status: int, seconds: float) -> None:
        self.requests.labels(method, str(status)).inc()
        self.duration.labels(method).observe(seconds)

    def live(self, count: int) -> None:
        self.live_connections.set(count)

    def render(self, streams: Sequence[StreamInfo], subscriptions: Sequence[SubscriptionInfo],
               services: Sequence[tuple[Any, ...]], live: int) -> tuple[bytes, str]:
        """The exposition text (and its content type): the app's metrics plus the file's state now."""
        self.live_connections.set(live)
        snapshot = CollectorRegistry(auto_describe=True)
        records = Gauge("sqlstream_stream_records", "Records retained in a stream", ["stream"], registry=snapshot)
        size = Gauge("sqlstream_stream_bytes", "Payload bytes retained in a stream", ["stream"], registry=snapshot)
        nxt = Gauge("sqlstream_stream_next_offset", "A stream's next offset", ["stream"], registry=snapshot)
        for info in streams:
            records.labels(info.name).set(info.count)
            size.labels(info.name).set(info.byte_length - info.first_position)
            nxt.labels(info.name).set(info.next_offset)
        lag = Gauge("sqlstream_subscription_lag", "Records not yet delivered", ["subscription", "stream"],
                    registry=snapshot)
        pending = Gauge("sqlstream_subscription_pending", "Delivered, unacked records", ["subscription", "stream"],
                        registry=snapshot)
        for sub in subscriptions:
            lag.labels(sub.name, sub.stream).set(sub.lag)
            pending.labels(sub.name, sub.stream).set(sub.pending)
        svc_lag = Gauge("sqlstream_service_lag", "Commits a streaming service or relay has not handled yet",
                        ["service", "kind"], registry=snapshot)
        svc_err = Gauge("sqlstream_service_error", "1 while a streaming service or relay reports an error",
                        ["service", "kind"], registry=snapshot)
        for service, kind, behind, error in services:
            svc_lag.labels(service, kind).set(behind or 0)
            svc_err.labels(service, kind).set(1 if error else 0)
        return generate_latest(self.registry) + generate_latest(snapshot), CONTENT_TYPE_LATEST

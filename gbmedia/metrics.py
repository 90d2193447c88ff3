"""Prometheus metrics of one node.

Each node (and each test app) has its own registry, so two apps in one process never
collide over metric names and ``/metrics`` shows exactly this node's figures.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from gbmedia import __version__

CONTENT_TYPE = CONTENT_TYPE_LATEST


# Seconds: from a tenth of a millisecond (a loop that keeps up) to seconds (one that stalls).
LAG_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


class Metrics:
    """Every metric a node updates as things happen (others are read at scrape time: :meth:`watch`).

    Labels stay bounded: methods, routes, codes, media kinds; never room ids or identities,
    which would grow a series per meeting in Prometheus.
    """

    def __init__(self, node_id: str, region: str) -> None:
        self.registry = CollectorRegistry()
        # process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ... (Linux /proc)
        ProcessCollector(registry=self.registry)
        self.loop_lag = Histogram(
            "gbmedia_event_loop_lag_seconds",
            "How late the event loop ran a timer: time every coroutine of the node waits behind CPU work",
            registry=self.registry,
            buckets=LAG_BUCKETS,
        )
        self.loop_lag_last = Gauge(
            "gbmedia_event_loop_lag_last_seconds",
            "The event loop's lag at its latest probe",
            registry=self.registry,
        )
        self.join_latency = Histogram(
            "gbmedia_join_duration_seconds",
            "From a signaling join arriving to its joined answer sent (token check, room, placement)",
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.signaling_errors = Counter(
            "gbmedia_signaling_errors_total",
            "Error messages sent on signaling sockets, by error code",
            ["code"],
            registry=self.registry,
        )
        self.media_connections = Counter(
            "gbmedia_media_connections_total",
            "Media connections (a participant's publisher or subscriber) that connected, by the path the node's "
            "ICE agent nominated: host, srflx, prflx or relay (through TURN)",
            ["connection", "path"],
            registry=self.registry,
        )
        self.client_paths = Counter(
            "gbmedia_client_media_paths_total",
            "Media paths browsers reported (media_path), by connection and path: host, srflx, prflx, "
            "relay_udp, relay_tcp, relay_tls (how the client reaches its TURN server)",
            ["connection", "path"],
            registry=self.registry,
        )
        self.chat_delivery = Histogram(
            "gbmedia_chat_delivery_seconds",
            "From a chat message's commit to its push to a recipient's socket on this node",
            registry=self.registry,
            buckets=LATENCY_BUCKETS,
        )
        self.media_loss = Histogram(
            "gbmedia_media_loss_ratio",
            "Share of a published track's packets lost on the way in, one observation per track and stats interval",
            ["kind"],
            registry=self.registry,
            buckets=LOSS_BUCKETS,
        )
        self.media_jitter = Histogram(
            "gbmedia_media_jitter_seconds",
            "Interarrival jitter of a published track, one observation per track and stats interval",
            ["kind"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5),
        )
        self.media_rtt = Histogram(
            "gbmedia_media_rtt_seconds",
            "Round-trip time to a participant, one observation per participant and stats interval",
            registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2),
        )
        self.http_requests = Counter(
            "gbmedia_http_requests_total",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "gbmedia_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.http_errors = Counter(
            "gbmedia_http_errors_total",
            "HTTP error responses by error code",
            ["code"],
            registry=self.registry,
        )
        self.build_info = Gauge(
            "gbmedia_build_info",
            "Always 1; labels say what runs where",
            ["version", "node_id", "region"],
            registry=self.registry,
        )
        self.build_info.labels(__version__, node_id, region).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def watch(self, read: Callable[[], list[Sample]]) -> None:
        """Export what ``read`` returns at every scrape (see :class:`Sample`)."""
        self.registry.register(_SampleCollector(read))


@dataclass(frozen=True)
class Sample:
    """One value read at scrape time: a gauge, or a counter (monotonic, ``_total``).

    ``labels`` (name, value pairs) make it one series of a labelled metric: samples
    that share a ``name`` form one metric family, so they must share help text, kind
    and label names (the first sample of a name sets them; a sample that differs is
    a programming error and fails the scrape loudly).
    """

    name: str
    help: str
    value: float
    counter: bool = False
    labels: tuple[tuple[str, str], ...] = ()


class _SampleCollector:
    """Reads live state when scraped instead of updating metrics on every event.

    The media plane counts packets with plain integer increments; a Prometheus
    counter per packet would take a lock on the forwarding hot path.
    """

    def __init__(self, read: Callable[[], list[Sample]]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        families: dict[str, tuple[Sample, CounterMetricFamily | GaugeMetricFamily]] = {}
        for sample in self._read():
            names = [name for name, _ in sample.labels]
            known = families.get(sample.name)
            if known is None:
                kind = CounterMetricFamily if sample.counter else GaugeMetricFamily
                name = sample.name.removesuffix("_total") if sample.counter else sample.name
                if not sample.labels:
                    families[sample.name] = (sample, kind(name, sample.help, value=sample.value))
                    continue
                known = families[sample.name] = (sample, kind(name, sample.help, labels=names))
            first, family = known
            if [name for name, _ in first.labels] != names or not names or first.counter != sample.counter:
                raise ValueError(f"metric {sample.name}: every sample needs the same kind and label names")
            family.add_metric([value for _, value in sample.labels], sample.value)
        for _, family in families.values():
            yield family

    def describe(self) -> Iterator[Metric]:
        return iter(())

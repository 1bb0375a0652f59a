"""Prometheus metrics of one model server, in a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["ServerMetrics"]

_ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


class ServerMetrics:
    """Request count, latency, batch sizes, errors and model loads of one server.

    Each server has its own :class:`prometheus_client.CollectorRegistry`, so
    two servers in one process (tests, a benchmark) never mix their counts.
    Requests for a model the server does not have are counted under
    ``model=""``: a client's typos must not create label values without bound.

    Examples:
        >>> m = ServerMetrics()
        >>> m.requests.labels(model="mlp", code="200").inc()
        >>> m.batch_rows.labels(model="mlp").observe(3)
        >>> text = m.scrape().decode()
        >>> 'streamml_serve_requests_total{code="200",model="mlp"} 1.0' in text
        True
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "streamml_serve_requests",
            "Inference requests answered, by model and HTTP status.",
            ["model", "code"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "streamml_serve_request_seconds",
            "Time from an inference request's arrival to its answer.",
            ["model"],
            registry=self.registry,
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
        )
        self.batch_rows = Histogram(
            "streamml_serve_batch_rows",
            "Rows in each model call (requests that arrived together share one call).",
            ["model"],
            registry=self.registry,
            buckets=_ROW_BUCKETS,
        )
        self.batch_requests = Histogram(
            "streamml_serve_batch_requests",
            "Requests served by each model call.",
            ["model"],
            registry=self.registry,
            buckets=_ROW_BUCKETS,
        )
        self.errors = Counter(
            "streamml_serve_errors",
            "Requests refused or failed, by model and reason.",
            ["model", "reason"],
            registry=self.registry,
        )
        self.loads = Counter(
            "streamml_serve_model_loads",
            "Model versions loaded live, by outcome (ok, or failed and the old one kept).",
            ["model", "outcome"],
            registry=self.registry,
        )

    def scrape(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)

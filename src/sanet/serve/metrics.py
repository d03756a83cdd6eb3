"""``GET /metrics``: the server's state in the Prometheus text format (prometheus-client).

Each app has its own registry (two apps in one process do not mix their counts). Counted as
requests are answered: requests by route and status, their latency, refusals of uploads by
reason, each answered image's unsure share and mean confidence. Read at each scrape (so never
stale): the queue, the seconds per forward window, whether the model is loaded, and the drift
state (``drift.py``). docs/deploy.md lists every series, with a scrape config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from sanet.serve.drift import RequestStats

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # what every Prometheus server reads
#: Routes counted by name; any other path is counted as "other" (no label per unknown path).
ROUTES = ("/", "/v1/segment", "/v1/model", "/healthz", "/metrics", "/openapi.json", "/favicon.ico")
#: Why an upload to ``/v1/segment`` was refused before inference (``sanet_rejected_uploads``).
REJECT_REASONS = (
    "too_large",  # 413: the body is over --max-upload-mb
    "too_many_pixels",  # 413: the image is over --max-megapixels
    "too_slow",  # 413: this image alone would not finish within --timeout
    "not_multipart",  # 415
    "not_an_image",  # 415
    "damaged_image",  # 415
    "malformed",  # 400: a broken multipart body
    "no_image_field",  # 422
    "empty_file",  # 422
    "no_risk_threshold",  # 422: unsure=true without a risk threshold
    "upload_timeout",  # 408: the upload did not finish within --upload-timeout
    "busy",  # 503: the queue is full, or the work ahead would not leave time
    "loading",  # 503: the model is still loading
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
SHARE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1)


def route_of(path: str) -> str:
    """The ``route`` label of a request path."""
    if path in ROUTES:
        return path
    return "/static" if path.startswith("/static/") else "other"


class ServerMetrics:
    """The counters and histograms of one app, and the gauges read from ``state()``.

    Args:
        state: called at each scrape; returns ``{"loaded", "queue": {running, waiting,
            capacity}, "seconds_per_window", "drift"}`` (``drift``: ``DriftMonitor.state()``
            or ``None`` while the model loads).
    """

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "sanet_requests", "HTTP requests answered", ["route", "status"], registry=r
        )
        self.latency = Histogram(
            "sanet_request_duration_seconds",
            "Time from the request's arrival to the end of its answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.rejected = Counter(
            "sanet_rejected_uploads",
            "Uploads to /v1/segment refused before inference",
            ["reason"],
            registry=r,
        )
        for reason in REJECT_REASONS:  # every series exists from the start (rate() sees 0)
            self.rejected.labels(reason)
        self.unsure = Histogram(
            "sanet_unsure_share",
            "Share of each answered image's pixels below the risk threshold",
            buckets=SHARE_BUCKETS,
            registry=r,
        )
        self.confidence = Histogram(
            "sanet_mean_confidence",
            "Mean calibrated confidence of each answered image",
            buckets=SHARE_BUCKETS,
            registry=r,
        )
        r.register(_StateCollector(state))

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        route = route_of(path)
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def reject(self, reason: str) -> None:
        self.rejected.labels(reason).inc()

    def observe_answer(self, stats: RequestStats | None) -> None:
        """A calibrated model's answered image (nothing for an uncalibrated one)."""
        if stats is None:
            return
        self.confidence.observe(stats.mean_confidence)
        if stats.unsure_share is not None:
            self.unsure.observe(stats.unsure_share)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class _StateCollector(Collector):
    """Gauges of the queue, the model and the drift, read at scrape time."""

    def __init__(self, state: Callable[[], dict[str, Any]]) -> None:
        self.state = state

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.state()
        yield _gauge("sanet_model_loaded", "1 once the model is loaded and checked", s["loaded"])
        queue = GaugeMetricFamily(
            "sanet_queue_depth", "Requests admitted and not finished", labels=["state"]
        )
        for name in ("running", "waiting"):
            queue.add_metric([name], s["queue"][name])
        yield queue
        yield _gauge(
            "sanet_queue_capacity", "--max-concurrent + --max-queue", s["queue"]["capacity"]
        )
        if s["seconds_per_window"] is not None:
            yield _gauge(
                "sanet_seconds_per_window",
                "Moving average of inference seconds per forward window (admission)",
                s["seconds_per_window"],
            )
        if s["drift"] is not None:
            yield from _drift_gauges(s["drift"])


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


DRIFT_STATES = ("no reference", "collecting", "in distribution", "drifting")


def _drift_gauges(drift: dict[str, Any]) -> Iterator[GaugeMetricFamily]:
    status = GaugeMetricFamily(
        "sanet_drift_status", "1 for the drift state the server is in", labels=["status"]
    )
    for name in DRIFT_STATES:
        status.add_metric([name], float(drift["status"] == name))
    yield status
    yield _gauge("sanet_drift_window_requests", "Requests in the drift window", drift["requests"])
    if drift["threshold"] is not None:
        yield _gauge(
            "sanet_drift_threshold",
            "Critical KS distance: drifting at or above it",
            drift["threshold"],
        )
    if drift["statistic"] is not None:
        yield _gauge(
            "sanet_drift_statistic",
            "Largest KS distance between the window and the calibration images",
            drift["statistic"],
        )
    series = {
        "distance": "KS distance of the window from the calibration images",
        "window_mean": "Mean over the window",
        "reference_mean": "Mean over the calibration images",
    }
    for key, doc in series.items():
        family = GaugeMetricFamily(f"sanet_drift_feature_{key}", doc, labels=["feature"])
        for feature, row in drift["features"].items():
            family.add_metric([feature], row[key])
        yield family

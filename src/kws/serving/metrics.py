"""Prometheus metrics of one service process, in a private :class:`CollectorRegistry`.

A private registry (not the global default) means several apps in one process (tests)
never collide, and ``/metrics`` shows exactly the service's own series.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "kws_http_requests", "HTTP requests by endpoint, method and status",
            ["endpoint", "method", "status"], registry=self.registry)
        self.latency = Histogram(
            "kws_http_request_duration_seconds", "Request latency by endpoint (seconds)",
            ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.predictions = Counter(
            "kws_predictions", "Answered predictions by keyword", ["label"], registry=self.registry)
        self.detections = Counter(
            "kws_detections", "Keyword detections in long audio by keyword", ["label"], registry=self.registry)
        self.errors = Counter(
            "kws_errors", "Error answers by error code", ["code"], registry=self.registry)
        self.audio_seconds = Histogram(
            "kws_audio_duration_seconds", "Duration of decoded uploads (seconds)",
            buckets=(0.5, 1, 1.5, 2, 5, 10, 30, 60, 120), registry=self.registry)
        self.inference = Histogram(
            "kws_inference_duration_seconds", "Features + model time per request (seconds)",
            buckets=LATENCY_BUCKETS, registry=self.registry)
        self.model_loaded = Gauge(
            "kws_model_loaded", "1 when the model bundle is loaded", registry=self.registry)
        self.model_info = Gauge(
            "kws_model_info", "The loaded model (value 1)", ["name", "version", "runtime"], registry=self.registry)

        self.in_flight = Gauge(
            "kws_http_requests_in_flight", "Requests being handled now", registry=self.registry)
        self.reloads = Counter(
            "kws_model_reloads", "New model bundles swapped in while serving", registry=self.registry)
        self.reload_rejected = Counter(
            "kws_model_reload_rejected", "New model bundles refused while serving (did not load with the "
            "configured runtime or failed the warm-up answer check); each bundle counts once",
            registry=self.registry)

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, method, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""Prometheus metrics of one server: latency histograms, and engine gauges read at scrape time."""

import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class EngineCollector:
    """Reads the engine's counters when Prometheus scrapes, so nothing is updated per step."""

    def __init__(self, engine, model_name: str):
        self.engine, self.model_name = engine, model_name

    def collect(self):
        s = self.engine.stats()
        label = ["model_name"]
        gauges = {
            "qthink:num_requests_running": ("Requests in the running batch", s["num_running"]),
            "qthink:num_requests_waiting": ("Requests waiting to run", s["num_waiting"]),
            "qthink:kv_cache_usage_perc": ("Fraction of KV cache blocks in use", s["kv_usage"]),
            "qthink:prefix_cache_hit_rate": (
                "Prefix cache hits per full-block lookup",
                s["prefix_cache_hits"] / max(1, s["prefix_cache_queries"]),
            ),
        }
        for name, (doc, value) in gauges.items():
            g = GaugeMetricFamily(name, doc, labels=label)
            g.add_metric([self.model_name], value)
            yield g
        counters = {
            "qthink:prompt_tokens": ("Prompt tokens received", s["prompt_tokens_total"]),
            "qthink:generation_tokens": ("Tokens generated", s["generation_tokens_total"]),
            "qthink:num_preemptions": ("Sequences preempted for KV space", s["num_preemptions"]),
        }
        for name, (doc, value) in counters.items():
            c = CounterMetricFamily(name, doc, labels=label)
            c.add_metric([self.model_name], value)
            yield c


class Metrics:
    def __init__(self, engine, model_name: str):
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine, model_name))
        self.model_name = model_name
        self.ttft = self._histogram("qthink:time_to_first_token_seconds", "Time to first token")
        self.itl = self._histogram("qthink:inter_token_latency_seconds", "Time between output tokens")
        self.e2e = self._histogram("qthink:e2e_request_latency_seconds", "Request latency, end to end")

    def _histogram(self, name: str, doc: str):
        return Histogram(name, doc, ["model_name"], registry=self.registry, buckets=LATENCY_BUCKETS).labels(
            self.model_name
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestTimer:
    """One request's latencies, from submission: to its first token, between tokens (per
    engine step, which adds one token to each running sequence) and to its end."""

    def __init__(self, metrics: Metrics):
        self.metrics = metrics
        self.start = time.monotonic()
        self.tokens = 0
        self.last_token_at: float | None = None

    def saw(self, out) -> None:
        now = time.monotonic()
        tokens = sum(len(c.token_ids) for c in out.outputs)
        if tokens > self.tokens:
            if self.last_token_at is None:
                self.metrics.ttft.observe(now - self.start)
            else:
                self.metrics.itl.observe(now - self.last_token_at)
            self.tokens, self.last_token_at = tokens, now
        if out.finished:
            self.metrics.e2e.observe(now - self.start)

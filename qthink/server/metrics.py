"""Prometheus metrics of one server, under qthink's names and vLLM's (so dashboards, autoscalers and
inference gateways built for vLLM read them unchanged), plus thinking metrics of qthink's own."""

import time

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

PREFIXES = ("qthink:", "vllm:")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)
FINISH_REASONS = ("stop", "length", "abort", "error")


class EngineCollector:
    """Reads the engine's counters when Prometheus scrapes, so nothing is updated per step."""

    def __init__(self, engine, model_name: str):
        self.engine, self.model_name = engine, model_name

    def collect(self):
        s = self.engine.stats()
        gauges = {
            "num_requests_running": ("Requests in the running batch", s["num_running"]),
            "num_requests_waiting": ("Requests waiting to run", s["num_waiting"]),
            "kv_cache_usage_perc": ("Fraction of KV cache blocks in use (0 to 1)", s["kv_usage"]),
        }
        counters = {
            "prompt_tokens": ("Prompt tokens received", s["prompt_tokens_total"]),
            "generation_tokens": ("Tokens generated", s["generation_tokens_total"]),
            "num_preemptions": ("Sequences preempted for KV space", s["num_preemptions"]),
            "prefix_cache_queries": ("Prefix cache lookups, in blocks", s["prefix_cache_queries"]),
            "prefix_cache_hits": ("Prefix cache hits, in blocks", s["prefix_cache_hits"]),
        }
        for prefix in PREFIXES:
            for name, (doc, value) in gauges.items():
                yield self._family(GaugeMetricFamily, prefix + name, doc, value)
            for name, (doc, value) in counters.items():
                yield self._family(CounterMetricFamily, prefix + name, doc, value)
        # vLLM's earlier names, still read by older dashboards and gateways
        doc = "KV cache usage (1 = 100%), vLLM's earlier name"
        yield self._family(GaugeMetricFamily, "vllm:gpu_cache_usage_perc", doc, s["kv_usage"])
        info = GaugeMetricFamily(
            "vllm:cache_config_info", "KV cache configuration", labels=["num_gpu_blocks"]
        )
        info.add_metric([str(s["kv_blocks_total"])], 1)
        yield info
        hit_rate = s["prefix_cache_hits"] / max(1, s["prefix_cache_queries"])
        yield self._family(
            GaugeMetricFamily, "qthink:prefix_cache_hit_rate", "Prefix cache hit rate", hit_rate
        )
        yield from self._speculation(s)
        doc = "Thinking closed by the loop guard"
        yield self._family(CounterMetricFamily, "qthink:thinking_loop_guard_hits", doc, s["loop_guard_total"])

    def _speculation(self, s: dict):
        """Speculative decoding's counters under both prefixes, when the engine speculates."""
        if "spec_decode_num_drafts" not in s:
            return
        counters = {
            "spec_decode_num_drafts": "Verification steps of a sequence with drafted tokens",
            "spec_decode_num_draft_tokens": "Tokens drafted",
            "spec_decode_num_accepted_tokens": "Drafted tokens accepted",
        }
        for prefix in PREFIXES:
            for name, doc in counters.items():
                yield self._family(CounterMetricFamily, prefix + name, doc, s[name])
        gauges = {
            "spec_decode_acceptance_rate": "Drafted tokens accepted per drafted token",
            "spec_decode_mean_accepted_length": "Tokens emitted per verification step (accepted + 1)",
        }
        for name, doc in gauges.items():
            yield self._family(GaugeMetricFamily, "qthink:" + name, doc, s[name])

    def _family(self, kind, name: str, doc: str, value: float):
        family = kind(name, doc, labels=["model_name"])
        family.add_metric([self.model_name], value)
        return family


class Metrics:
    def __init__(self, engine, model_name: str):
        self.registry = CollectorRegistry()
        self.registry.register(EngineCollector(engine, model_name))
        self.model_name = model_name
        self.ttft = self._both("time_to_first_token_seconds", "Time to first token")
        self.itl = self._both("inter_token_latency_seconds", "Time between output tokens")
        self.itl.metrics.append(  # vLLM's earlier name for the same histogram
            self._histogram("vllm:time_per_output_token_seconds", "Time per output token")
        )
        self.e2e = self._both("e2e_request_latency_seconds", "Request latency, end to end")
        self.prompt_tokens = self._both("request_prompt_tokens", "Prompt tokens per request", TOKEN_BUCKETS)
        self.generation_tokens = self._both(
            "request_generation_tokens", "Generated tokens per request", TOKEN_BUCKETS
        )
        success = [
            Counter(
                p + "request_success",
                "Finished requests",
                ["model_name", "finished_reason"],
                registry=self.registry,
            )
            for p in PREFIXES
        ]
        self.success = {r: Both([c.labels(model_name, r) for c in success]) for r in FINISH_REASONS}
        self.reasoning_tokens = self._histogram(
            "qthink:request_reasoning_tokens", "Thinking tokens per answer", TOKEN_BUCKETS
        )
        self.time_to_answer = self._histogram(
            "qthink:time_to_answer_seconds", "Time from arrival to the first answer token (after </think>)"
        )
        self.budget_hits = self._counter("qthink:thinking_budget_hits", "Thinking closed by its token budget")
        self.ended_on_request = self._counter(
            "qthink:thinking_ended_on_request", "Thinking closed by POST /v1/requests/{id}/end_thinking"
        )

    def _histogram(self, name: str, doc: str, buckets=LATENCY_BUCKETS):
        return Histogram(name, doc, ["model_name"], registry=self.registry, buckets=buckets).labels(
            self.model_name
        )

    def _both(self, name: str, doc: str, buckets=LATENCY_BUCKETS) -> "Both":
        return Both([self._histogram(p + name, doc, buckets) for p in PREFIXES])

    def _counter(self, name: str, doc: str):
        return Counter(name, doc, ["model_name"], registry=self.registry).labels(self.model_name)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class Both:
    """One observation recorded under both names."""

    def __init__(self, metrics: list):
        self.metrics = metrics

    def observe(self, value: float) -> None:
        for m in self.metrics:
            m.observe(value)

    def inc(self, value: float = 1) -> None:
        for m in self.metrics:
            m.inc(value)


class RequestTimer:
    """One request's latencies, from submission: to its first token, between tokens (per
    engine step, which adds one token to each running sequence), to its first answer token
    and to its end; at the end, its token counts and how its thinking ended."""

    def __init__(self, metrics: Metrics, thinking_format=None, thinking: bool = False):
        self.metrics = metrics
        self.start = time.monotonic()
        self.tokens = 0
        self.last_token_at: float | None = None
        self.format, self.thinking = thinking_format, thinking
        self.trackers: dict[int, tuple] = {}  # completion index -> (ThinkingTokens, tokens seen)
        self.answered = False

    def saw(self, out) -> None:
        now = time.monotonic()
        tokens = sum(len(c.token_ids) for c in out.outputs)
        if tokens > self.tokens:
            if self.last_token_at is None:
                self.metrics.ttft.observe(now - self.start)
            else:
                self.metrics.itl.observe(now - self.last_token_at)
            self.tokens, self.last_token_at = tokens, now
        if self.format is not None:
            self._follow_thinking(out, now)
        if out.finished:
            self._finished(out, now)

    def _follow_thinking(self, out, now: float) -> None:
        for c in out.outputs:
            tracker, seen = self.trackers.get(c.index) or (self.format.tokens(self.thinking), 0)
            for token in c.token_ids[seen:]:
                tracker.observe(token)
                if not tracker.open and not self.answered:
                    self.answered = True
                    self.metrics.time_to_answer.observe(now - self.start)
            self.trackers[c.index] = (tracker, len(c.token_ids))

    def _finished(self, out, now: float) -> None:
        self.metrics.e2e.observe(now - self.start)
        self.metrics.prompt_tokens.observe(len(out.prompt_token_ids))
        for c in out.outputs:
            self.metrics.generation_tokens.observe(len(c.token_ids))
            reason = c.finish_reason if c.finish_reason in FINISH_REASONS else "stop"
            self.metrics.success[reason].inc()
            if c.index in self.trackers:
                self.metrics.reasoning_tokens.observe(self.trackers[c.index][0].num_reasoning_tokens)
            cut_by = getattr(c, "thinking_cut_by", None)
            if cut_by == "thinking_budget":
                self.metrics.budget_hits.inc()
            elif cut_by == "end_thinking":
                self.metrics.ended_on_request.inc()

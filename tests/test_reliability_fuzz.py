"""Hostile input: schemathesis fuzzes every operation of /openapi.json on a real server; none answers 500."""

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.helpers.server import RunningServer

EXAMPLES_PER_OPERATION = 15
cases_run: dict[str, int] = {}


@pytest.fixture(scope="module")
def server(tiny_model_dir):
    # a short context bounds every generated request (max_tokens, n) to a fraction of a second
    with RunningServer(tiny_model_dir, max_model_len=64, kv_cache_memory=4 << 20) as running:
        yield running
        stats = running.engine.stats()
        assert stats["kv_blocks_free"] == stats["kv_blocks_total"], "no fuzz case leaks KV blocks"
        paths = {name.split()[1] for name in cases_run}
        print(f"\nfuzz cases tried: {sum(cases_run.values())} on {len(paths)} paths")


@pytest.fixture(scope="module")
def api_schema(server):
    # coverage's invalid-input cases are cheap refusals; its valid ones (every boundary of n,
    # max_tokens...) would each run the model, so valid requests come from the fuzzing phase only
    coverage = {"generation": {"mode": "negative"}}
    config = schemathesis.config.SchemathesisConfig.from_dict({"phases": {"coverage": coverage}})
    return schemathesis.openapi.from_url(server.url + "/openapi.json", config=config)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,  # the same cases on every run: CI stays deterministic
)
def test_no_operation_answers_500(case):
    response = case.call(timeout=30)
    name = f"{case.method} {case.path}"
    cases_run[name] = cases_run.get(name, 0) + 1
    assert response.status_code < 500, f"{name} -> {response.status_code}: {response.text[:500]}"
    if response.status_code >= 400:
        assert "error" in response.json(), f"{name}: errors have the OpenAI shape, got {response.text[:200]}"

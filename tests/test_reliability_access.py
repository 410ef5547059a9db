"""Access: the API key guards every route but the public ones; CORS is off unless origins are allowed."""

import httpx
import pytest
from starlette.routing import Mount

from qthink.server.app import build_app
from tests.helpers.server import RunningServer, serving

KEY = "sk-reliability"
# Public without the key: the health probe, and the chat page's shell (the page loads before the
# user types the key; everything it sends text to, /viewer/segment included, goes with the key).
PUBLIC = {"/health", "/", "/viewer/config", "/viewer/static"}


@pytest.fixture(scope="module")
def keyed(tiny_model_dir):
    with RunningServer(tiny_model_dir, api_key=KEY) as running:
        yield running


def every_route(app) -> list[tuple[str, str]]:
    """(method, path) for every route the app serves, mounted static files included."""
    routes = []
    for route in app.routes:
        if isinstance(route, Mount):
            routes.append(("GET", route.path + "/main.js"))
            continue
        routes += [(method, route.path) for method in sorted(route.methods - {"HEAD"})]
    return routes


def is_public(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PUBLIC)


def assert_key_refused(path: str, body: dict) -> None:
    """The 401 body says the key was refused, in the shape the route's protocol uses."""
    if path.startswith("/v1/messages"):  # Anthropic
        assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    elif path.startswith("/api/"):  # Ollama
        assert "API key" in body["error"]
    else:
        assert body["error"]["code"] == "invalid_api_key"


def test_every_route_but_the_public_ones_needs_the_key(keyed):
    routes = every_route(keyed.app)
    assert len(routes) >= 14 and ("POST", "/v1/chat/completions") in routes
    guarded = [(m, p) for m, p in routes if not is_public(p)]
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        for method, path in guarded:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
                r = client.request(method, path, json={}, headers=headers)
                assert r.status_code == 401, (method, path, headers, r.status_code)
                assert_key_refused(path, r.json())
        for method, path in routes:
            r = client.request(method, path, json={}, headers={"Authorization": f"Bearer {KEY}"})
            assert r.status_code != 401, (method, path)
        for method, path in set(routes) - set(guarded):
            assert client.request(method, path, json={"text": "x"}).status_code != 401, (method, path)
    print(f"\nroutes checked: {len(routes)}, guarded: {len(guarded)}")


def test_metrics_public_opens_metrics_only(keyed):
    app = build_app(keyed.engine, "qthink-test", api_key=KEY, metrics_public=True)
    with serving(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        assert client.get("/metrics").status_code == 200
        assert client.get("/v1/models").status_code == 401
        assert client.get("/version").status_code == 401


def cors_headers(url: str, origin: str) -> tuple[dict, dict]:
    with httpx.Client(base_url=url, timeout=30) as client:
        simple = client.get("/health", headers={"Origin": origin})
        preflight = client.options(
            "/v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
    return simple.headers, preflight.headers


def test_cors_is_off_by_default(keyed):
    simple, preflight = cors_headers(keyed.url, "http://elsewhere.example")
    assert "access-control-allow-origin" not in simple
    assert "access-control-allow-origin" not in preflight


def test_cors_on_for_the_allowed_origins_only(keyed):
    app = build_app(keyed.engine, "qthink-test", api_key=KEY, allowed_origins=["http://ui.example"])
    with serving(app) as url:
        simple, preflight = cors_headers(url, "http://ui.example")
        assert simple["access-control-allow-origin"] == "http://ui.example"
        assert preflight["access-control-allow-origin"] == "http://ui.example"
        assert "POST" in preflight["access-control-allow-methods"]
        simple, preflight = cors_headers(url, "http://elsewhere.example")
        assert "access-control-allow-origin" not in simple
        assert "access-control-allow-origin" not in preflight


@pytest.mark.parametrize(
    ("path", "body", "headers"),
    [
        (
            "/v1/messages/count_tokens",
            {"model": "qthink-test", "messages": [{"role": "user", "content": "hi"}]},
            {"x-api-key": KEY},
        ),
        ("/api/chat", {"model": "qthink-test", "messages": []}, {"Authorization": f"Bearer {KEY}"}),
        ("/viewer/segment", {"text": "First, add. Then check."}, {"Authorization": f"Bearer {KEY}"}),
    ],
)
def test_each_protocol_sends_the_key_its_own_way(keyed, path, body, headers):
    """Anthropic's clients send x-api-key, Ollama's and the chat page a bearer token."""
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        assert client.post(path, json=body).status_code == 401
        assert client.post(path, json=body, headers=headers).status_code == 200


def test_paths_that_only_look_public_need_the_key(keyed):
    with httpx.Client(base_url=keyed.url, timeout=30) as client:
        for path in (
            "/viewer/static/../../v1/models",
            "/health/../v1/models",
            "/viewer/",
            "/viewer/segment/",
        ):
            assert client.get(path).status_code == 401, path

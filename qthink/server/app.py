"""The FastAPI app: OpenAI routes, tokenizer routes, health, metrics, auth and request limits."""

import hmac
import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from qthink import __version__
from qthink.engine.async_engine import AsyncEngine, EngineDeadError
from qthink.errors import RequestError
from qthink.server.anthropic_messages import add_messages_routes
from qthink.server.chat import create_chat_completion
from qthink.server.completions import create_completion
from qthink.server.control import add_control_routes
from qthink.server.error_shapes import shaped_error
from qthink.server.errors import APIError, bad_request, validation_message
from qthink.server.json_body import LoneSurrogateError, StrictJSONRoute
from qthink.server.metrics import Metrics
from qthink.server.ollama import add_ollama_routes
from qthink.server.params import template_kwargs
from qthink.server.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeRequest,
)
from qthink.server.request_log import RequestLog
from qthink.server.responses import ResponseStore, add_responses_routes
from qthink.server.streaming import STREAM_BACKLOG_TOKENS, ClientGone
from qthink.server.thinking_budget import EffortBudgets
from qthink.server.tokenizing import PromptTokenizer
from qthink.server.turn import check_model

log = logging.getLogger("qthink")

MAX_REQUEST_BYTES = 32 << 20
MIN_JSON_VALUES = 1 << 18
PUBLIC_PATHS = ("/health",)
# The chat page's own files, and its fixed configuration (step labels, whether a model answers),
# which it reads before the user has typed the key. Every call it makes with text goes with the key.
PAGE_PATHS = ("/", "/viewer/config")
PAGE_FILES = "/viewer/static/"


@dataclass
class Server:
    engine: AsyncEngine
    model_name: str  # the first served name: what responses say they came from
    metrics: Metrics
    efforts: EffortBudgets = field(default_factory=EffortBudgets)
    served_names: tuple[str, ...] = ()  # every name a request's `model` may use
    default_template_kwargs: dict = field(default_factory=dict)  # under each request's own
    responses: ResponseStore = field(default_factory=ResponseStore)
    stream_backlog_tokens: int = STREAM_BACKLOG_TOKENS  # a stream's client this far behind is dropped
    prompts: PromptTokenizer = field(init=False)  # tokenizes off the event loop

    def __post_init__(self):
        self.prompts = PromptTokenizer(self.engine.tokenizer, self.engine.max_model_len)

    @property
    def tokenizer(self):
        return self.engine.tokenizer

    def reported_name(self, requested: str | None) -> str:
        """The name a response carries: the one the request used, as vLLM answers, else the first."""
        return requested if requested in self.served_names else self.model_name


def build_app(
    engine: AsyncEngine,
    model_name: str | list[str],
    api_key: str | None = None,
    metrics_public: bool = False,
    allowed_origins: list[str] | None = None,
    max_request_bytes: int = MAX_REQUEST_BYTES,
    web_ui: bool = True,
    efforts: EffortBudgets | None = None,
    default_template_kwargs: dict | None = None,
    stream_backlog_tokens: int = STREAM_BACKLOG_TOKENS,
) -> FastAPI:
    """`model_name`: the name clients send as `model`, or several (the first is reported)."""
    names = (model_name,) if isinstance(model_name, str) else tuple(model_name)
    server = Server(
        engine,
        names[0],
        Metrics(engine, names[0]),
        efforts or EffortBudgets(),
        served_names=names,
        default_template_kwargs=dict(default_template_kwargs or {}),
        stream_backlog_tokens=stream_backlog_tokens,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.prompts.close()
        await engine.shutdown()  # aborts whatever is still in flight, then stops the engine thread

    # max_body_size also stops a chunked body, which has no Content-Length for the guard to check
    app = FastAPI(title="qthink", version=__version__, lifespan=lifespan, max_body_size=max_request_bytes)
    app.router.route_class = StrictJSONRoute  # every route added below decodes its body strictly
    app.state.server = server
    app.state.max_json_values = max_json_values(engine.max_model_len)
    public = PUBLIC_PATHS + (("/metrics",) if metrics_public else ())
    _add_guards(app, api_key, public, max_request_bytes)
    if allowed_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=allowed_origins, allow_methods=["*"], allow_headers=["*"]
        )
    app.add_middleware(RequestLog)  # added last, so outermost: it sees every request's whole response
    _add_error_handlers(app)
    _add_routes(app, server)
    add_responses_routes(app, server)
    add_messages_routes(app, server)
    add_ollama_routes(app, server)
    add_control_routes(app, server)
    if web_ui:
        from qthink.viewer.web import mount

        mount(app)
    return app


def max_json_values(max_model_len: int) -> int:
    """The most strings, objects and arrays a body may hold: twice the context in tokens, at
    least 262,144. Every message a template renders costs a few tokens, so a prompt that fits
    holds far fewer; validating that many messages takes the event loop about 0.2 s (strings
    in a list, such as a 100,000-entry `guided_choice`, validate a hundred times faster)."""
    return max(MIN_JSON_VALUES, 2 * max_model_len)


def _add_guards(app: FastAPI, api_key: str | None, public: tuple[str, ...], max_bytes: int) -> None:
    expected = f"Bearer {api_key}".encode() if api_key else None

    @app.middleware("http")
    async def guard(request: Request, call_next):
        path = request.url.path
        size = request.headers.get("content-length")
        if size and size.isdigit() and int(size) > max_bytes:
            return shaped_error(path, 413, f"request body over {max_bytes} bytes", code="request_too_large")
        if expected and path not in public and not _is_ui(path):
            given = _presented_key(request).encode()
            if not hmac.compare_digest(given, expected):  # constant time: no key oracle
                return shaped_error(
                    path,
                    401,
                    "invalid or missing API key",
                    kind="authentication_error",
                    code="invalid_api_key",
                )
        return await call_next(request)


def _presented_key(request: Request) -> str:
    """The bearer token, or Anthropic's x-api-key as one (its clients send no Authorization)."""
    x_api_key = request.headers.get("x-api-key")
    return f"Bearer {x_api_key}" if x_api_key else request.headers.get("authorization", "")


def _is_ui(path: str) -> bool:
    return path in PAGE_PATHS or (path.startswith(PAGE_FILES) and ".." not in path)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors(), exc.body)
        if isinstance(exc.__cause__, LoneSurrogateError):
            param = exc.__cause__.path
        return shaped_error(request.url.path, 400, message, param=param)

    @app.exception_handler(HTTPException)
    async def http_error(
        request: Request, exc: HTTPException
    ):  # unparsable body, unknown route, wrong method
        response = shaped_error(request.url.path, exc.status_code, str(exc.detail))
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError):
        return shaped_error(request.url.path, exc.status, exc.message, exc.kind, exc.param, exc.code)

    @app.exception_handler(ClientGone)
    async def gone(request: Request, exc: ClientGone):
        return shaped_error(
            request.url.path, 499, "the client closed the request", code="client_closed_request"
        )

    @app.exception_handler(EngineDeadError)
    async def dead(request: Request, exc: EngineDeadError):
        return shaped_error(request.url.path, 503, str(exc), kind="server_error")

    @app.exception_handler(RequestError)
    async def refused(request: Request, exc: RequestError):
        error = bad_request(exc)
        return shaped_error(
            request.url.path, error.status, error.message, error.kind, error.param, error.code
        )

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):  # a bug, not the client's fault
        log.error("internal error on %s", request.url.path, exc_info=exc)
        return shaped_error(
            request.url.path, 500, f"internal error: {type(exc).__name__}", kind="server_error"
        )


def _add_routes(app: FastAPI, server: Server) -> None:
    @app.get("/health")
    async def health():
        if not server.engine.is_alive():
            return JSONResponse({"status": "engine stopped"}, status_code=503)
        return {"status": "ok"}

    @app.get("/version")
    async def version():
        return {"version": __version__}

    @app.get("/v1/models")
    async def models():
        cards = [
            {
                "id": name,
                "object": "model",
                "owned_by": "qthink",
                "created": 0,
                "max_model_len": server.engine.max_model_len,
            }
            for name in server.served_names
        ]
        return {"object": "list", "data": cards}

    @app.post("/v1/chat/completions")
    async def chat(req: ChatCompletionRequest, request: Request):
        check_model(server, req.model)
        return await create_chat_completion(req, server, request)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(server, req.model)
        return await create_completion(req, server, request)

    @app.post("/tokenize")
    async def tokenize(req: TokenizeRequest):
        check_model(server, req.model)
        if (req.prompt is None) == (req.messages is None):
            raise APIError(400, "give exactly one of prompt and messages")
        if req.prompt is not None:
            tokens = await server.prompts.encode(req.prompt)
        else:
            messages = [m.for_template() for m in cast(list, req.messages)]  # exactly one is given
            tokens = await server.prompts.chat(
                messages,
                req.tools,
                add_generation_prompt=req.add_generation_prompt,
                **template_kwargs(req.chat_template_kwargs, server.default_template_kwargs),
            )
        return {"tokens": tokens, "count": len(tokens), "max_model_len": server.engine.max_model_len}

    @app.post("/detokenize")
    async def detokenize(req: DetokenizeRequest):
        check_model(server, req.model)
        server.prompts.check_ids(req.tokens, "tokens")  # nothing the server reads or writes is longer
        if any(not 0 <= t < len(server.tokenizer) for t in req.tokens):
            raise APIError(400, "a token id is outside the vocabulary", param="tokens")
        return {"prompt": await server.prompts.decode(req.tokens)}

    @app.get("/metrics")
    async def metrics():
        return Response(server.metrics.render(), media_type="text/plain; version=0.0.4")

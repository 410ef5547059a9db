"""The viewer's web routes: the chat page at `/`, its static files, step segmentation, traces."""

from pathlib import Path

from fastapi import FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from qthink.viewer.segment import LABEL_TITLES, analyse
from qthink.viewer.trace import Trace

STATIC_DIR = Path(__file__).parent / "static"
# The page is served fresh so a restarted server never runs an old script against a new API.
NO_CACHE = {"Cache-Control": "no-cache"}


class SegmentRequest(BaseModel):
    text: str | None = None
    tokens: list[str] | None = None
    answer: str = ""


def mount(app: FastAPI, traces: list[Trace] | None = None, chat: bool = True) -> None:
    """Serve the page at `/` on `app`. `chat` says the same origin answers
    `/v1/chat/completions`; `traces` are opened in the trace view when the page loads."""
    preloaded = [t.model_dump(exclude_none=True) for t in traces or []]

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=NO_CACHE)

    @app.get("/viewer/config", include_in_schema=False)
    def config() -> dict:
        return {"chat": chat, "traces": preloaded, "labels": LABEL_TITLES}

    @app.post("/viewer/segment", include_in_schema=False)
    def segment(request: SegmentRequest) -> dict:
        if request.text is None and request.tokens is None:
            raise HTTPException(400, "give the thinking as `text` or as `tokens`")
        return analyse(request.text, request.answer, request.tokens)

    app.mount("/viewer/static", StaticFiles(directory=STATIC_DIR), name="viewer-static")


def view_app(traces: list[Trace]) -> FastAPI:
    """The app of `qthink view`: saved traces, no model behind it."""
    app = FastAPI(title="qthink viewer", docs_url=None, redoc_url=None)
    mount(app, traces=traces, chat=False)
    return app

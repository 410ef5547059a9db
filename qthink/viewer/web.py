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


# A thinking trace of the longest context (262,144 tokens) is about a million characters;
# segmenting twice that takes about a second.
MAX_SEGMENT_CHARS = 2_097_152


class SegmentRequest(BaseModel):
    text: str | None = None
    tokens: list[str] | None = None
    answer: str = ""

    def characters(self) -> int:
        return len(self.text or "") + sum(map(len, self.tokens or ())) + len(self.answer)


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
        if request.characters() > MAX_SEGMENT_CHARS:
            raise HTTPException(
                413, f"at most {MAX_SEGMENT_CHARS:,} characters of thinking and answer can be segmented"
            )
        return analyse(request.text, request.answer, request.tokens)

    app.mount("/viewer/static", StaticFiles(directory=STATIC_DIR), name="viewer-static")


def view_app(traces: list[Trace]) -> FastAPI:
    """The app of `qthink view`: saved traces, no model behind it."""
    app = FastAPI(title="qthink viewer", docs_url=None, redoc_url=None)
    mount(app, traces=traces, chat=False)
    return app

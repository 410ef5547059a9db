"""Control of running requests: end the thinking now, so the model answers."""

from fastapi import FastAPI

from qthink.server.errors import APIError


def add_control_routes(app: FastAPI, server) -> None:
    @app.post("/v1/requests/{request_id}/end_thinking")
    async def end_thinking(request_id: str):
        """Close the thinking of a running request at its next step; it then answers."""
        if not await server.engine.end_thinking(request_id):
            raise APIError(404, f"no running request with id {request_id!r}", code="request_not_found")
        return {"id": request_id, "object": "request.end_thinking", "ended": True}

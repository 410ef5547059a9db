"""An OpenAI-compatible endpoint on a real socket that answers from a script, for agent tests."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from qthink.agent import Assistant

CRASHY_MCP_SERVER = '''
import os
from mcp.server.mcpserver import MCPServer

server = MCPServer("crashy")


@server.tool()
def echo(text: str) -> str:
    """Echo text back with the server's pid."""
    return f"echo:{text}:{os.getpid()}"


@server.tool()
def crash() -> str:
    """End the server process abruptly."""
    os._exit(3)


server.run()
'''


def reply(reasoning: str | None = None, content: str = "", calls: list | None = None) -> dict:
    """One scripted completion; calls are (name, arguments dict or raw string)."""
    return {"reasoning": reasoning, "content": content, "calls": calls or []}


class ScriptedEndpoint:
    """`/v1/chat/completions` (streamed) answering from a script, recording every request body."""

    def __init__(self, replies: list):
        self.replies, self.requests = list(replies), []
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                self._send_json({"object": "list", "data": [{"id": "scripted", "object": "model"}]})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                endpoint.requests.append(body)
                if not endpoint.replies:
                    return self._send_json({"error": {"message": "script exhausted"}}, status=500)
                scripted = endpoint.replies.pop(0)
                scripted = scripted(body) if callable(scripted) else scripted
                if "error" in scripted:  # a 4xx: the openai client does not retry it
                    return self._send_json({"error": {"message": scripted["error"]}}, status=400)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for delta in stream_deltas(scripted):
                    self.wfile.write(f"data: {json.dumps(chunk(delta))}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def _send_json(self, data, status=200):
                raw = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def stream_deltas(scripted: dict) -> list[dict]:
    """Thinking, answer, then each call in two pieces, as a streaming server sends them."""
    deltas = [{"role": "assistant", "content": ""}]
    if scripted["reasoning"]:
        deltas.append({"reasoning_content": scripted["reasoning"]})
    if scripted["content"]:
        deltas.append({"content": scripted["content"]})
    for index, (name, args) in enumerate(scripted["calls"]):
        arguments = args if isinstance(args, str) else json.dumps(args)
        head = {"index": index, "id": f"call_{index}_{name}", "type": "function"}
        deltas.append({"tool_calls": [{**head, "function": {"name": name, "arguments": arguments[:3]}}]})
        deltas.append({"tool_calls": [{"index": index, "function": {"arguments": arguments[3:]}}]})
    return deltas


def chunk(delta: dict) -> dict:
    return {
        "id": "chatcmpl-scripted",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "scripted",
        "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
    }


def agent(endpoint, tools, **kwargs) -> Assistant:
    llm = {"model": "scripted", "model_server": endpoint.url, "api_key": "k", "generate_cfg": {"top_k": 20}}
    return Assistant(llm=llm, function_list=tools, **kwargs)


def tool_messages(response):
    return [m for m in response if m["role"] == "tool"]

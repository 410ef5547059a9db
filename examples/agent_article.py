"""The article's agent example for qthink: a thinking model with the time MCP server and a code interpreter.

Serve the model first, then point the agent at it:

    qthink serve Qwen/Qwen3-4B-Thinking-2507 --port 8000
    python examples/agent_article.py --model-server http://127.0.0.1:8000/v1

or run the engine inside this process with `--model-server local` (without `--model`, the
offline demo model). The fetch MCP server joins when `mcp-server-fetch` is installed.
"""

import argparse
import importlib.util
import sys

from qthink.agent import Assistant

ARTICLE_PROMPT = "分析当前股市趋势并生成可视化图表"  # analyse the stock market's trend and chart it


def tools() -> list:
    """The article's tools: MCP servers started with `python -m` (no uvx needed), and the interpreter."""
    servers = {
        "time": {
            "command": sys.executable,
            "args": ["-m", "mcp_server_time", "--local-timezone=Asia/Shanghai"],
        }
    }
    if importlib.util.find_spec("mcp_server_fetch"):
        servers["fetch"] = {"command": sys.executable, "args": ["-m", "mcp_server_fetch"]}
    return [{"mcpServers": servers}, "code_interpreter"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("prompt", nargs="?", default=ARTICLE_PROMPT)
    parser.add_argument("--model-server", default="http://127.0.0.1:8000/v1", help="URL, or 'local'")
    parser.add_argument("--model", default=None, help="served name, or a path/hub id with 'local'")
    args = parser.parse_args()
    llm = {
        "model": args.model,
        "model_server": args.model_server,
        "api_key": "EMPTY",
        # The model card's sampling for thinking models.
        "generate_cfg": {"temperature": 0.6, "top_p": 0.95, "top_k": 20},
    }
    responses = []
    with Assistant(llm=llm, function_list=tools()) as bot:
        for responses in bot.run([{"role": "user", "content": args.prompt}]):  # noqa: B007 — streams
            pass
    for message in responses:
        if message.get("reasoning_content"):
            print(f"[thinking] {message['reasoning_content']}")
        for call in message.get("tool_calls") or []:
            print(f"[call {call['function']['name']}] {call['function']['arguments']}")
        if message["role"] == "tool":
            print(f"[result {message['name']}] {message['content']}")
        elif message.get("content"):
            print(f"[answer] {message['content']}")


if __name__ == "__main__":
    main()

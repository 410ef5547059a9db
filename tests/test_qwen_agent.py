"""Qwen-Agent (PyPI `qwen-agent`) drives qthink-nano through `qthink serve`: its default mode, which
writes the tool protocol into the system message and parses `<tool_call>` itself, and use_raw_api,
which sends `tools` and reads the server's parsed `tool_calls`."""

import json
import subprocess
import sys
import time
import urllib.request

import pytest

from qthink.nano.data import TOOLS as NANO_TOOLS
from tests.helpers.nano import nano_available
from tests.helpers.server import free_port

qwen_agent = pytest.importorskip("qwen_agent")
from qwen_agent.agents import Assistant  # noqa: E402
from qwen_agent.tools.base import BaseTool  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not nano_available(), reason="qthink-nano's weights are not built"),
]


@pytest.fixture(scope="module")
def nano_url():
    from qthink.demo import default_model_path

    port = free_port()
    command = [sys.executable, "-m", "qthink", "serve", str(default_model_path()), "--port", str(port)]
    command += ["--served-model-name", "nano", "--tool-call-parser", "hermes", "--enable-auto-tool-choice"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            if time.time() > deadline:
                break
            time.sleep(0.5)
    try:
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def nano_tool(name: str, answer: str, calls: list) -> BaseTool:
    """A Qwen-Agent tool with the schema qthink-nano was trained on; it records its calls."""
    spec = next(t["function"] for t in NANO_TOOLS if t["function"]["name"] == name)

    class NanoTool(BaseTool):
        description = spec["description"]
        parameters = spec["parameters"]

        def call(self, params, **kwargs) -> str:
            city = json.loads(params)["city"]
            calls.append((name, city))
            return json.dumps({"city": city, "result": answer})

    NanoTool.name = name
    return NanoTool()


@pytest.mark.parametrize("use_raw_api", [False, True], ids=["default mode", "use_raw_api"])
def test_qwen_agent_completes_a_tool_round_trip(nano_url, use_raw_api):
    calls: list = []
    tools = [nano_tool("get_weather", "20 C, sunny", calls), nano_tool("get_time", "14:05", calls)]
    llm = {
        "model": "nano",
        "model_server": nano_url,
        "api_key": "EMPTY",
        "generate_cfg": {"temperature": 0, "max_tokens": 256, "use_raw_api": use_raw_api},
    }
    bot = Assistant(llm=llm, function_list=tools, system_message="You are a helpful assistant.")
    messages = bot.run_nonstream([{"role": "user", "content": "What time is it in Paris?"}])
    assert calls == [("get_time", "Paris")]
    (call,) = [m for m in messages if m.get("function_call")]
    assert call["function_call"]["name"] == "get_time"
    assert json.loads(call["function_call"]["arguments"]) == {"city": "Paris"}
    (result,) = [m for m in messages if m["role"] == "function"]
    assert json.loads(result["content"]) == {"city": "Paris", "result": "14:05"}
    assert any(m.get("reasoning_content") for m in messages)  # the thinking came back apart
    final = messages[-1]
    assert final["role"] == "assistant" and "14:05" in final["content"]
    assert "<tool_call>" not in final["content"] and "</think>" not in final["content"]

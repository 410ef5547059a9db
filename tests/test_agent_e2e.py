"""The agent against qthink itself: its server (in a thread, or `qthink serve`) and the engine in-process."""

import json
import subprocess
import sys
import time
import urllib.request
from typing import Literal

import pytest

from qthink.agent import Assistant, Tool
from qthink.agent.mcp_client import MCPManager
from qthink.nano.data import TOOLS as NANO_TOOLS
from tests.helpers.nano import nano_available
from tests.helpers.server import RunningServer, free_port

TIME_SERVER = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone=Asia/Shanghai"]}
CITY_ZONES = {"Paris": "Europe/Paris", "Tokyo": "Asia/Tokyo"}


def clock(city: Literal["Paris", "Tokyo"]) -> str:
    """The local time in a city."""
    return f"noon in {city}"


def test_forced_tool_calls_through_the_qthink_server(tiny_model_dir):
    """Random weights, so tool_choice=required (a grammar) makes the calls; the loop does the rest."""
    generate_cfg = {"max_tokens": 80, "temperature": 0, "tool_choice": "required", "max_thinking_tokens": 8}
    with RunningServer(tiny_model_dir) as server:
        llm = {"model": "qthink-test", "model_server": server.url + "/v1", "generate_cfg": generate_cfg}
        with Assistant(llm=llm, function_list=[clock], max_rounds=2) as bot:
            response = bot.run_nonstream([{"role": "user", "content": "What time is it?"}])
    first, *results, last = response
    assert first["reasoning_content"] and first["tool_calls"]
    assert [m["role"] for m in results] == ["tool"] * len(first["tool_calls"])
    for call, result in zip(first["tool_calls"], results):
        city = json.loads(call["function"]["arguments"])["city"]
        assert result == {
            "role": "tool",
            "tool_call_id": call["id"],
            "name": "clock",
            "content": f"noon in {city}",
        }
    assert last["role"] == "assistant" and "tool_calls" not in last


def test_local_engine_in_process(tiny_model_dir):
    llm = {
        "model": str(tiny_model_dir),
        "model_server": "local",
        "generate_cfg": {"max_tokens": 8, "temperature": 0},
    }
    with Assistant(llm=llm, function_list=[clock]) as bot:
        response = bot.run_nonstream([{"role": "user", "content": "What time is it in Paris?"}])
    prompt = bot.model.llm.get_tokenizer().apply_chat_template(
        [{"role": "user", "content": "x"}], tools=bot.tool_schemas(), tokenize=False
    )
    assert '"name": "clock"' in prompt
    assert (
        len(response) == 1 and response[0]["role"] == "assistant" and isinstance(response[0]["content"], str)
    )


@pytest.fixture
def nano_server():
    from qthink.demo import default_model_path

    port = free_port()
    command = [sys.executable, "-m", "qthink", "serve", str(default_model_path()), "--port", str(port)]
    proc = subprocess.Popen(command + ["--served-model-name", "nano"], stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url + "/health", timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    yield url + "/v1"
    proc.terminate()
    proc.wait(timeout=30)


class NanoTool(Tool):
    """A tool with the exact schema qthink-nano was trained on (a tiny model keys on the prompt's text)."""

    def __init__(self, name: str, fn):
        super().__init__()
        spec = next(t["function"] for t in NANO_TOOLS if t["function"]["name"] == name)
        self.name, self.description, self.parameters, self.fn = (
            name,
            spec["description"],
            spec["parameters"],
            fn,
        )

    def call(self, params: dict) -> str:
        return self.fn(**params)


@pytest.mark.slow
@pytest.mark.skipif(not nano_available(), reason="qthink-nano's weights are not built")
def test_nano_calls_a_time_tool_backed_by_the_real_mcp_time_server(nano_server):
    manager = MCPManager({"mcpServers": {"time": TIME_SERVER}})

    def get_time(city: str) -> str:
        text = manager.call("time", "get_current_time", {"timezone": CITY_ZONES.get(city, "Asia/Shanghai")})
        return json.dumps({"city": city, "result": json.loads(text)["datetime"][11:16]})

    def get_weather(city: str) -> str:
        return json.dumps({"city": city, "result": "20 C, sunny"})

    tools = [NanoTool("get_weather", get_weather), NanoTool("get_time", get_time)]
    llm = {
        "model": "nano",
        "model_server": nano_server,
        "generate_cfg": {"temperature": 0, "max_tokens": 256},
    }
    try:
        with Assistant(llm=llm, function_list=tools, system_message="You are a helpful assistant.") as bot:
            response = bot.run_nonstream([{"role": "user", "content": "What time is it in Paris?"}])
    finally:
        manager.close()
    call = response[0]["tool_calls"][0]["function"]
    assert call["name"] == "get_time" and json.loads(call["arguments"]) == {"city": "Paris"}
    result = json.loads(response[1]["content"])
    assert result["result"] in response[-1]["content"]

"""An agent given several endpoint URLs spreads its model calls over them (data parallelism)."""

from qthink.agent import Assistant
from tests.helpers.scripted_endpoint import ScriptedEndpoint, reply


def test_model_calls_alternate_between_endpoints():
    first = ScriptedEndpoint([reply("think", "", [("echo", {"text": "a"})]), reply("done", "a")])
    second = ScriptedEndpoint([reply("think", "", [("echo", {"text": "b"})]), reply("done", "b")])
    try:
        llm = {"model": "scripted", "model_server": [first.url, second.url], "api_key": "k"}
        with Assistant(llm=llm, function_list=[echo]) as bot:
            for question in ("one", "two"):
                bot.run_nonstream([{"role": "user", "content": question}])
        assert len(first.requests) == 2 and len(second.requests) == 2
    finally:
        first.close()
        second.close()


def echo(text: str) -> str:
    """Return the text."""
    return text

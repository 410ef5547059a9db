"""Tools: schemas derived from type hints and docstrings, registration, validation, error results."""

import json
from typing import Literal

import pytest

from qthink.agent import TOOL_REGISTRY, Assistant, Tool, ToolError, function_tool, register_tool
from qthink.agent.tools import run_tool


def forecast(city: str, days: int = 3, units: Literal["C", "F"] = "C", tags: list[str] | None = None) -> dict:
    """Weather forecast for a city.

    Longer notes the model need not read.

    Args:
        city: Name of the city, in English.
        days (int): How many days ahead.
    """
    return {"city": city, "days": days, "units": units, "tags": tags}


def test_schema_comes_from_type_hints_and_google_docstring():
    tool = function_tool(forecast)
    assert tool.name == "forecast" and tool.description == "Weather forecast for a city."
    assert tool.parameters == {
        "type": "object",
        "properties": {
            "city": {"type": "string", "description": "Name of the city, in English."},
            "days": {"type": "integer", "description": "How many days ahead.", "default": 3},
            "units": {"enum": ["C", "F"], "default": "C"},
            "tags": {
                "anyOf": [{"type": "array", "items": {"type": "string"}}, {"type": "null"}],
                "default": None,
            },
        },
        "required": ["city"],
        "additionalProperties": False,
    }
    assert tool.schema()["type"] == "function" and tool.schema()["function"]["name"] == "forecast"


def test_sphinx_docstring_and_arguments_are_validated_before_the_call():
    seen = []

    def scale(value: float, factor: float = 2.0) -> float:
        """Multiply a value.

        :param value: the number to scale
        """
        seen.append(value)
        return value * factor

    tool = function_tool(scale, name="scale_it")
    assert tool.parameters["properties"]["value"]["description"] == "the number to scale"
    assert run_tool(tool, '{"value": 1.5}') == "3.0"
    assert "invalid arguments for scale_it" in run_tool(tool, {"value": "big"})
    assert "Additional properties are not allowed" in run_tool(tool, {"value": 1, "extra": 0})
    assert "must be a JSON object" in run_tool(tool, "[1, 2]")
    assert seen == [1.5]


def test_register_tool_on_a_class_and_on_a_function():
    @register_tool("shout")
    class Shout(Tool):
        description = "Upper-case a text."
        parameters = {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}

        def call(self, params: dict) -> str:
            if params["text"] == "":
                raise ToolError("nothing to shout")
            return params["text"].upper() + self.cfg.get("suffix", "")

    @register_tool
    def count_words(text: str) -> int:
        """Count the words of a text."""
        return len(text.split())

    assert TOOL_REGISTRY["shout"] is Shout
    assert run_tool(TOOL_REGISTRY["count_words"](), {"text": "a b c"}) == "3"
    assert count_words("a b") == 2  # the function itself is left as it was
    bot = Assistant(
        llm={"model": "m", "model_server": "http://127.0.0.1:9/v1"},
        function_list=[{"name": "shout", "suffix": "!"}, "count_words", forecast],
    )
    assert list(bot.tools) == ["shout", "count_words", "forecast"]
    assert run_tool(bot.tools["shout"], {"text": "hi"}) == "HI!"
    assert run_tool(bot.tools["shout"], {"text": ""}) == "Error: nothing to shout"
    result = json.loads(run_tool(bot.tools["forecast"], {"city": "Hangzhou"}))
    assert result == {"city": "Hangzhou", "days": 3, "units": "C", "tags": None}


def test_unknown_tool_names_in_the_function_list_are_refused():
    with pytest.raises(ValueError, match="unknown tool 'nope'"):
        Assistant(llm={"model": "m", "model_server": "http://127.0.0.1:9/v1"}, function_list=["nope"])

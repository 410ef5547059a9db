"""Ask one or several OpenAI-compatible endpoints, retrying 5xx and timeouts with backoff."""

import asyncio
import json
import random
from dataclasses import dataclass

import openai

from qthink.eval.tasks import Reply

RETRYABLE = (
    openai.APITimeoutError,
    openai.APIConnectionError,
    openai.InternalServerError,
    openai.RateLimitError,
)


@dataclass
class Answer:
    reply: Reply
    completion_tokens: int | None
    reasoning_tokens: int | None
    endpoint: str
    attempts: int


def _tool_calls(message) -> list[dict]:
    calls = []
    for call in message.tool_calls or []:
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError:
            arguments = {"__unparsed__": call.function.arguments}
        calls.append({"name": call.function.name, "arguments": arguments})
    return calls


def _reasoning(message) -> str | None:
    # vLLM and SGLang name it reasoning_content; newer vLLM says reasoning
    extra = message.model_extra or {}
    return extra.get("reasoning_content") or extra.get("reasoning")


def _content_calls(content: str | None, tools: list[dict] | None) -> tuple[str | None, list[dict]]:
    """Hermes `<tool_call>` blocks left in the content by a server run without a tool parser."""
    from qthink.parsing.tool_calls import parse_tool_calls  # pulls in the tokenizer: only when needed

    if not tools or not content or "<tool_call>" not in content:
        return content, []
    content, calls = parse_tool_calls(content, tools)
    return content, [
        {"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in calls
    ]


class EndpointPool:
    """Sends each request to the endpoint with the fewest in flight; a retry may move elsewhere."""

    def __init__(
        self, base_urls: list[str], api_key: str, timeout: float, retries: int, backoff: float = 1.0
    ):
        self.clients = {
            url: openai.AsyncOpenAI(base_url=url, api_key=api_key, timeout=timeout, max_retries=0)
            for url in base_urls
        }
        self.in_flight = dict.fromkeys(base_urls, 0)
        self.retries, self.backoff = retries, backoff

    async def model_name(self) -> str:
        """The first model the first endpoint serves, for runs that do not name one."""
        client = next(iter(self.clients.values()))
        models = await client.models.list()
        return models.data[0].id

    def _pick(self) -> str:
        least = min(self.in_flight.values())
        return random.choice([url for url, n in self.in_flight.items() if n == least])

    async def chat(self, request: dict) -> Answer:
        """One chat completion; raises the last error once the retries are spent."""
        for attempt in range(self.retries + 1):
            url = self._pick()
            self.in_flight[url] += 1
            try:
                response = await self.clients[url].chat.completions.create(**request)
                return self._answer(response, url, attempt + 1, request.get("tools"))
            except RETRYABLE:
                if attempt == self.retries:
                    raise
            finally:
                self.in_flight[url] -= 1
            delay = min(60.0, self.backoff * 2**attempt)
            await asyncio.sleep(delay * (0.5 + random.random() / 2))
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _answer(self, response, url: str, attempts: int, tools) -> Answer:
        choice = response.choices[0]
        content, calls = choice.message.content, _tool_calls(choice.message)
        if not calls:
            content, calls = _content_calls(content, tools)
        usage = response.usage
        details = getattr(usage, "completion_tokens_details", None) if usage else None
        return Answer(
            reply=Reply(content, _reasoning(choice.message), calls, choice.finish_reason),
            completion_tokens=usage.completion_tokens if usage else None,
            reasoning_tokens=getattr(details, "reasoning_tokens", None) if details else None,
            endpoint=url,
            attempts=attempts,
        )

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()

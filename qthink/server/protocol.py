"""OpenAI request bodies as pydantic models: bad types and out-of-range values become 400s."""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

# Request fields of vLLM or OpenAI that would change the answer and that qthink does not implement:
# refused by name when set, never ignored. (value(s) that mean "off", why it is refused)
UNSUPPORTED_FIELDS = {
    "logit_bias": ((None, {}), "token biases are not implemented"),
    "bad_words": ((None, []), "banned words are not implemented; use stop or a grammar"),
    "allowed_token_ids": (
        (None, []),
        "token allow-lists are not implemented; use a grammar",
    ),
    "best_of": ((None, 1), "best_of is not implemented; ask for n answers"),
    "use_beam_search": ((None, False), "beam search is not implemented"),
    "length_penalty": ((None, 1, 1.0), "length_penalty belongs to beam search, which is not implemented"),
    "prompt_logprobs": ((None,), "prompt logprobs are not implemented"),
    "truncate_prompt_tokens": ((None,), "prompts are never truncated; shorten the prompt"),
    "echo": ((None, False), "echo is not implemented for chat"),
    "continue_final_message": ((None, False), "continuing the last message is not implemented"),
    "documents": ((None, []), "documents are not implemented; put them in a message"),
    "chat_template": ((None,), "the chat template is set when the server starts (--chat-template)"),
    "functions": ((None, []), "the legacy functions field is not implemented; send tools"),
    "function_call": ((None,), "the legacy function_call field is not implemented; send tool_choice"),
    "structured_outputs": ((None,), "send response_format or guided_json/guided_regex/guided_choice"),
    "guided_whitespace_pattern": ((None,), "a whitespace pattern for guided JSON is not implemented"),
    "logits_processors": ((None, []), "per-request logits processors are not implemented"),
    "return_tokens_as_token_ids": ((None, False), "token ids in place of token text are not implemented"),
    "mm_processor_kwargs": ((None, {}), "qthink serves text-only models"),
    "modalities": ((None, ["text"]), "qthink answers in text only"),
    "audio": ((None,), "qthink answers in text only"),
    "prediction": ((None,), "predicted outputs are not implemented"),
    "web_search_options": ((None,), "qthink has no web search"),
    "verbosity": ((None,), "verbosity is not implemented"),
    "cache_salt": (
        (None,),
        "per-salt prefix-cache isolation is not implemented (see --no-enable-prefix-caching)",
    ),
    "kv_transfer_params": ((None,), "KV transfer between servers is not implemented"),
    "vllm_xargs": ((None, {}), "vllm_xargs is vLLM's own extension point"),
}


def refuse_unsupported(extra: dict | None) -> None:
    """A 400 naming the first unsupported field that a request turns on."""
    for name, value in (extra or {}).items():
        off, why = UNSUPPORTED_FIELDS.get(name, ((value,), ""))
        if value not in off:
            raise PydanticCustomError(
                "unsupported_field", "{field} is not supported: {why}", {"field": name, "why": why}
            )


class Message(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict] | None = None
    reasoning_content: str | None = None
    tool_calls: list[dict] | None = None
    tool_call_id: str | None = None
    name: str | None = None

    def for_template(self) -> dict:
        """The message as the chat template reads it: clients of vLLM's newer convention send
        the thinking back as `reasoning`, which the template knows as `reasoning_content`."""
        data = self.model_dump(exclude_none=True)
        if "reasoning_content" not in data and isinstance(data.get("reasoning"), str):
            data["reasoning_content"] = data["reasoning"]
        return data


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")  # continuous_usage_stats is not implemented
    include_usage: bool = False


class SamplingFields(BaseModel):
    """Fields shared by chat and completions; unknown fields are accepted and ignored, as
    OpenAI-compatible servers do, but a known field with a bad type or value is refused."""

    model_config = ConfigDict(extra="allow")
    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=10)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1)
    min_p: float = Field(0.0, ge=0, le=1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    repetition_penalty: float = Field(1.0, gt=0)
    seed: int | None = None
    n: int = Field(1, ge=1, le=32)
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    max_tokens: int | None = Field(None, ge=1)
    min_tokens: int = Field(0, ge=0)
    ignore_eos: bool = False
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_thinking_tokens: int | None = Field(None, ge=0)
    thinking_token_budget: int | None = Field(None, ge=0)
    loop_guard: bool | dict | None = None  # end looping thinking: true, false or {"window", "count"}
    response_format: dict | None = None
    guided_json: dict | str | None = None
    guided_choice: list[str] | None = None
    guided_regex: str | None = None
    guided_grammar: str | None = None
    user: str | None = None

    @model_validator(mode="after")
    def _refuse_unsupported(self):
        refuse_unsupported(self.model_extra)
        return self


class ChatCompletionRequest(SamplingFields):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None
    parallel_tool_calls: bool = True
    chat_template_kwargs: dict | None = None
    include_reasoning: bool = True
    add_generation_prompt: bool = True
    reasoning_effort: str | None = None  # none/minimal/low/medium/high: a thinking budget


class CompletionRequest(SamplingFields):
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = Field(None, ge=0, le=20)
    echo: bool = False


class TokenizeRequest(BaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[Message] | None = None
    add_generation_prompt: bool = True
    tools: list[dict] | None = None
    chat_template_kwargs: dict | None = None


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]

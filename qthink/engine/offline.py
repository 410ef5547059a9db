"""LLM: the offline API with vLLM's names — generate() and chat() over the engine."""

from typing import cast

from tqdm.auto import tqdm

from qthink.engine.engine import LLMEngine
from qthink.engine.outputs import RequestOutput
from qthink.engine.sampling_params import SamplingParams

Prompt = str | list[int] | dict


class LLM:
    """`LLM(model=..., dtype=..., max_model_len=..., quantization=..., seed=...)`; engine knobs
    (max_num_seqs, max_num_batched_tokens, kv_cache_memory, block_size, ...) pass through."""

    def __init__(self, model: str, **kwargs):
        self.engine = LLMEngine(model, **kwargs)

    def get_tokenizer(self):
        return self.engine.tokenizer

    def generate(
        self,
        prompts: Prompt | list[Prompt],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Run every prompt to completion in one continuously batched engine; outputs in order."""
        if isinstance(prompts, (str, dict)) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params] * len(prompts)
        if len(params) != len(prompts):
            raise ValueError(f"{len(params)} SamplingParams for {len(prompts)} prompts")
        ids = []
        try:
            for prompt, p in zip(cast(list[Prompt], prompts), params):  # a lone prompt is wrapped above
                ids.append(self.engine.add_request(_prompt_input(prompt), p).request_id)
        except Exception:
            for rid in ids:
                self.engine.abort(rid)
            raise
        return self._run(ids, use_tqdm)

    def chat(
        self,
        messages: list[dict] | list[list[dict]],
        sampling_params: SamplingParams | list[SamplingParams] | None = None,
        tools: list[dict] | None = None,
        chat_template_kwargs: dict | None = None,
        add_generation_prompt: bool = True,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """One conversation or a list of them; outputs carry .reasoning_content and .content."""
        lone = messages and isinstance(messages[0], dict)
        conversations = cast(list[list[dict]], [messages] if lone else messages)
        tokenizer = self.engine.tokenizer
        prompts = [
            tokenizer.apply_chat_template(
                conv,
                tools=tools,
                add_generation_prompt=add_generation_prompt,
                tokenize=True,
                **(chat_template_kwargs or {}),
            )
            for conv in conversations
        ]
        token_prompts: list[Prompt] = [{"prompt_token_ids": p} for p in prompts]
        return self.generate(token_prompts, sampling_params, use_tqdm)

    def _run(self, request_ids: list[str], use_tqdm: bool) -> list[RequestOutput]:
        done: dict[str, RequestOutput] = {}
        bar = tqdm(total=len(request_ids), desc="generating", disable=not use_tqdm)
        wanted = set(request_ids)
        while len(done) < len(request_ids):
            if not self.engine.has_ready_work():
                self.engine.wait_for_grammars(0.5)
            for out in self.engine.step():
                if out.refusal is not None and out.request_id in wanted:
                    for rid in request_ids:
                        self.engine.abort(rid)
                    raise out.refusal
                if out.finished and out.request_id in wanted:
                    done[out.request_id] = out
                    bar.update(1)
        bar.close()
        return [done[rid] for rid in request_ids]


def _prompt_input(prompt: Prompt) -> str | list[int]:
    if isinstance(prompt, dict):
        if "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        return prompt["prompt"]
    return prompt

"""LLMEngine: requests in, one scheduled model step at a time, RequestOutputs out."""

import atexit
import concurrent.futures
import logging
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import cast

import torch

from qthink.config import ConfigError, EngineConfig, ModelConfig, SpeculativeConfig
from qthink.engine import tensor_parallel
from qthink.engine.block_manager import BlockManager
from qthink.engine.logits_processors import default_pipeline
from qthink.engine.loop_guard import LoopGuardConfig
from qthink.engine.outputs import Logprob, RequestOutput
from qthink.engine.rank_supervisor import Ranks
from qthink.engine.runner import ModelRunner, default_threads
from qthink.engine.sampler import SampledToken
from qthink.engine.sampling_params import SamplingParams
from qthink.engine.scheduler import ScheduledBatch, Scheduler
from qthink.engine.sequence import Sequence
from qthink.engine.sequence_output import SequenceOutput
from qthink.engine.spec.draft_model import DraftModelProposer, draft_model_config
from qthink.engine.spec.speculator import Speculator
from qthink.engine.structured import GrammarCompiler, GrammarJob
from qthink.errors import RequestError
from qthink.loader import load_model, resolve_dtype, resolve_model
from qthink.memory import KV_BYTES, available_memory, plan_kv_cache
from qthink.model.parallel import SINGLE, TensorParallel, check_divisible
from qthink.parsing.thinking import ThinkingFormat
from qthink.tokenizer import Tokenizer

log = logging.getLogger("qthink")


@dataclass
class RequestState:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    outputs: list[SequenceOutput]
    arrival: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    error: str | None = None
    refusal: RequestError | None = None  # refused before any output (its grammar did not compile)

    @property
    def finished(self) -> bool:
        return all(o.seq.finished for o in self.outputs)

    def output_of(self, seq: Sequence) -> SequenceOutput:
        return next(o for o in self.outputs if o.seq is seq)


# A step's result: each sequence that sampled, with the tokens it emits (one, or a verified
# draft and one more) or the error its run raised.
StepSamples = dict[Sequence, list[SampledToken] | Exception]


class LLMEngine:
    def __init__(
        self, model: str, config: EngineConfig | None = None, chat_template: str | None = None, **settings
    ):
        """`config`, or its fields as keyword arguments (vLLM's names: dtype, max_model_len, ...)."""
        if config is not None and settings:
            raise ConfigError(f"pass either an EngineConfig or settings, not both ({next(iter(settings))})")
        self.config = config = config or EngineConfig.from_kwargs(**settings)
        self.model_dir = resolve_model(model)
        self.model_config = ModelConfig.from_pretrained(
            self.model_dir,
            config.generation_config,
            config.override_generation_config,
            config.model_overrides(),
        )
        context_is_default = config.max_model_len is None
        config.validate(self.model_config)
        self.device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        config.num_threads = config.num_threads or max(1, default_threads() // config.tensor_parallel_size)
        if self.device.type == "cpu":
            torch.set_num_threads(config.num_threads)
        self.dtype = resolve_dtype(config.dtype, self.model_config)
        self.tokenizer = Tokenizer.from_pretrained(
            self.model_dir, chat_template=chat_template, literal_special_tokens=config.literal_special_tokens
        )
        self.thinking_format = ThinkingFormat.from_tokenizer(self.tokenizer, config.reasoning_parser)
        self.quantization = config.quantization
        num_blocks = self._plan_kv_blocks(context_is_default)  # max_model_len is final from here on
        quant = (config.quantization, config.quantization_group_size)
        self.ranks: Ranks | None = None  # ranks 1..N-1 under tensor parallelism
        try:
            tp = self._start_tensor_parallel(config.tensor_parallel_size, quant)
            num_blocks = self._load(tp, quant, num_blocks)
        except BaseException:
            if self.ranks:
                self.ranks.stop()
            raise
        pipeline = default_pipeline(self.tokenizer.encode, self.max_model_len)
        self.runner = ModelRunner(self.model, self.model_config, config, self.device, num_blocks, pipeline)
        self.blocks = BlockManager(num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.blocks, config.max_num_seqs, config.max_num_batched_tokens)
        self.grammars = GrammarCompiler(
            self.model_dir / "tokenizer.json",
            self.model_config.vocab_size,
            cast(int, self.tokenizer.eos_token_id),  # a checkpoint's tokenizer names its eos token
            config.grammar_compile_timeout,
        )
        self.grammar_jobs: dict[str, GrammarJob] = {}  # requests whose grammar is compiling
        self.wakeup: Callable[[], None] | None = None  # called from a worker when a grammar is done
        self.requests: dict[str, RequestState] = {}
        self.default_loop_guard = _loop_guard(config.loop_guard)
        self.speculator = self._speculator(config.speculative)
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.loop_guard_total = 0  # thinking ended early because it looped

    def _speculator(self, config: SpeculativeConfig | None) -> Speculator | None:
        if config is None:
            return None
        if self.ranks:
            raise ConfigError("speculative decoding does not run with tensor parallelism yet")
        draft = None
        if config.method == "draft_model":
            args = (self.model_config, self.config, self.dtype, self.device, self.runner.num_blocks)
            draft = DraftModelProposer(cast(str, config.model), *args)  # validated: draft_model names one
        return Speculator(config, self.max_model_len, draft)

    def _start_tensor_parallel(self, size: int, quant: tuple[str | None, int]) -> TensorParallel:
        """Start ranks 1..size-1 and join them as rank 0; a rank that dies first raises its error."""
        if size == 1:
            return SINGLE
        check_divisible(self.model_config, size)
        store = tensor_parallel.rendezvous_store()
        args = (size, store.port, str(self.model_dir), self.dtype, str(self.device), self.config, quant)
        self.ranks = Ranks.start(size, args)
        atexit.register(self.ranks.stop)
        with self.ranks.watching():
            return tensor_parallel.init_group(0, size, self.ranks.store(store), self.device)

    def _load(self, tp: TensorParallel, quant: tuple[str | None, int], num_blocks: int) -> int:
        """Load this rank's weights; with other ranks, agree on the KV block count."""
        with self.ranks.watching() if self.ranks else nullcontext():
            self.model = load_model(self.model_dir, self.dtype, self.device, tp, *quant, self.model_config)
            if self.ranks:
                num_blocks = tensor_parallel.handshake(num_blocks, self.model)
                self.ranks.running = True
        return num_blocks

    def close(self) -> None:
        """Stop the grammar workers and the tensor-parallel ranks."""
        self.grammars.close()
        if self.ranks:
            self.ranks.stop()

    def check_ranks(self) -> None:
        """Raise the error of a tensor-parallel rank that has ended, after stopping the others:
        without it the engine cannot run, and stays failed."""
        if self.ranks and self.ranks.failure:
            self.ranks.stop()
            raise self.ranks.failure

    def _raise_if_rank_died(self, error: Exception) -> None:
        """A step failed: if because a rank ended, fail the engine with that rank's error."""
        if self.ranks:
            self.ranks.explain(error)
            self.check_ranks()

    @property
    def max_model_len(self) -> int:
        return cast(int, self.config.max_model_len)  # set by _plan_kv_blocks when left open

    def _plan_kv_blocks(self, context_is_default: bool) -> int:
        """Size the KV cache from the memory free before loading; shortens an open context."""
        free = available_memory(self.device)
        spec = self.config.speculative
        draft = draft_model_config(cast(str, spec.model)) if spec and spec.method == "draft_model" else None
        plan = plan_kv_cache(
            self.model_config, self.config, _dtype_name(self.dtype), free, context_is_default, draft
        )
        if plan.max_model_len < self.max_model_len:
            self.config.max_model_len = plan.max_model_len
            log.warning(
                "max_model_len lowered to %d tokens to fit the KV cache (%s)", plan.max_model_len, plan.source
            )
        return plan.num_blocks

    # ---- requests -------------------------------------------------------------------------

    def add_request(
        self, prompt: str | list[int], params: SamplingParams | None = None, request_id: str | None = None
    ) -> RequestState:
        request_id = request_id or uuid.uuid4().hex
        if request_id in self.requests:
            raise RequestError(f"request id {request_id!r} is already in use", param="request_id")
        text = prompt if isinstance(prompt, str) else None
        prompt_ids = self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)
        params = (params or SamplingParams()).with_defaults(self.model_config.generation_defaults)
        if params.loop_guard is None:
            params.loop_guard = self.default_loop_guard
        max_tokens = self._check_lengths(prompt_ids, params)
        if params.prompt_logprobs is not None:
            raise RequestError("prompt_logprobs is not supported", param="prompt_logprobs")
        eos = () if params.ignore_eos else self.model_config.eos_token_ids
        seqs = [
            Sequence(request_id, i, prompt_ids, params, max_tokens, eos, self.thinking_format)
            for i in range(params.n)
        ]
        if params.structured_output is not None:
            self._compile_grammar(request_id, params.structured_output, seqs)
        for sibling in seqs[1:]:
            sibling.wait_for = seqs[0]  # share the prompt's blocks through the prefix cache
        outputs = [SequenceOutput(s, self.tokenizer) for s in seqs]
        state = RequestState(request_id, text, prompt_ids, params, outputs)
        self.requests[request_id] = state
        for seq in seqs:
            self.scheduler.add(seq)
        self.prompt_tokens_total += len(prompt_ids)
        return state

    def _compile_grammar(self, request_id: str, spec: dict, seqs: list[Sequence]) -> None:
        """Refuse an ill-formed or oversized spec now; compile the rest on a worker, while the
        scheduler runs the other requests and holds these sequences back."""
        job = self.grammars.submit(spec)
        self.grammar_jobs[request_id] = job
        for seq in seqs:
            seq.grammar_pending = True
        job.future.add_done_callback(lambda _: self.wakeup() if self.wakeup is not None else None)

    def _settle_grammars(self) -> list[RequestOutput]:
        """Give finished grammars to their sequences; refuse the requests whose grammar failed
        to compile or ran over its time (their outputs, each with the refusal)."""
        now, timeout = time.monotonic(), self.grammars.timeout
        refused = []
        for request_id, job in list(self.grammar_jobs.items()):
            if not job.settled(timeout, now):
                continue
            del self.grammar_jobs[request_id]
            state = self.requests.get(request_id)
            if state is None:
                continue  # aborted while compiling
            try:
                compiled = job.result(timeout)
            except RequestError as e:
                refused.append(self._refuse(state, e))
                continue
            for out in state.outputs:
                out.seq.grammar = compiled.state(active=not out.seq.prompt_opens_thinking)
                out.seq.grammar_pending = False
        return refused

    def _refuse(self, state: RequestState, error: RequestError) -> RequestOutput:
        """End a request that has made no output yet because of what it asked for."""
        log.info("request %s refused: %s", state.request_id, error)
        state.error, state.refusal = str(error), error
        for out in state.outputs:
            self.scheduler.finish(out.seq, "error")
        return self._request_output(state)

    def has_ready_work(self) -> bool:
        """A step would do something now: a sequence can run, or a grammar is settled."""
        now, timeout = time.monotonic(), self.grammars.timeout
        jobs = self.grammar_jobs.values()
        return self.scheduler.has_runnable() or any(job.settled(timeout, now) for job in jobs)

    def wait_for_grammars(self, timeout: float) -> None:
        """Block until a compiling grammar is done, or `timeout` s: for a caller that has
        nothing else to run (the offline API)."""
        futures = [job.future for job in self.grammar_jobs.values()]
        if futures:
            concurrent.futures.wait(futures, timeout, concurrent.futures.FIRST_COMPLETED)

    def _check_lengths(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """The one place that checks a request against the context; returns its max_tokens
        (by default, what the context leaves after the prompt)."""
        limit, n = self.max_model_len, len(prompt_ids)
        if n == 0:
            raise RequestError("the prompt is empty", param="prompt")
        bad = [t for t in prompt_ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise RequestError(f"prompt token id {bad[0]} is outside the vocabulary", param="prompt")
        bad = [t for t in params.stop_token_ids if not 0 <= t < self.model_config.vocab_size]
        if bad:
            raise RequestError(f"stop token id {bad[0]} is outside the vocabulary", param="stop_token_ids")
        if n >= limit:
            raise RequestError(
                f"the prompt has {n} tokens, but this model's context is {limit} tokens "
                "(prompt plus output); shorten the prompt",
                param="prompt",
                code="context_length_exceeded",
            )
        if params.max_tokens is not None and n + params.max_tokens > limit:
            raise RequestError(
                f"max_tokens={params.max_tokens} plus the prompt's {n} tokens exceeds the context "
                f"of {limit} tokens; ask for at most {limit - n}",
                param="max_tokens",
                code="context_length_exceeded",
            )
        return params.max_tokens or limit - n

    def abort(self, request_id: str) -> None:
        state = self.requests.pop(request_id, None)
        self.grammar_jobs.pop(request_id, None)
        if state is None:
            return
        for out in state.outputs:
            self.scheduler.finish(out.seq, "abort")

    def end_thinking(self, request_id: str) -> bool:
        """Close the request's thinking at its next step, as a spent budget does, so the model
        answers now; False when no such request is running."""
        state = self.requests.get(request_id)
        if state is None:
            return False
        for out in state.outputs:
            out.seq.end_thinking_now = True
        return True

    def has_unfinished(self) -> bool:
        return self.scheduler.has_work()

    # ---- the step -------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        """Run one scheduled batch; outputs of every request that changed (finished ones leave)."""
        self.check_ranks()
        refused = self._settle_grammars() if self.grammar_jobs else []
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        batch = self.scheduler.schedule()
        if not batch:
            return refused
        samples = self._run_isolating(batch)
        drafts = {seq: (seq.draft_ids, len(seq)) for seq in batch.seqs if seq.draft_ids}
        self.scheduler.advance(batch)
        outputs = self._postprocess(samples)
        for seq, (drafted, start) in drafts.items():
            self.scheduler.commit_drafts(seq, drafted, start)
            if not isinstance(samples.get(seq), Exception):
                speculator = cast(Speculator, self.speculator)  # only the speculator drafts
                speculator.record(seq, len(drafted), len(cast(list[SampledToken], samples[seq])) - 1)
        return refused + outputs

    def _run_isolating(self, batch: ScheduledBatch) -> StepSamples:
        """Run the batch; if it raises, run each sequence alone so one bad request fails alone.
        Re-running is safe: a step writes K/V to fixed slots and commits nothing before success."""
        try:
            return cast(StepSamples, self.runner.run(batch))
        except Exception as batch_error:
            self._raise_if_rank_died(batch_error)
            if len(batch.seqs) == 1:
                return {batch.seqs[0]: batch_error}
        samples: StepSamples = {}
        for seq, n in zip(batch.seqs, batch.num_tokens):
            try:
                samples.update(self.runner.run(ScheduledBatch([seq], [n])))
            except Exception as e:
                self._raise_if_rank_died(e)
                samples[seq] = e
        return samples

    def _postprocess(self, samples: StepSamples) -> list[RequestOutput]:
        """Append each sequence's tokens (or fail its request), finish the sequences that are
        done, and make the outputs of every request that changed."""
        touched: dict[str, RequestState] = {}
        for seq, sampled in samples.items():
            seq.draft_ids = []
            state = self.requests.get(seq.request_id)
            if seq.finished or state is None:
                continue
            if isinstance(sampled, Exception):
                self._fail(state, sampled)
            else:
                self._append_all(seq, state, sampled)
            touched[state.request_id] = state
        return [self._request_output(s) for s in touched.values()]

    def _append_all(self, seq: Sequence, state: RequestState, samples: list[SampledToken]) -> None:
        """Take a step's tokens in order, until one ends the sequence or its thinking must close
        (what the model computed after that point no longer follows the text; the logits
        pipeline forces the closing phrase next step)."""
        out = state.output_of(seq)
        for sampled in samples:
            matched = self._append(seq, state, out, sampled)
            self._finish_if_done(seq, out, sampled.token, matched)
            if seq.finished or seq.thinking_must_close():
                return

    def _append(
        self, seq: Sequence, state: RequestState, out: SequenceOutput, sampled: SampledToken
    ) -> str | None:
        """Append one sampled token and the rest of a forced span it starts; returns the stop
        string the text now ends with, if any."""
        if state.first_token is None:
            state.first_token = time.monotonic()
        lp = self._logprob_dict(seq, sampled)
        if seq.forced_tokens[:1] == [sampled.token] and seq.thinking_cut_by == "loop_guard":
            self.loop_guard_total += 1
        forced = seq.take_forced(sampled.token)
        new = [sampled.token, *forced]
        new_lps = [lp, *({t: Logprob(0.0, None, self.tokenizer.decode([t]))} for t in forced)] if lp else None
        for t in new:
            seq.append(t)
        self.generation_tokens_total += len(new)
        return out.add_tokens(new, new_lps)

    def _finish_if_done(self, seq: Sequence, out: SequenceOutput, token: int, matched: str | None) -> None:
        if matched is not None:
            self.scheduler.finish(seq, "stop", matched)
        elif token in seq.params.stop_token_ids:
            self.scheduler.finish(seq, "stop", token)
        elif token in seq.eos_ids:
            self.scheduler.finish(seq, "stop")
        elif seq.num_output_tokens >= seq.max_tokens or len(seq) >= self.max_model_len:
            self.scheduler.finish(seq, "length")
        if seq.finished:
            out.flush()
            if self.speculator is not None:
                self.speculator.finished(seq)

    def _logprob_dict(self, seq: Sequence, sampled: SampledToken) -> dict[int, Logprob] | None:
        k = seq.params.logprobs
        if k is None:
            return None
        decode = self.tokenizer.decode
        logprob = cast(float, sampled.logprob)  # a float: this request asked for logprobs
        chosen = Logprob(logprob, sampled.rank, decode([sampled.token]))
        entries = {sampled.token: chosen}
        for r, (t, lp) in enumerate(zip(sampled.top_ids[:k], sampled.top_logprobs[:k]), start=1):
            if lp != float("-inf"):  # a token the constraints ruled out is no alternative
                entries.setdefault(t, Logprob(lp, r, decode([t])))
        return entries

    def _fail(self, state: RequestState, error: Exception) -> None:
        log.exception("request %s failed inside the engine", state.request_id, exc_info=error)
        state.error = f"{type(error).__name__}: {error}"
        for out in state.outputs:
            self.scheduler.finish(out.seq, "error")

    def _request_output(self, state: RequestState) -> RequestOutput:
        completions = []
        for out in state.outputs:
            c = out.completion()
            if out.seq.finished and out.seq.finish_reason != "error":
                split = self.thinking_format.split(c.text, out.seq.prompt_opens_thinking)
                c.reasoning_content, c.content = split
            completions.append(c)
        finished = state.finished
        if finished:
            self.requests.pop(state.request_id, None)
        now = time.monotonic()
        metrics = {"arrival": state.arrival, "first_token": state.first_token, "now": now}
        return RequestOutput(
            request_id=state.request_id,
            prompt=state.prompt,
            prompt_token_ids=state.prompt_ids,
            outputs=completions,
            finished=finished,
            num_cached_tokens=state.outputs[0].seq.num_cached_tokens,
            metrics=metrics,
            error=state.error,
            refusal=state.refusal,
        )

    def stats(self) -> dict:
        return {
            "num_running": len(self.scheduler.running),
            "num_waiting": len(self.scheduler.waiting),
            "kv_blocks_total": self.blocks.num_blocks,
            "kv_blocks_free": self.blocks.num_free_blocks,
            "kv_usage": self.blocks.usage(),
            "prefix_cache_queries": self.blocks.queries,
            "prefix_cache_hits": self.blocks.hits,
            "prompt_tokens_total": self.prompt_tokens_total,
            "generation_tokens_total": self.generation_tokens_total,
            "num_preemptions": self.scheduler.num_preemptions,
            "loop_guard_total": self.loop_guard_total,
            **(self.speculator.stats() if self.speculator is not None else {}),
        }


def _loop_guard(value):
    try:
        LoopGuardConfig.parse(value)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return value


def _dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return name if name in KV_BYTES else "bfloat16"

"""The engine end to end on a tiny model: batching equals running alone, prefix reuse, seeds,
preemption, thinking budget, limits and aborts."""

import random

import pytest

from qthink import LLM, SamplingParams
from qthink.engine.sampling_params import THINKING_EARLY_STOP
from qthink.errors import RequestError


@pytest.fixture(scope="module")
def llm(tiny_model_dir):
    return LLM(
        model=str(tiny_model_dir),
        dtype="float32",
        max_model_len=512,
        kv_cache_memory=4 << 20,
        max_num_seqs=16,
        max_num_batched_tokens=256,
    )


def prompts(n, seed=0):
    rng = random.Random(seed)
    return [
        {"prompt_token_ids": [rng.randrange(1000, 100_000) for _ in range(rng.randrange(3, 120))]}
        for _ in range(n)
    ]


def test_batched_greedy_equals_alone_with_queueing_and_preemption(tiny_model_dir):
    # 6 sequences at most, and a KV cache too small for all of them: queueing and preemption.
    busy = LLM(
        model=str(tiny_model_dir),
        dtype="float32",
        max_model_len=256,
        kv_cache_memory=300 * 1024,
        block_size=8,
        max_num_seqs=6,
        max_num_batched_tokens=96,
    )
    alone = LLM(model=str(tiny_model_dir), dtype="float32", max_model_len=256, kv_cache_memory=4 << 20)
    ps = prompts(24)
    params = [
        SamplingParams(temperature=0, max_tokens=random.Random(i).randrange(4, 40), ignore_eos=True)
        for i in range(24)
    ]
    together = busy.generate(ps, params)
    assert busy.engine.stats()["num_preemptions"] > 0
    for p, sp, out in zip(ps, params, together):
        assert out.outputs[0].token_ids == alone.generate(p, sp)[0].outputs[0].token_ids
    assert busy.engine.blocks.num_free_blocks == busy.engine.blocks.num_blocks


def test_shared_prefix_reuses_blocks(llm):
    prefix = list(range(5000, 5000 + 40))  # 2 full blocks of 16, plus 8 tokens
    params = SamplingParams(temperature=0, max_tokens=8, ignore_eos=True)
    first = llm.generate({"prompt_token_ids": prefix + [7, 8, 9]}, params)[0]
    again = llm.generate({"prompt_token_ids": prefix + [7, 8, 9]}, params)[0]
    other = llm.generate({"prompt_token_ids": prefix + [1, 2]}, params)[0]
    assert again.num_cached_tokens == 32 and other.num_cached_tokens == 32
    assert again.outputs[0].token_ids == first.outputs[0].token_ids
    fresh = LLM(
        model=str(llm.engine.model_dir),
        dtype="float32",
        max_model_len=512,
        kv_cache_memory=4 << 20,
        enable_prefix_caching=False,
    )
    assert (
        fresh.generate({"prompt_token_ids": prefix + [1, 2]}, params)[0].outputs[0].token_ids
        == other.outputs[0].token_ids
    )


def test_seeded_sampling_is_independent_of_the_batch(llm):
    seeded = SamplingParams(temperature=1.0, top_p=0.9, seed=1234, max_tokens=20, ignore_eos=True)
    p = prompts(1, seed=5)[0]
    alone = llm.generate(p, seeded)[0].outputs[0].token_ids
    noise = [SamplingParams(temperature=1.0, max_tokens=25, ignore_eos=True)] * 7
    outs = llm.generate(prompts(7, seed=9) + [p], noise + [seeded])
    assert outs[-1].outputs[0].token_ids == alone


def test_n_samples_share_prompt_blocks(llm):
    p = {"prompt_token_ids": list(range(9000, 9050))}
    out = llm.generate(
        p, SamplingParams(n=3, temperature=50.0, top_k=-1, top_p=1.0, seed=3, max_tokens=10, ignore_eos=True)
    )[0]
    assert [o.index for o in out.outputs] == [0, 1, 2]
    assert len({tuple(o.token_ids) for o in out.outputs}) > 1
    assert llm.engine.blocks.hits >= 6  # siblings found the 3 full prompt blocks


def test_thinking_budget_closes_thinking_then_answers(llm):
    tok = llm.get_tokenizer()
    conv = [{"role": "user", "content": "What is 2+2?"}]
    params = SamplingParams(temperature=0, max_tokens=60, max_thinking_tokens=6, ignore_eos=True)
    out = llm.chat(conv, params)[0].outputs[0]
    phrase = tok.encode(THINKING_EARLY_STOP)
    assert out.token_ids[6 : 6 + len(phrase)] == phrase
    think_end = tok.token_to_id("</think>")
    assert out.token_ids.index(think_end) == 6 + phrase.index(think_end)
    # The answer follows the closed thinking (a random model's answer is noise, so only its length).
    assert len(out.token_ids) == 60
    assert tok.decode(out.token_ids[:6]).strip("\n") in out.reasoning_content


def test_vllm_alias_thinking_token_budget():
    assert SamplingParams(thinking_token_budget=5).max_thinking_tokens == 5


def test_limits_are_rejected_before_the_engine(llm):
    with pytest.raises(RequestError, match="prompt has 600 tokens.*context is 512"):
        llm.generate({"prompt_token_ids": [5] * 600})
    with pytest.raises(RequestError, match="max_tokens=500 plus the prompt's 20 tokens"):
        llm.generate({"prompt_token_ids": [5] * 20}, SamplingParams(max_tokens=500))
    assert not llm.engine.requests


def test_abort_frees_every_block(llm):
    engine = llm.engine
    state = engine.add_request([11] * 100, SamplingParams(max_tokens=50, ignore_eos=True))
    engine.step()
    assert engine.blocks.num_free_blocks < engine.blocks.num_blocks
    engine.abort(state.request_id)
    assert engine.blocks.num_free_blocks == engine.blocks.num_blocks
    assert not engine.has_unfinished()


def test_stop_strings_and_stop_token_ids(llm):
    p = prompts(1, seed=11)[0]
    base = llm.generate(p, SamplingParams(temperature=0, max_tokens=30, ignore_eos=True))[0].outputs[0]
    cut = len(base.text) // 2
    stop = base.text[cut : cut + 3]
    if stop and stop not in base.text[:cut]:
        out = llm.generate(p, SamplingParams(temperature=0, max_tokens=30, stop=[stop]))[0].outputs[0]
        assert out.text == base.text[: base.text.index(stop)]
        assert out.finish_reason == "stop" and out.stop_reason == stop
    third = base.token_ids[3]
    out = llm.generate(p, SamplingParams(temperature=0, max_tokens=30, stop_token_ids=[third]))[0]
    assert out.outputs[0].token_ids == base.token_ids[: base.token_ids.index(third) + 1]
    assert out.outputs[0].stop_reason == third


def test_logprobs_shape(llm):
    out = llm.generate(
        prompts(1)[0], SamplingParams(temperature=0, max_tokens=5, logprobs=3, ignore_eos=True)
    )[0].outputs[0]
    assert len(out.logprobs) == 5
    for token, entry in zip(out.token_ids, out.logprobs):
        assert token in entry and entry[token].rank == 1
        assert len(entry) == 3
        assert max(e.logprob for e in entry.values()) == entry[token].logprob

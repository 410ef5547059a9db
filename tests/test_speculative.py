"""Speculative decoding in the engine: greedy output identical with and without it, sampled
output with the same distribution, rejected slots freed, switch-offs, and metrics."""

import random

import pytest

from qthink.config import ConfigError, SpeculativeConfig
from qthink.engine.offline import LLM
from qthink.engine.sampling_params import SamplingParams
from tests.helpers.greedy import assert_same_greedy

NGRAM = {"method": "ngram", "num_speculative_tokens": 4, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
ENGINE = {"kv_cache_memory": 4 << 20, "max_model_len": 512, "max_num_seqs": 8}


@pytest.fixture(scope="module")
def varied_model(make_checkpoint):
    """Random weights large enough that greedy text varies, so drafts are often rejected."""
    return make_checkpoint(seed=2, initializer_range=0.4)


def _prompts(n: int) -> list[list[int]]:
    rng = random.Random(0)
    out = []
    for _ in range(n):
        motif = [rng.randrange(100, 5000) for _ in range(rng.randrange(2, 6))]
        out.append([rng.randrange(100, 5000) for _ in range(rng.randrange(1, 8))] + motif * 3)
    return out


def _generate(model, prompts, params, **kwargs):
    llm = LLM(str(model), **ENGINE, **kwargs)
    outs = llm.generate(prompts, params)
    return llm, [o.outputs[0] for o in outs]


def test_greedy_output_is_identical_batched_with_rejections_and_no_leaks(varied_model, tiny_model_dir):
    prompts = _prompts(6)
    params = [
        SamplingParams(temperature=0, max_tokens=10 + 6 * i, ignore_eos=True, logprobs=2) for i in range(6)
    ]
    # penalties count the drafted tokens before each verified position
    params[1] = SamplingParams(
        temperature=0, max_tokens=30, logprobs=2, presence_penalty=1.5, repetition_penalty=1.3
    )
    params[2] = SamplingParams(temperature=0, max_tokens=30, logprobs=2, frequency_penalty=1.0, min_tokens=20)
    for model in (varied_model, tiny_model_dir):
        _, plain = _generate(model, prompts, params)
        spec = {**NGRAM, "disable_by_batch_size": 8}
        llm, fast = _generate(model, prompts, params, speculative_config=spec)
        assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
        for a, b in zip(fast, plain):
            assert [list(d) for d in a.logprobs] == [list(d) for d in b.logprobs]  # top ids per token
            for da, db in zip(a.logprobs, b.logprobs):
                for t in da:
                    assert da[t].logprob == pytest.approx(db[t].logprob, abs=1e-4)
                    assert da[t].rank == db[t].rank
        stats = llm.engine.stats()
        assert stats["spec_decode_num_draft_tokens"] > 0
        assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
        if model is varied_model:
            assert 0 < stats["spec_decode_acceptance_rate"] < 1  # both accepted and rejected drafts
        else:
            assert stats["spec_decode_acceptance_rate"] > 0.9  # this one loops: drafts pay off
            assert stats["spec_decode_mean_accepted_length"] > 3


def test_prefix_cache_after_rollback_serves_the_same_text(varied_model):
    prompt = _prompts(1)[0]
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    llm = LLM(str(varied_model), **ENGINE, speculative_config=NGRAM)
    first = llm.generate([prompt], params)[0].outputs[0].token_ids
    again = llm.generate([prompt + first[:35]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert again[0].num_cached_tokens >= 16  # full blocks written during speculation are reused
    assert again[0].outputs[0].token_ids == first[35:40]


def test_batch_switch_off_and_per_sequence_pause(varied_model):
    prompts = _prompts(4)
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    llm, _ = _generate(
        varied_model, prompts, params, speculative_config={**NGRAM, "disable_by_batch_size": 2}
    )
    assert llm.engine.stats()["spec_decode_num_drafts"] == 0  # four decoding sequences: never
    strict = {**NGRAM, "min_acceptance_rate": 0.99, "probe_interval": 1000}
    llm, _ = _generate(varied_model, prompts[:1], params, speculative_config=strict)
    paused = llm.engine.stats()["spec_decode_num_drafts"]
    llm, _ = _generate(varied_model, prompts[:1], params, speculative_config=NGRAM)
    assert paused < llm.engine.stats()["spec_decode_num_drafts"]


def _two_sample_close(a: dict, b: dict, n: int, z: float = 4.5) -> None:
    """Per bin, the two frequencies differ by less than z standard errors of a difference of
    two binomial proportions (pooled): a false alarm per bin near 7e-6."""
    for key in set(a) | set(b):
        fa, fb = a.get(key, 0) / n, b.get(key, 0) / n
        pooled = (fa + fb) / 2
        bound = z * (2 * pooled * (1 - pooled) / n) ** 0.5 + 2 / n
        assert abs(fa - fb) <= bound, (key, fa, fb, bound)


def test_sampled_output_keeps_the_distribution(tiny_model_dir):
    """The first three tokens' joint frequencies with and without speculation agree."""
    prompt = [1000, 3, 3, 3]
    # the logit gap after "3" is ~22: a high temperature makes the top three tokens comparable
    params = SamplingParams(temperature=20.0, top_k=3, max_tokens=3, ignore_eos=True)
    n = 400
    counts = []
    for spec in (None, {**NGRAM, "disable_by_batch_size": 64}):
        llm = LLM(
            str(tiny_model_dir),
            kv_cache_memory=16 << 20,
            max_model_len=64,
            max_num_seqs=64,
            seed=1,
            speculative_config=spec,
        )
        outs = llm.generate([prompt] * n, params)
        joint: dict = {}
        for o in outs:
            key = tuple(o.outputs[0].token_ids)
            joint[key] = joint.get(key, 0) + 1
        counts.append(joint)
        if spec:
            stats = llm.engine.stats()
            assert 0.05 < stats["spec_decode_acceptance_rate"] < 0.95
    _two_sample_close(counts[0], counts[1], n)


def test_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="'lookahead' is not supported"):
        SpeculativeConfig.from_dict({"lookahead": 3})
    with pytest.raises(ConfigError, match="num_speculative_tokens"):
        SpeculativeConfig.from_dict({"num_speculative_tokens": 0})
    with pytest.raises(ConfigError, match="min_acceptance_rate"):
        SpeculativeConfig.from_dict({"min_acceptance_rate": 2})
    with pytest.raises(ConfigError, match="only by, method draft_model"):
        SpeculativeConfig.from_dict({"method": "draft_model"})
    assert SpeculativeConfig.from_dict({"model": "/x", "num_speculative_tokens": 3}).method == "draft_model"


def test_nano_chat_identical_with_stops_budget_grammar_and_logprobs():
    """qthink-nano's real text, batched: stop strings, a thinking budget (the early-stop phrase
    forced after the drafts), a grammar-constrained answer and logprobs come out the same."""
    from qthink.demo import default_model_path
    from qthink.nano.data import arithmetic
    from qthink.nano.evaluate import HELD_OUT_SEED

    rng = random.Random(HELD_OUT_SEED)
    convs = [arithmetic(rng)[:-1] for _ in range(4)]
    greedy = {"temperature": 0, "max_tokens": 200, "logprobs": 2}
    params = [
        SamplingParams(**greedy),
        SamplingParams(**greedy, stop=["carry 1"]),
        SamplingParams(**greedy, max_thinking_tokens=12),
        SamplingParams(**greedy, structured_output={"regex": "The answer is [0-9]+\\."}),
    ]
    results = []
    for spec in (None, {**NGRAM, "disable_by_batch_size": 8, "min_acceptance_rate": 0.0}):
        llm = LLM(
            str(default_model_path()), max_model_len=1024, kv_cache_memory=16 << 20, speculative_config=spec
        )
        outs = [o.outputs[0] for o in llm.chat(convs, params)]
        results.append(outs)
        stats = llm.engine.stats()
        assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    plain, fast = results
    assert stats["spec_decode_num_accepted_tokens"] > 0
    for a, b in zip(plain, fast):
        # after the forced early-stop phrase nano's answer is off its training and full of logit ties
        assert_same_greedy(a, b)
        assert a.thinking_cut_by == b.thinking_cut_by
    assert plain[1].stop_reason == "carry 1" and plain[2].thinking_cut_by == "thinking_budget"


def test_suffix_drafts_from_earlier_requests_with_identical_output():
    """qthink-nano's answers share a template: after a first batch finishes, the suffix method
    drafts it for new tasks (accepting more than own-text lookup), and the text is unchanged."""
    from qthink.demo import default_model_path
    from qthink.nano.data import arithmetic
    from qthink.nano.evaluate import HELD_OUT_SEED

    rng = random.Random(HELD_OUT_SEED)
    convs = [arithmetic(rng)[:-1] for _ in range(6)]
    params = SamplingParams(temperature=0, max_tokens=200)
    results, accepted = [], []
    for spec in (
        None,
        {**NGRAM, "prompt_lookup_min": 2, "disable_by_batch_size": 8},
        {**NGRAM, "prompt_lookup_min": 2, "disable_by_batch_size": 8, "method": "suffix"},
    ):
        llm = LLM(
            str(default_model_path()), max_model_len=1024, kv_cache_memory=16 << 20, speculative_config=spec
        )
        outs = [o.outputs[0].token_ids for o in llm.chat(convs[:3], params) + llm.chat(convs[3:], params)]
        results.append(outs)
        stats = llm.engine.stats()
        accepted.append(stats.get("spec_decode_num_accepted_tokens", 0))
        assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    assert results[0] == results[1] == results[2]
    assert accepted[2] > 1.5 * accepted[1]


@pytest.mark.parametrize("same_weights", [True, False])
def test_draft_model_greedy_identical_batched(varied_model, make_checkpoint, same_weights):
    """A tiny random draft with the target's tokenizer: the target's own weights (every draft
    accepted) or other weights (most rejected); the text is the target's either way, and the
    draft's cache is freed with its sequences."""
    draft = varied_model if same_weights else make_checkpoint(seed=7, initializer_range=0.4)
    prompts = _prompts(4)
    params = [SamplingParams(temperature=0, max_tokens=12 + 5 * i, ignore_eos=True) for i in range(4)]
    _, plain = _generate(varied_model, prompts, params)
    config = {
        "model": str(draft),
        "num_speculative_tokens": 3,
        "disable_by_batch_size": 8,
        "min_acceptance_rate": 0,
    }
    llm, fast = _generate(varied_model, prompts, params, speculative_config=config)
    assert [c.token_ids for c in fast] == [c.token_ids for c in plain]
    stats = llm.engine.stats()
    assert stats["kv_blocks_free"] == stats["kv_blocks_total"]
    rate = stats["spec_decode_acceptance_rate"]
    assert rate > 0.95 if same_weights else rate < 0.5
    llm.engine.speculator.propose([])  # the next step lets go of finished sequences' shadows
    draft_blocks = llm.engine.speculator.draft_model.blocks
    assert draft_blocks.num_free_blocks == draft_blocks.num_blocks


def test_draft_model_must_share_the_vocabulary(varied_model, make_checkpoint):
    from qthink.config import ConfigError

    other = make_checkpoint(seed=1, vocab_size=1000)
    with pytest.raises(ConfigError, match="share the target's tokenizer"):
        LLM(str(varied_model), **ENGINE, speculative_config={"model": str(other)})

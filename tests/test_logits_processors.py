"""The logits pipeline: constraints (forced tokens, the thinking budget) before reweighting
(penalties); logprobs are taken after the constraints only."""

import pytest
import torch

from qthink.engine.logits_processors import (
    ForcedTokens,
    LogitsPipeline,
    Penalties,
    StepLogits,
    ThinkingBudget,
    default_pipeline,
)
from qthink.engine.sampler import SamplingBatch, sample
from qthink.engine.sampling_params import SamplingParams
from qthink.engine.sequence import Sequence
from qthink.parsing.thinking import ThinkingFormat

FORMAT = ThinkingFormat(start_id=7, end_id=8)
PHRASE = [3, 4, 8, 5]  # what the fake encoder turns the early-stop phrase into: ... </think> ...
VOCAB = 16


def sequence(**params) -> Sequence:
    prompt = [1, 2, FORMAT.start_id]  # the prompt opens the thinking
    return Sequence("r", 0, prompt, SamplingParams(**params), max_tokens=40, thinking_format=FORMAT)


def step(seqs, logits):
    batch = SamplingBatch.build(
        [s.params.with_defaults({}) for s in seqs],
        [s.token_ids[: s.num_prompt_tokens] for s in seqs],
        [s.output_ids for s in seqs],
        [None] * len(seqs),
        logits.shape[-1],
        "cpu",
    )
    return StepLogits(seqs, batch), batch


def test_a_spent_budget_forces_the_phrase_that_closes_the_thinking():
    spent, free = sequence(max_thinking_tokens=2, temperature=0, logprobs=0), sequence(temperature=0)
    for seq in (spent, free):
        seq.append(10)
        seq.append(11)
    logits = torch.randn(2, VOCAB)
    state, batch = step([spent, free], logits.clone())
    pipeline = default_pipeline(lambda text: list(PHRASE), max_model_len=100)
    constrained, processed = pipeline(logits.clone(), state)
    result = sample(constrained, batch, processed)
    assert result.token_ids.tolist() == [PHRASE[0], int(logits[1].argmax())]
    assert result.logprobs[0].item() == 0.0  # the only token the constraints leave
    assert spent.take_forced(PHRASE[0]) == PHRASE[1:] and not free.forced_tokens
    for token in PHRASE:
        spent.append(token)
    assert not spent.thinking and spent.num_thinking_tokens == 2 + 2  # </think> is not counted


def test_the_forced_span_is_cut_to_the_room_left():
    seq = sequence(max_thinking_tokens=0)
    state, _ = step([seq], torch.zeros(1, VOCAB))
    ThinkingBudget(lambda text: list(PHRASE), max_model_len=len(seq) + 2)(torch.zeros(1, VOCAB), state)
    assert seq.forced_tokens == PHRASE[:2]


def test_logprobs_come_before_the_penalties():
    seq = sequence(repetition_penalty=2.0, temperature=0)
    seq.append(5)
    logits = torch.randn(1, VOCAB)
    state, batch = step([seq], logits)
    constrained, processed = LogitsPipeline([ForcedTokens(), Penalties()])(logits, state)
    assert constrained is logits and not torch.equal(processed, logits)
    assert (
        sample(logits, batch).token_ids.tolist() == sample(constrained, batch, processed).token_ids.tolist()
    )


def test_reweighting_may_not_come_before_a_constraint():
    with pytest.raises(ValueError, match="must come before"):
        LogitsPipeline([Penalties(), ForcedTokens()])


def test_the_pipeline_says_which_sequences_it_touches():
    """A sequence it does not touch takes the raw argmax (the runner's greedy path): none with a
    penalty, pending min_tokens, forced tokens or a thinking budget spent."""
    pipeline = default_pipeline(lambda text: PHRASE, max_model_len=100)
    assert not pipeline.touches(sequence(temperature=0))
    assert not pipeline.touches(sequence(temperature=0, min_tokens=0, repetition_penalty=1.0))
    for params in ({"repetition_penalty": 1.2}, {"presence_penalty": 0.5}, {"frequency_penalty": -0.5}):
        assert pipeline.touches(sequence(temperature=0, **params))
    short = sequence(temperature=0, min_tokens=2)
    assert pipeline.touches(short)
    short.append(11)
    short.append(12)
    assert not pipeline.touches(short)  # min_tokens reached: EOS is no longer blocked
    forced = sequence(temperature=0)
    forced.forced_tokens = [5]
    assert pipeline.touches(forced)
    spent = sequence(temperature=0, max_thinking_tokens=1)
    spent.append(11)
    assert spent.thinking_must_close() and pipeline.touches(spent)

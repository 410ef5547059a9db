"""The greedy output layer: the native argmax against linear_bf16's logits and torch's max, its
deduplicated weights, and greedy engine output through it against the logits path."""

import pytest
import torch

from qthink.engine.offline import LLM
from qthink.engine.sampling_params import SamplingParams
from qthink.kernels import kernel_ops, linear_kernels_available
from qthink.model.greedy_head import GreedyHead, distinct_rows
from qthink.model.quant import Bf16Linear

needs_kernels = pytest.mark.skipif(
    not linear_kernels_available(), reason="no AVX-512 BF16 kernels on this CPU"
)


def logits_argmax(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """What the sampler takes: float32 of linear_bf16's bf16 logits, then torch's max."""
    return kernel_ops().linear_bf16(x, w, None).float().max(-1).indices


def values(shape, seed: int, ties: bool) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if ties:  # small integers: many rows score exactly the same
        return torch.randint(-2, 3, shape, generator=g).bfloat16()
    return torch.randn(shape, generator=g).bfloat16()


@needs_kernels
@pytest.mark.parametrize("m", [1, 2, 3, 4, 5, 7, 9, 16])
@pytest.mark.parametrize("n,k", [(1, 32), (17, 64), (100, 40), (1027, 128), (3000, 96)])
@pytest.mark.parametrize("ties", [False, True])
def test_greedy_head_is_the_argmax_of_the_logits(m, n, k, ties, kernel_path):
    x, w = values((m, k), 1, ties), values((n, k), 2, ties)
    assert torch.equal(kernel_ops().greedy_head(x, w), logits_argmax(x, w))


@needs_kernels
@pytest.mark.parametrize("threads", [1, 2])
def test_greedy_head_threads_and_a_large_k(threads):
    x, w = values((5, 2560), 3, False), values((4100, 2560), 4, False)
    kernel_ops().set_num_threads(threads)
    try:
        assert torch.equal(kernel_ops().greedy_head(x, w), logits_argmax(x, w))
    finally:
        kernel_ops().set_num_threads(0)


@needs_kernels
def test_greedy_head_nan_rows_take_the_first_nan_as_torch_does():
    x, w = values((3, 64), 5, False), values((600, 64), 6, False)
    w[530], w[70] = float("nan"), float("nan")
    assert kernel_ops().greedy_head(x, w).tolist() == logits_argmax(x, w).tolist() == [70, 70, 70]


@needs_kernels
def test_greedy_head_rejects_bad_inputs():
    w = values((10, 64), 7, False)
    with pytest.raises(RuntimeError, match="x must be"):
        kernel_ops().greedy_head(values((2, 32), 8, False), w)
    with pytest.raises(RuntimeError, match="w must be"):
        kernel_ops().greedy_head(values((2, 64), 8, False), w.float())


def padded_head(vocab: int, used: int, k: int) -> torch.Tensor:
    """A vocabulary whose unused rows are one filler row (as qthink-nano's), used rows spread out."""
    w = torch.zeros(vocab, k, dtype=torch.bfloat16)
    w[:, 0] = -4.0
    ids = torch.randperm(vocab, generator=torch.Generator().manual_seed(9))[:used]
    w[ids] = values((used, k), 10, False)
    return w


def test_distinct_rows_drop_copies_only_when_many():
    w = padded_head(5000, 300, 64)
    kept = distinct_rows(w)
    assert kept is not None and len(kept) == 301  # the used rows and the filler's first occurrence
    assert torch.equal(torch.unique(w[kept], dim=0), torch.unique(w, dim=0))
    assert distinct_rows(values((5000, 64), 11, False)) is None  # no copies: the full weights
    same_prefix = values((4000, 64), 12, False)
    same_prefix[:, :32] = 0.0  # every row shares its first 32 weights but none is a copy
    assert distinct_rows(same_prefix) is None


@needs_kernels
@pytest.mark.parametrize("m", [1, 5])
def test_deduplicated_head_picks_the_same_tokens(m):
    w = padded_head(20000, 500, 128)
    head = GreedyHead(Bf16Linear(torch.nn.Linear(128, 20000, bias=False, dtype=torch.bfloat16)))
    head.lm_head.weight.data = w
    head = GreedyHead(head.lm_head)
    assert head.token_ids is not None and head.weight is not None and len(head.weight) == 501
    x = values((m, 128), 13, False)
    x[:, 0] = 8.0  # the filler scores -32: some rows' best is a filler token, so its lowest id
    assert torch.equal(head(x), logits_argmax(x, w))


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_engine_greedy_tokens_match_the_logits_path(tiny_model_dir, dtype):
    """Without logprobs the runner takes each row's argmax straight from the output layer; with
    them, it samples from the logits: the same tokens, with and without speculation."""
    prompts = [[100 + i, 200 + 3 * i, 300, 400 + i, 300, 200] * 3 for i in range(4)]
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    with_logprobs = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True, logprobs=1)
    spec = {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_min": 1, "prompt_lookup_max": 3}
    engine = {"dtype": dtype, "kv_cache_memory": 4 << 20, "max_model_len": 256}
    texts = []
    for settings in ({}, {"speculative_config": {**spec, "disable_by_batch_size": 8}}):
        llm = LLM(str(tiny_model_dir), **engine, **settings)
        for params in (plain, with_logprobs):
            texts.append([o.outputs[0].token_ids for o in llm.generate(prompts, params)])
        assert llm.engine.model.greedy_head is not None  # the greedy path ran
    assert all(t == texts[0] for t in texts[1:])

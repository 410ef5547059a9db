"""The Qwen3/Qwen2 module matches transformers: log-probabilities and greedy generation."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from qthink.loader import load_model

CONFIGS = {
    "gqa1-tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "gqa2-untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "gqa4-headdim": dict(num_attention_heads=8, num_key_value_heads=2, head_dim=16, hidden_size=64),
    "qwen2": dict(
        model_type="qwen2", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False
    ),
    # YaRN over a pretrained context of 16: the paged engine runs far past it (prompt 14 + 64).
    "yarn": dict(
        tie_word_embeddings=False,
        rope_scaling={"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 16},
    ),
}


@pytest.fixture(scope="module", params=list(CONFIGS))
def pair(request, make_checkpoint):
    path = make_checkpoint(seed=len(request.param), **CONFIGS[request.param])
    ours = load_model(path, "float32")
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return path, ours, ref


def test_logprobs_match_every_position(pair):
    _, ours, ref = pair
    ids = torch.randint(0, 151_936, (2, 48), generator=torch.Generator().manual_seed(0))
    positions = torch.arange(48).expand(2, 48)
    with torch.no_grad():
        a = torch.log_softmax(ours(ids, positions).float(), -1)
        b = torch.log_softmax(ref(ids).logits.float(), -1)
    assert (a - b).abs().max().item() < 1e-4


def test_greedy_64_tokens_match_engine(pair):
    from qthink import LLM, SamplingParams

    path, _, ref = pair
    prompt = [151644, 872, 198, 9707, 11, 1246, 525, 498, 30, 151645, 198, 151644, 77091, 198]
    with torch.no_grad():
        expected = ref.generate(
            torch.tensor([prompt]), max_new_tokens=64, do_sample=False, eos_token_id=None, pad_token_id=0
        )[0, len(prompt) :].tolist()
    llm = LLM(model=str(path), dtype="float32", max_model_len=256, kv_cache_memory=1 << 24)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    out = llm.generate({"prompt_token_ids": prompt}, params)[0].outputs[0]
    assert out.token_ids == expected

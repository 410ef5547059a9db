"""Shared test fixtures: the real Qwen3 tokenizer and tiny random-weight checkpoints."""

import pytest

from qthink.parsing.thinking import ThinkingFormat
from qthink.random_checkpoint import tiny_config, tokenizer_files_dir, write_random_checkpoint
from qthink.tokenizer import Tokenizer


@pytest.fixture(scope="session")
def tokenizer_dir():
    return tokenizer_files_dir()


@pytest.fixture(scope="session")
def tok(tokenizer_dir):
    """The real Qwen3 tokenizer with its own (hybrid Qwen3) chat template."""
    return Tokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def fmt(tok):
    """The thinking format read from that tokenizer's vocabulary."""
    return ThinkingFormat.from_tokenizer(tok)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A tiny Qwen3 checkpoint (float32, random weights, real tokenizer, 2507 template)."""
    return write_random_checkpoint(tmp_path_factory.mktemp("tiny-qwen3"), tiny_config(), seed=0)


@pytest.fixture(scope="session")
def make_checkpoint(tmp_path_factory):
    """Factory: make_checkpoint(**config_overrides, seed=0, shards=1) -> folder."""

    def make(seed: int = 0, shards: int = 1, **overrides):
        folder = tmp_path_factory.mktemp("ckpt")
        return write_random_checkpoint(folder, tiny_config(**overrides), seed=seed, shards=shards)

    return make


@pytest.fixture(params=["avx512", "amx"])
def kernel_path(request):
    """Runs a test on each kernel path: AVX-512 alone, and AMX tiles where the CPU has them."""
    from qthink.kernels import kernel_ops

    amx = request.param == "amx"
    if kernel_ops().use_amx(amx) != amx:
        kernel_ops().use_amx(True)
        pytest.skip("no AMX tiles on this CPU")
    yield request.param
    kernel_ops().use_amx(True)

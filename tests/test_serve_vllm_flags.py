"""`vllm serve` command lines run with `vllm` replaced by `qthink`; flags come from EngineConfig."""

import argparse
import json
import subprocess
import sys
from dataclasses import fields

import openai
import pytest

from qthink.config import ConfigError, EngineConfig, ModelConfig
from qthink.engine_flags import add_engine_arguments, engine_config_from_args
from tests.helpers.server import free_port, stop, wait_healthy


def qthink(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "qthink", *args], capture_output=True, text=True, timeout=120
    )


def test_every_engine_setting_has_its_flag_in_a_group():
    out = qthink("serve", "--help").stdout
    for f in fields(EngineConfig):
        assert "--" + f.name.replace("_", "-") in out, f.name
    for group in ("model and weights:", "memory and KV cache:", "scheduling:", "server:", "chat, reasoning"):
        assert group in out
    assert "--no-enable-prefix-caching" in out


def test_flags_given_override_defaults_and_nothing_else():
    parser = argparse.ArgumentParser()
    add_engine_arguments(parser)
    args = parser.parse_args(["--max-model-len", "128", "--no-enable-prefix-caching", "--dtype", "half"])
    config = engine_config_from_args(args)
    assert (config.max_model_len, config.enable_prefix_caching, config.dtype) == (128, False, "half")
    assert config.max_num_seqs == EngineConfig().max_num_seqs
    args = parser.parse_args(["--speculative-config", '{"method": "ngram", "num_speculative_tokens": 3}'])
    assert engine_config_from_args(args).speculative.num_speculative_tokens == 3


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["serve", "--max-model-length", "64"],
            "unrecognized argument --max-model-length; did you mean --max-model-len?",
        ),
        (["serve", "--gpu-memory-util=0.9"], "did you mean --gpu-memory-utilization?"),
        (["serve", "--tool-call-parser", "mistral"], "invalid choice: 'mistral'"),
        (["serve", "--quantization", "awq"], "--quantization: invalid choice: 'awq'"),
        (["serve", "--override-generation-config", "{temp"], "--override-generation-config: not valid JSON"),
        (["generate", "--max-tokns", "3", "hi"], "did you mean --max-tokens?"),
    ],
)
def test_bad_flags_name_what_is_wrong(argv, message):
    r = qthink(*argv)
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_bad_values_are_one_line_not_a_traceback(tiny_model_dir):
    r = qthink("serve", str(tiny_model_dir), "--max-model-len", "999999", "--dtype", "float32")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "max_model_len must be in 1..4096 for this model, got 999999" in r.stderr


def test_engine_settings_are_validated_by_name(tiny_model_dir):
    model = ModelConfig.from_pretrained(tiny_model_dir)
    with pytest.raises(
        ConfigError, match="unknown engine setting 'max_model_length'; did you mean 'max_model_len'"
    ):
        EngineConfig.from_kwargs(max_model_length=5)
    for bad, message in [
        (dict(gpu_memory_utilization=1.5), "gpu_memory_utilization must be in"),
        (dict(kv_cache_dtype="int3"), "kv_cache_dtype must be one of"),
        (dict(speculative_config={"method": "eagle"}), "method 'eagle' is not supported"),
        (dict(speculative_config={"num_speculative_token": 2}), "field 'num_speculative_token'"),
        (dict(max_num_seqs=0), "max_num_seqs must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=message):
            EngineConfig(**bad).validate(model)


def test_generation_config_sources(tiny_model_dir, tmp_path):
    assert ModelConfig.from_pretrained(tiny_model_dir).generation_defaults["temperature"] == 0.6
    assert ModelConfig.from_pretrained(tiny_model_dir, "vllm").generation_defaults == {}
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.3, "top_k": 5}))
    other = ModelConfig.from_pretrained(tiny_model_dir, str(tmp_path), {"top_p": 0.5})
    assert other.generation_defaults == {"temperature": 0.3, "top_k": 5, "top_p": 0.5}
    with pytest.raises(ConfigError, match="key 'max_new_tokens' is not supported"):
        ModelConfig.from_pretrained(tiny_model_dir, "auto", {"max_new_tokens": 5})
    with pytest.raises(ConfigError, match="expected auto, vllm or a folder"):
        ModelConfig.from_pretrained(tiny_model_dir, str(tmp_path / "none"))


def test_a_vllm_command_line_runs_unchanged(tiny_model_dir, tmp_path):
    """The Qwen model card's `vllm serve` line, with the flags users add, talked to with `openai`."""
    port = free_port()
    (tmp_path / "generation_config.json").write_text(json.dumps({"temperature": 0.9, "top_k": 3}))
    command = [sys.executable, "-m", "qthink", "serve", "--model", str(tiny_model_dir)]
    command += ["--served-model-name", "Qwen/Qwen3-4B-Thinking-2507", "qwen3-local"]
    command += [
        "--reasoning-parser",
        "deepseek_r1",
        "--tool-call-parser",
        "hermes",
        "--enable-auto-tool-choice",
    ]
    command += ["--max-model-len", "512", "--max-num-seqs", "4", "--max-num-batched-tokens", "256"]
    command += ["--gpu-memory-utilization", "0.05", "--no-enable-prefix-caching", "--dtype", "float32"]
    command += ["--seed", "1", "--chat-template", "qwen3", "--trust-remote-code"]
    command += ["--generation-config", str(tmp_path), "--override-generation-config", '{"temperature": 0}']
    command += ["--default-chat-template-kwargs", '{"enable_thinking": false}']
    command += ["--enable-reasoning", "--enable-chunked-prefill", "--enforce-eager"]  # Qwen's model cards
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    command += ["--rope-scaling", json.dumps(yarn)]
    command += ["--host", "127.0.0.1", "--port", str(port), "--api-key", "k3y", "--uvicorn-log-level", "info"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, url)
        client = openai.OpenAI(base_url=url + "/v1", api_key="k3y", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["Qwen/Qwen3-4B-Thinking-2507", "qwen3-local"]
        _check_answers_under_each_name(client)
        _check_default_template_kwargs(url)
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    finally:
        log = stop(proc, __import__("signal").SIGINT)
    assert log.count("qthink runs no code from model folders") == 1, log
    assert "'Qwen/Qwen3-4B-Thinking-2507', 'qwen3-local'" in log


def _check_answers_under_each_name(client: openai.OpenAI) -> None:
    texts = []
    for name, seed in (("qwen3-local", 1), ("Qwen/Qwen3-4B-Thinking-2507", 2)):
        r = client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=8, seed=seed
        )
        assert r.model == name and r.usage.completion_tokens >= 1  # answered under the name asked for
        texts.append(r.choices[0].message.content)
    assert texts[0] == texts[1]  # temperature 0 from --override-generation-config: seeds do not matter
    with pytest.raises(openai.BadRequestError, match="is not served here"):
        client.chat.completions.create(model="other", messages=[{"role": "user", "content": "hi"}])


def _check_default_template_kwargs(url: str) -> None:
    import httpx

    headers = {"Authorization": "Bearer k3y"}
    body = {"messages": [{"role": "user", "content": "hi"}]}
    off = httpx.post(url + "/tokenize", json=body, headers=headers).json()["tokens"]
    body["chat_template_kwargs"] = {"enable_thinking": True}
    on = httpx.post(url + "/tokenize", json=body, headers=headers).json()["tokens"]
    think_end = 151668  # enable_thinking=false renders an empty <think></think> block in the prompt
    assert think_end in off and think_end not in on

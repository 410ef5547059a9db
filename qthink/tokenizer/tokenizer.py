"""Tokenizer: `tokenizers` over tokenizer.json with transformers' method names and results."""

import json
from functools import partial
from pathlib import Path

from tokenizers import Tokenizer as RustTokenizer

from qthink.tokenizer import chat_template as templates
from qthink.tokenizer.chat_template import ChatTemplateError
from qthink.tokenizer.special_tokens import SpecialTokens, encode_text


class Tokenizer:
    """The checkpoint's tokenizer and chat template, with transformers' method names and results."""

    def __init__(
        self, backend: RustTokenizer, config: dict, template: str | None, literal_special_tokens: bool = False
    ):
        self.backend = backend
        # hardening for public endpoints: control-token text typed into a message stays text
        self.literal_special_tokens = literal_special_tokens
        self.config = config
        self.chat_template = template
        self.eos_token = _token_text(config.get("eos_token")) or "<|im_end|>"
        self.pad_token = _token_text(config.get("pad_token")) or "<|endoftext|>"
        self.eos_token_id = backend.token_to_id(self.eos_token)
        self.pad_token_id = backend.token_to_id(self.pad_token)
        self.special = SpecialTokens(backend)
        self.special_token_ids = self.special.ids

    @classmethod
    def from_pretrained(
        cls, model_dir: str | Path, chat_template: str | None = None, literal_special_tokens: bool = False
    ) -> "Tokenizer":
        """Load tokenizer.json; `chat_template` is a shipped name, a .jinja path or a template string,
        and defaults to the checkpoint's own (chat_template.jinja, then tokenizer_config.json).
        `literal_special_tokens`: see apply_chat_template."""
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{model_dir} has no tokenizer.json")
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        template: str | None
        if chat_template:
            template = templates.resolve_template(chat_template)
        else:
            template = templates.checkpoint_template(model_dir, config)
        return cls(RustTokenizer.from_file(str(path)), config, template, literal_special_tokens)

    def __len__(self) -> int:
        """Every token id the tokenizer knows, added tokens included (the model's embedding may be larger)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def vocab_size(self) -> int:
        """The base vocabulary without added tokens, as transformers defines it."""
        return self.backend.get_vocab_size(with_added_tokens=False)

    def encode(
        self, text: str, add_special_tokens: bool = False, split_special_tokens: bool = False
    ) -> list[int]:
        """Token ids of `text`; with split_special_tokens, `<|im_start|>` and the like become plain text."""
        backend = self.special.text_backend if split_special_tokens else self.backend
        return encode_text(backend, text, add_special_tokens)

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str | None]:
        return [self.backend.id_to_token(i) for i in ids]

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def apply_chat_template(
        self,
        messages: list[dict],
        tools: list[dict] | None = None,
        documents: list[dict] | None = None,
        chat_template: str | None = None,
        add_generation_prompt: bool = False,
        continue_final_message: bool | str = False,
        tokenize: bool = True,
        allow_special_tokens_in_content: bool | None = None,
        **template_kwargs,
    ) -> str | list[int]:
        """Render like transformers' apply_chat_template; ids when tokenize=True.

        By default the ids are transformers' own: `<tool_call>`, `<|im_start|>` and the like typed
        into a message become those tokens (Qwen-Agent writes its tool protocol that way). With
        `literal_special_tokens` on the tokenizer, or allow_special_tokens_in_content=False, only
        the template writes control tokens: their text inside messages, tools or template
        arguments is encoded as plain text."""
        if allow_special_tokens_in_content is None:
            allow_special_tokens_in_content = not self.literal_special_tokens
        if continue_final_message and add_generation_prompt:
            raise ChatTemplateError("continue_final_message and add_generation_prompt exclude each other")
        template = templates.resolve_template(chat_template) if chat_template else self.chat_template
        if template is None:
            raise ChatTemplateError("this tokenizer has no chat template; pass chat_template=")
        data = templates.template_data(messages, tools, documents, template_kwargs)
        typed: dict[str, str] = {}
        if tokenize and not allow_special_tokens_in_content:
            data["messages"] = [self.special.shield_typed(m, typed) for m in data["messages"]]
        render = partial(
            templates.render,
            template,
            variables=self._special_token_variables(),
            add_generation_prompt=add_generation_prompt,
            continue_final=continue_final_message,
        )
        text = render(data)
        if not tokenize:
            return text
        if any(placeholder not in text for placeholder in typed):
            raise ChatTemplateError(
                "the chat template rewrites message text that holds control-token text such as "
                "</think>; remove it, or allow it with allow_special_tokens_in_content=True"
            )
        if allow_special_tokens_in_content or not self.special.in_any_string(data):
            return self.special.encode_typed(text, typed)
        return self.special.encode_guarded(render, data, text, typed)

    def _special_token_variables(self) -> dict:
        names = ("bos_token", "eos_token", "unk_token", "pad_token")
        values = {name: _token_text(self.config.get(name)) for name in names}
        values.update(eos_token=self.eos_token, pad_token=self.pad_token)
        return {name: value for name, value in values.items() if value is not None}


def _token_text(value) -> str | None:
    return value.get("content") if isinstance(value, dict) else value

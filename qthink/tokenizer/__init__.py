"""The checkpoint's tokenizer: the `tokenizers` backend, the sandboxed chat template, special-token
handling and the incremental detokenizer, one module each."""

from qthink.tokenizer.chat_template import ChatTemplateError, shipped_templates
from qthink.tokenizer.detokenizer import IncrementalDetokenizer
from qthink.tokenizer.tokenizer import Tokenizer

__all__ = [
    "ChatTemplateError",
    "IncrementalDetokenizer",
    "Tokenizer",
    "shipped_templates",
]

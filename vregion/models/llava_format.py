"""Facts of the Hugging Face LLaVA format that export and import share: the `<image>` token, how each vision
tower's features are selected, the text families whose parity vregion tests, and the chat template's Jinja form."""

from __future__ import annotations

from vregion.data.jinja_template import build_jinja_template
from vregion.data.templates import get_template

IMAGE_TOKEN = "<image>"
# Vision tower -> (vision_feature_select_strategy, tokens LLaVA's processor adds per image before selection).
HF_VISION = {"clip": ("default", 1), "siglip": ("full", 0)}
# Text families whose decoder-runner parity vregion tests (model_type as in the HF config).
HF_TEXT = ("llama", "mistral", "qwen2", "gemma3_text")


def _adds_bos(tokenizer, bos: str) -> bool:
    """Whether encoding text (special tokens on, as the processor does) already starts it with `bos`."""
    if not bos:
        return False
    ids, plain = tokenizer("a")["input_ids"], tokenizer("a", add_special_tokens=False)["input_ids"]
    return len(ids) > len(plain) and ids[0] == tokenizer.convert_tokens_to_ids(bos)


def chat_template(tokenizer, template: str) -> str:
    """Jinja chat template rendering `template`'s training text; the BOS text is left to a tokenizer adding it."""
    return build_jinja_template(template, with_bos=not _adds_bos(tokenizer, get_template(template).bos))

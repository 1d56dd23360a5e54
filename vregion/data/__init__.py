"""Data pipeline: webdataset shards -> chat-templated, tokenized, image-expanded, padded batches."""

from .collate import collate
from .errors import SampleError
from .image import IMAGE_ASPECTS, ImageDecodeError, ImageProcessor
from .reader import ShardLoader, build_loader, consumed_samples
from .shards import count_samples, resolve_shards, split_for_rank
from .synthetic import make_synthetic_shards
from .templates import (
    IGNORE_INDEX,
    IMAGE_TAG,
    TEMPLATES,
    ChatTemplate,
    TokenizedSample,
    get_template,
    tokenize_conversation,
    tokenize_prompt,
    validate_template,
)
from .writer import pack_llava_json, write_shards

__all__ = [
    "IGNORE_INDEX",
    "IMAGE_ASPECTS",
    "IMAGE_TAG",
    "TEMPLATES",
    "ChatTemplate",
    "ImageDecodeError",
    "ImageProcessor",
    "SampleError",
    "ShardLoader",
    "TokenizedSample",
    "build_loader",
    "collate",
    "consumed_samples",
    "count_samples",
    "get_template",
    "make_synthetic_shards",
    "pack_llava_json",
    "resolve_shards",
    "split_for_rank",
    "tokenize_conversation",
    "tokenize_prompt",
    "validate_template",
    "write_shards",
]

"""VPG transfer (VPGTrans): move a trained vision tower + projector to another LLM, then warm up and fine-tune."""

from .align import Alignment, align_texts, align_tokenizers, conversation_texts
from .converter import WordConverter, fit_converter
from .merge import merge_projector
from .plan import build_transfer_init, run_transfer, transfer_config

__all__ = [
    "Alignment",
    "WordConverter",
    "align_texts",
    "align_tokenizers",
    "build_transfer_init",
    "conversation_texts",
    "fit_converter",
    "merge_projector",
    "run_transfer",
    "transfer_config",
]

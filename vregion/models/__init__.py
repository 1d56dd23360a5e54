"""Model parts: vision backbones, projectors, LLM loading, the decoder runner, the VLM and checkpoints."""

from vregion.models.backbones import BACKBONES, VisionBackbone, build_vision_backbone
from vregion.models.checkpoint import load_weights, read_state_dict, save_checkpoint, save_state_dict
from vregion.models.llm import build_llm, export_gguf
from vregion.models.projectors import PROJECTORS, build_projector
from vregion.models.runner import DecoderRunner, RunnerState, decoder_layers, default_position_ids, num_decoder_layers
from vregion.models.vlm import VisionLanguageModel, build_vlm, causal_lm_loss, load_checkpoint

__all__ = [
    "BACKBONES",
    "PROJECTORS",
    "DecoderRunner",
    "RunnerState",
    "VisionBackbone",
    "VisionLanguageModel",
    "build_llm",
    "build_projector",
    "build_vision_backbone",
    "build_vlm",
    "causal_lm_loss",
    "decoder_layers",
    "default_position_ids",
    "export_gguf",
    "load_checkpoint",
    "load_weights",
    "num_decoder_layers",
    "read_state_dict",
    "save_checkpoint",
    "save_state_dict",
]

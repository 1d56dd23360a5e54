"""Model shapes for `vregion bench --plan`: an LLM or a vision tower as the few numbers its costs follow from.

A shape comes from a built-in table of common hub ids, a tiny test config, or a local folder's config.json
(or one already in the local Hugging Face cache). Nothing here downloads: planning a 13B run must work on
a laptop without network, so an unknown hub id fails with what to provide instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from vregion.config import LLMConfig, ModelConfig, VisionConfig

LLM_FAMILIES = ("llama", "mistral", "qwen2")  # llama-style decoders the FLOP and memory model describes


@dataclass(frozen=True)
class LLMShape:
    """A llama-style decoder: 7 bias-free linears per layer (q, k, v, o, gate, up, down) and 2 RMSNorms."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    vocab: int
    head_dim: Optional[int] = None  # None: hidden // heads
    tied: bool = False  # lm_head shares the input embedding
    qkv_bias: bool = False  # qwen2

    @property
    def hd(self) -> int:
        return self.head_dim or self.hidden // self.heads

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in, out) of the 7 linears of one layer."""
        h, q, kv, i = self.hidden, self.heads * self.hd, self.kv_heads * self.hd, self.intermediate
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def linear_params(self) -> int:
        bias = (self.heads + 2 * self.kv_heads) * self.hd if self.qkv_bias else 0
        return sum(a * b for a, b in self.linears().values()) + bias

    @property
    def layer_params(self) -> int:
        return self.linear_params + 2 * self.hidden  # + input and post-attention RMSNorm weights

    def lora_params(self, r: int) -> int:
        """LoRA adapters of one layer: A (r x in) + B (out x r) on each of the 7 linears."""
        return sum(r * (a + b) for a, b in self.linears().values())


@dataclass(frozen=True)
class VisionShape:
    """A ViT: total parameters, patch tokens fed to the projector, width, and layers run (feature layer -2: L - 1).

    `flops` replaces the ViT formula with a given forward cost per image, for towers that are not ViTs
    (EfficientNet's depthwise convolutions do ~25 FLOPs per parameter per pixel, not 2 per token).
    `prefix` is the tokens the tower runs on besides the patches (CLIP's CLS: 1; SigLIP has none).
    """

    params: int
    tokens: int
    hidden: int
    layers_run: int
    flops: Optional[float] = None
    prefix: int = 1

    @property
    def forward_flops(self) -> float:
        """Forward FLOPs per image: linears on the patch (+ prefix) tokens, and attention of the layers run."""
        if self.flops is not None:
            return self.flops
        n = self.tokens + self.prefix
        return 2 * self.params * n + 4 * n**2 * self.hidden * self.layers_run


def _vit_layer_params(d: int, i: int) -> int:
    """One CLIP / SigLIP encoder layer: 4 biased attention linears, a biased 2-linear MLP, 2 LayerNorms."""
    return 4 * (d * d + d) + (d * i + i) + (i * d + d) + 2 * 2 * d


def _layers_run(layers: int, feature_layer: int) -> int:
    return layers + 1 + feature_layer if feature_layer < 0 else feature_layer


def clip_vision_shape(hidden: int, intermediate: int, layers: int, image_size: int, patch_size: int,
                      feature_layer: int = -2, position_size: Optional[int] = None) -> VisionShape:
    """HF CLIPVisionModel's exact parameter count: embeddings (class, bias-free patch conv, positions incl. CLS),
    pre/post LayerNorm, and `layers` encoder layers. `position_size`: the resolution the position embeddings
    were made for (default `image_size`; another one interpolates them)."""
    d, n = hidden, (image_size // patch_size) ** 2
    positions = ((position_size or image_size) // patch_size) ** 2
    embeddings = d + 3 * patch_size**2 * d + (positions + 1) * d
    params = embeddings + 2 * 2 * d + layers * _vit_layer_params(d, intermediate)
    return VisionShape(params, n, d, _layers_run(layers, feature_layer), prefix=1)


def siglip_vision_shape(hidden: int, intermediate: int, layers: int, image_size: int, patch_size: int,
                        feature_layer: int = -2, position_size: Optional[int] = None,
                        head: bool = True) -> VisionShape:
    """HF SiglipVisionModel's exact parameter count: embeddings (biased patch conv, positions; no CLS token),
    a post LayerNorm, `layers` encoder layers, and with `head` the attention-pooling head (probe, a biased
    multi-head attention, LayerNorm, MLP): loaded with the hub checkpoints, unused by the patch features.
    Patches: (image_size // patch_size)^2, the conv dropping a remainder (384 px / 14 -> 27 x 27 = 729)."""
    d, i, n = hidden, intermediate, (image_size // patch_size) ** 2
    positions = ((position_size or image_size) // patch_size) ** 2
    embeddings = 3 * patch_size**2 * d + d + positions * d
    pooling_head = d + (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * i + i) + (i * d + d) if head else 0
    params = embeddings + 2 * d + layers * _vit_layer_params(d, i) + pooling_head
    return VisionShape(params, n, d, _layers_run(layers, feature_layer), prefix=0)


@dataclass(frozen=True)
class VLMShape:
    """Vision tower -> projector (linear | mlp2x_gelu) -> LLM."""

    llm: LLMShape
    vision: VisionShape
    projector: str = "mlp2x_gelu"
    projector_hidden: Optional[int] = None  # mlp2x_gelu inner width; None: the LLM's hidden size

    @property
    def projector_params(self) -> int:
        v, h = self.vision.hidden, self.llm.hidden
        if self.projector == "linear":
            return v * h + h
        m = self.projector_hidden or h
        return (v * m + m) + (m * h + h)


VICUNA_7B = LLMShape(hidden=4096, intermediate=11008, layers=32, heads=32, kv_heads=32, vocab=32000)
VICUNA_13B = LLMShape(hidden=5120, intermediate=13824, layers=40, heads=40, kv_heads=40, vocab=32000)
LLAMA3_8B = LLMShape(hidden=4096, intermediate=14336, layers=32, heads=32, kv_heads=8, vocab=128256)
CLIP_L336 = clip_vision_shape(1024, 4096, 24, 336, 14)  # 303.5M parameters, 576 patch tokens
PRESETS = {"llava-1.5-7b": VLMShape(VICUNA_7B, CLIP_L336), "llava-1.5-13b": VLMShape(VICUNA_13B, CLIP_L336)}
# Hub ids whose shapes are known, so the shipped configs plan without network or downloaded configs.
KNOWN_LLMS = {
    "lmsys/vicuna-7b-v1.5": VICUNA_7B,
    "lmsys/vicuna-13b-v1.5": VICUNA_13B,
    "meta-llama/Meta-Llama-3-8B": LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": LLAMA3_8B,
}
# Vision towers by hub id: the fields of their HF vision config the shape needs (feature layer and input
# resolution come from the vregion config).
KNOWN_VISION = {
    "openai/clip-vit-large-patch14-336": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                              image_size=336, patch_size=14),
    "openai/clip-vit-large-patch14": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                          image_size=224, patch_size=14),
    "google/siglip-so400m-patch14-384": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                             image_size=384, patch_size=14, vision_use_head=True),
}


def get_preset(name: str) -> VLMShape:
    if name not in PRESETS:
        raise ValueError(f"unknown plan preset {name!r}; valid: {', '.join(PRESETS)}")
    return PRESETS[name]


def read_config_json(path: str, field: str, known: dict) -> dict:
    """The config.json of a local folder, or of a hub id already in the local Hugging Face cache; never the
    network. Raises ValueError naming `path` and what to provide instead."""
    local = Path(path).expanduser()
    if local.is_dir():
        file = local / "config.json"
        if not file.is_file():
            raise ValueError(f"{field} {path!r} has no config.json, which the plan reads its shape from")
        return json.loads(file.read_text())
    if local.exists():
        raise ValueError(f"{field} {path!r} is a file; the plan reads the shape from a folder's config.json "
                         "(a GGUF model: point it at a Hugging Face folder of the same model)")
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(path, "config.json")  # a lookup in the cache folder, no request
    except ValueError:  # not a valid hub id either
        cached = None
    if isinstance(cached, str):
        return json.loads(Path(cached).read_text())
    raise ValueError(
        f"{field} {path!r}: the plan has no built-in shape for this hub id (known: {', '.join(known)}) and it "
        f"is not a local folder or in the Hugging Face cache; the plan never downloads. Set {field} to a folder "
        f"holding the model's config.json (e.g. `huggingface-cli download {path} config.json --local-dir DIR` "
        "on a machine with network), or add the shape to vregion.bench.shapes")


def llm_shape(cfg: ModelConfig) -> LLMShape:
    """The LLM of a config: a known hub id, a tiny config, or a local (or cached) config.json."""
    hf = _llm_config(cfg.llm)
    if isinstance(hf, LLMShape):
        return hf
    family = hf.model_type  # "gemma3_text" for a tiny gemma3: not modelled, refused here
    if family not in LLM_FAMILIES:
        raise ValueError(f"plan models llama-style LLMs ({', '.join(LLM_FAMILIES)}), not {family!r}")
    return LLMShape(hf.hidden_size, hf.intermediate_size, hf.num_hidden_layers, hf.num_attention_heads,
                    hf.num_key_value_heads or hf.num_attention_heads, hf.vocab_size,
                    getattr(hf, "head_dim", None), bool(hf.tie_word_embeddings), family == "qwen2")


def _llm_config(cfg: LLMConfig):
    """A known LLMShape, or the HF config (built in memory from the fields, with the family's defaults)."""
    if cfg.tiny is not None:
        from vregion.models.llm import TINY_FAMILIES

        tiny = dict(cfg.tiny)
        return TINY_FAMILIES[tiny.pop("family", "llama")](tiny)
    if cfg.path is None:
        raise ValueError("model.llm needs `path` or `tiny` to plan")
    if cfg.path in KNOWN_LLMS:
        return KNOWN_LLMS[cfg.path]
    if cfg.gguf_file is not None:
        raise ValueError(f"model.llm {cfg.path!r} + gguf_file: the plan reads a Hugging Face folder's config.json")
    fields = read_config_json(cfg.path, "model.llm.path", KNOWN_LLMS)
    family = fields.pop("model_type", None)
    if family not in LLM_FAMILIES:
        raise ValueError(f"plan models llama-style LLMs ({', '.join(LLM_FAMILIES)}), not {family!r}")
    from transformers import AutoConfig

    return AutoConfig.for_model(family, **fields)


def efficientnet_lite0_shape(image_size: Optional[int], blocks: Optional[list] = None) -> VisionShape:
    """EfficientNet-Lite0 at `image_size` (None: 224): ceil(S/32)^2 tokens of 1280 channels (or of the chosen
    `blocks`' channels), FLOPs per pixel (exact for sides that are multiples of 32; others pad every stride-2
    stage up, ~10% more than this; with `blocks`, an upper bound: the whole network is counted)."""
    from vregion.models import efficientnet as lite0

    size = image_size or lite0.DEFAULT_IMAGE_SIZE
    side = -(-size // lite0.FEATURE_STRIDE)
    resolved = lite0.resolve_blocks(blocks, len(lite0.BLOCK_CHANNELS))
    hidden = lite0.HIDDEN_SIZE if resolved is None else sum(lite0.BLOCK_CHANNELS[b] for b in resolved)
    return VisionShape(lite0.NUM_PARAMS, side * side, hidden, 0, lite0.FLOPS_PER_PIXEL * size * size)


def _vit_fields(cfg: VisionConfig) -> dict:
    """The HF vision config fields of a CLIP / SigLIP tower, with the HF class's defaults for missing ones."""
    if cfg.tiny is not None:  # as vregion.models.backbones builds it
        from vregion.models.backbones import TINY_VIT_DEFAULTS

        overrides = dict(cfg.tiny)
        if cfg.image_size is not None:
            overrides.setdefault("image_size", cfg.image_size)
        return TINY_VIT_DEFAULTS | ({"vision_use_head": False} if cfg.type == "siglip" else {}) | overrides
    if cfg.path is None:
        raise ValueError("model.vision needs `path` or `tiny` to plan")
    if cfg.path in KNOWN_VISION:
        return KNOWN_VISION[cfg.path]
    fields = read_config_json(cfg.path, "model.vision.path", KNOWN_VISION)
    fields = fields.get("vision_config", fields)  # a whole CLIP / SigLIP model's config.json
    fields = {k: v for k, v in fields.items() if k != "model_type"}
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    hf = (CLIPVisionConfig if cfg.type == "clip" else SiglipVisionConfig)(**fields)
    keys = ("hidden_size", "intermediate_size", "num_hidden_layers", "image_size", "patch_size", "vision_use_head")
    return {k: getattr(hf, k) for k in keys if hasattr(hf, k)}


def vision_shape(cfg: ModelConfig) -> VisionShape:
    """The vision tower of a config: EfficientNet-Lite0, or a CLIP / SigLIP from a known hub id, a tiny config
    or a local (or cached) config.json; other towers raise ValueError."""
    vision = cfg.vision
    if vision.type == "efficientnet-lite0":
        return efficientnet_lite0_shape(vision.image_size, vision.feature_blocks)
    if vision.type not in ("clip", "siglip"):
        raise ValueError(f"plan models clip, siglip and efficientnet-lite0 vision towers, not {vision.type!r}")
    c = _vit_fields(vision)
    args = (c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"], vision.image_size or c["image_size"],
            c["patch_size"], vision.feature_layer, c["image_size"])
    if vision.type == "clip":
        return clip_vision_shape(*args)
    return siglip_vision_shape(*args, head=c.get("vision_use_head", True))


def shape_from_config(cfg: ModelConfig) -> VLMShape:
    """The shape of a config's model: known hub ids, tiny configs, or local HF folders (configs only)."""
    return VLMShape(llm_shape(cfg), vision_shape(cfg), cfg.projector.type, cfg.projector.hidden_size)

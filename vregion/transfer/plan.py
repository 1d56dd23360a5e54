"""VPG transfer run: initialise the target VLM from a source checkpoint, then projector warm-up and fine-tuning.

Layout of the run directory: `transfer-init/` (the initialised target, a vregion checkpoint, plus
`transfer.json`), then one sub-folder per stage as `vregion train` writes them: `warmup/` first (projector only,
VPGTrans stage 1d), then the config's own stages (a config without stages trains one stage named `train`).
"""

from __future__ import annotations

import copy
from dataclasses import replace
import json
import logging
import time
from pathlib import Path

import torch
import yaml
from safetensors import safe_open

from vregion import distributed as dist
from vregion.config import Config, ConfigError, ProjectorConfig, VisionConfig, from_dict, to_dict
from vregion.errors import RunDirectoryError

log = logging.getLogger(__name__)

INIT_DIR = "transfer-init"
REPORT_FILE = "transfer.json"
WARMUP_STAGE = "warmup"
# Stage 1 trains the projector and nothing else, whatever the config's top-level region section says.
WARMUP_REGION = dict(strategy="none", mode="full", train_projector=True, train_vision=False,
                     train_embeddings=False, train_norms=False, train_lm_head=False)


def _source_config(source: str | Path) -> dict:
    path = Path(source) / "config.yaml"
    if not path.exists():
        raise ConfigError(f"transfer.source is not a vregion checkpoint (no config.yaml): {source}")
    return yaml.safe_load(path.read_text()) or {}


def _tensor_shape(source: str | Path, name: str) -> list[int]:
    """One tensor's shape from the checkpoint's safetensors header, without reading any weights."""
    with safe_open(str(Path(source) / "model.safetensors"), framework="pt") as f:
        return list(f.get_slice(name).get_shape())


def target_projector_config(target: ProjectorConfig, source: str | Path) -> ProjectorConfig:
    """The target's projector section: the source's type, and for mlp2x_gelu the source's inner width.

    Raises:
        ConfigError: the config names another projector type or another inner width than the source has.
    """
    src = from_dict(ProjectorConfig, (_source_config(source).get("model") or {}).get("projector"), "projector")
    if target.type != src.type:
        raise ConfigError(f"model.projector.type is {target.type!r} but the source's projector is {src.type!r}")
    out = copy.deepcopy(target)
    if src.type == "mlp2x_gelu":
        inner = _tensor_shape(source, "projector.0.weight")[0]
        if target.hidden_size not in (None, inner):
            raise ConfigError(f"model.projector.hidden_size={target.hidden_size}, but the transferred projector's "
                              f"inner width is the source LLM's {inner}")
        out.hidden_size = inner
    return out


def check_vision(target: VisionConfig, source: str | Path) -> None:
    """The vision tower is inherited as is, so its config must be the source's."""
    src = from_dict(VisionConfig, (_source_config(source).get("model") or {}).get("vision"), "vision")
    if to_dict(src) != to_dict(target):
        raise ConfigError(f"model.vision must match the transfer source's vision section: {to_dict(src)} "
                          f"(config has {to_dict(target)})")


def transfer_config(cfg: Config, init_dir: str | Path) -> Config:
    """The multi-stage Config that run_training gets: warm-up, then the config's own stages, from init_dir.

    Warm-up: projector only, lr = warmup_lr_scale x the projector lr, constant, no lr warmup, no visual-token
    pooling, for transfer.warmup_steps optimizer steps (or transfer.warmup_epochs epochs when unset).
    """
    out = copy.deepcopy(cfg)
    out.model.init_from = str(init_dir)
    t = cfg.transfer
    projector_lr = cfg.optim.projector_lr if cfg.optim.projector_lr is not None else cfg.optim.lr
    train = {"max_steps": t.warmup_steps} if t.warmup_steps is not None else {"max_steps": None,
                                                                             "epochs": t.warmup_epochs}
    # Uncompressed, as LLaVolta compresses in instruction tuning only: the warm-up learns the full mapping.
    warmup = dict(name=WARMUP_STAGE, region=dict(WARMUP_REGION), train=train, compress=dict(schedule=None),
                  optim=dict(projector_lr=t.warmup_lr_scale * projector_lr, schedule="constant", warmup_ratio=0.0))
    own = copy.deepcopy(cfg.stages) or [{"name": "train"}]
    out.stages = [warmup] + own
    out.stage_configs()  # fails now on a clashing stage name, not after the warm-up
    return out


@torch.no_grad()
def input_embeddings(llm: torch.nn.Module) -> torch.Tensor:
    """(V, d) input embeddings as the decoder sees them (Gemma's sqrt(d) scaling included)."""
    embed = llm.get_input_embeddings()
    return embed(torch.arange(embed.num_embeddings)).float()


def build_transfer_init(cfg: Config, out_dir: str | Path) -> dict:
    """Write the initialised target VLM to out_dir (vregion checkpoint + transfer.json); returns the report.

    The target is built from cfg.model (seeded by run.seed); it inherits the source's vision tower, and its
    projector is the source's merged with the word converter (transfer.use_converter), or for the ablation
    (use_converter false) the source's inner layers with the target's own freshly initialised last linear.
    """
    from vregion.engine.trainer import seed_everything
    from vregion.models import build_vlm, load_checkpoint
    from vregion.models.checkpoint import save_state_dict
    from vregion.transfer.align import align_tokenizers
    from vregion.transfer.converter import fit_converter
    from vregion.transfer.merge import inherit_inner_layers, merge_projector

    t = cfg.transfer
    started = time.perf_counter()
    source, src_tok, _ = load_checkpoint(t.source)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.init_from = None
    seed_everything(cfg.run.seed)
    target, tgt_tok = build_vlm(model_cfg)
    target.vision.load_state_dict(source.vision.state_dict())
    report: dict = {"source": str(t.source), "use_converter": t.use_converter}
    if t.use_converter:
        corpus = t.corpus_shards or cfg.data.train_shards
        if corpus is None:
            raise ConfigError("transfer needs transfer.corpus_shards or data.train_shards for token alignment")
        alignment = align_tokenizers(src_tok, tgt_tok, corpus, t.max_texts)
        log.info("token alignment: %s", alignment.report)
        src_emb, tgt_emb = input_embeddings(source.llm), input_embeddings(target.llm)  # (V_s, d_s), (V_t, d_t)
        converter, conv_report = fit_converter(src_emb, tgt_emb, alignment.pairs, t, seed=cfg.run.seed)
        merged = merge_projector(source.projector, converter, tgt_emb.shape[1])
        target.projector.load_state_dict(merged.state_dict())
        report.update(alignment=alignment.report, converter=conv_report)
    else:
        inherit_inner_layers(source.projector, target.projector)
    saved = to_dict(cfg)
    saved["model"] = to_dict(model_cfg)
    saved["stages"] = []
    report["init_wall_s"] = time.perf_counter() - started  # alignment + converter fit + merge: part of the cost
    out_dir = Path(out_dir)
    save_state_dict(target.state_dict(), saved, tgt_tok, out_dir)
    (out_dir / REPORT_FILE).write_text(json.dumps(report, indent=2))
    return report


def run_transfer(cfg: Config, resume: bool = False) -> list[dict]:
    """Build (rank 0) or reuse `<run>/transfer-init/`, then train warm-up + the config's stages from it.

    Returns:
        the stage summaries of run_training.
    """
    from vregion.assets import resolve_config_assets
    from vregion.engine.prepare import prepare_data
    from vregion.engine.run import run_training

    if not cfg.transfer.source:
        raise ConfigError("transfer.source must name the source vregion checkpoint")
    dist.init_distributed()
    run_dir = Path(cfg.run.output_dir).expanduser().resolve()
    cfg = replace(cfg, run=replace(cfg.run, output_dir=str(run_dir)))  # a new config; the caller's stays as it was
    init_dir = run_dir / INIT_DIR
    if not resume and init_dir.exists():
        raise RunDirectoryError(f"{init_dir} exists from an earlier transfer: pass --resume to continue it, "
                                "or choose another run.output_dir")
    cfg = resolve_config_assets(cfg)
    check_vision(cfg.model.vision, cfg.transfer.source)
    cfg = replace(cfg, model=replace(cfg.model, projector=target_projector_config(cfg.model.projector,
                                                                                  cfg.transfer.source)))
    cfg = transfer_config(cfg, init_dir)  # validate the stages before minutes of alignment
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = prepare_data(cfg, run_dir)  # synthetic shards are the default alignment corpus
    if dist.is_main():
        if (init_dir / "model.safetensors").exists():
            print(f"reusing {init_dir}", flush=True)
        else:
            report = build_transfer_init(cfg, init_dir)
            print(f"transfer init written to {init_dir}: {json.dumps(report)}", flush=True)
    dist.barrier()
    return run_training(cfg, resume=resume)

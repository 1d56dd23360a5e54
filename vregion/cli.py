"""`vregion` command line: parse, build, call. Every hyperparameter lives in the config, not here."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vregion.config import ConfigError, load_config
from vregion.engine.errors import RunDirectoryError


PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after a checkpoint; `--resume` continues


def resolve_config_path(name: str) -> Path:
    """A config file path, or the name of a shipped config (`tiny`, `demo`, ...) usable from any folder."""
    path = Path(name)
    if path.exists():
        return path
    import vregion_configs

    file_name = path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml"
    shipped = Path(vregion_configs.__file__).parent / file_name
    if path.parent == Path(".") and shipped.exists():
        return shipped
    available = sorted(p.stem for p in shipped.parent.glob("*.yaml"))
    raise ConfigError(f"config {name!r} not found (shipped configs: {', '.join(available)})")


def _train(args: argparse.Namespace) -> int:
    cfg = load_config(resolve_config_path(args.config), args.overrides)
    from vregion.engine.run import run_training  # heavy imports only once the config is valid
    from vregion.engine.trainer import Preempted

    try:
        run_training(cfg, resume=args.resume)
    except Preempted as stop:
        print(f"vregion: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT
    return 0


def _transfer(args: argparse.Namespace) -> int:
    cfg = load_config(resolve_config_path(args.config), args.overrides)
    from vregion.transfer import run_transfer

    run_transfer(cfg, resume=args.resume)
    return 0


def _transfer_demo(args: argparse.Namespace) -> int:
    from vregion.transfer.demo import run_demo

    run_demo(Path(args.out), args.source_steps, args.scratch_steps, args.transfer_steps, args.warmup_steps,
             args.eval_every, args.transfer_eval_every)
    return 0


def _bench(args: argparse.Namespace) -> int:
    cfg = load_config(resolve_config_path(args.config), args.overrides)
    stages = cfg.stage_configs()
    names = [s.stage_name for s in stages]
    stage = stages[-1] if args.stage is None else next((s for s in stages if s.stage_name == args.stage), None)
    if stage is None:
        raise ConfigError(f"no stage {args.stage!r}; stages: {', '.join(names)}")
    if args.plan:
        from vregion.engine.plan import plan_text

        print(plan_text(stage, args.gpus, args.gpu, args.samples, args.tokens_per_sample))
        return 0
    from vregion.engine.bench import run_bench
    from vregion.engine.run import prepare_data

    from vregion.assets import resolve_config_assets

    stage = prepare_data(stage, Path(stage.run.output_dir).resolve())
    resolve_config_assets(stage)
    out = Path(args.out or Path(stage.run.output_dir) / "bench")
    variants = args.variants.split(",")
    if args.schedule:
        from vregion.engine.bench import schedule_variants

        variants = schedule_variants(variants[0], args.schedule)
    run_bench(stage, variants, args.rounds, args.steps, out, schedule=args.schedule)
    return 0


def _data_pack(args: argparse.Namespace) -> int:
    from vregion.data import pack_llava_json

    summary = pack_llava_json(args.json, args.images, args.out, samples_per_shard=args.samples_per_shard)
    print(summary)
    return 0


def _data_demo(args: argparse.Namespace) -> int:
    from vregion.assets import prepare_demo_sources
    from vregion.data.demo_data import build_demo_data

    prepare_demo_sources()  # Debian emoji font and Fashion-MNIST (apt-get when missing)
    print(build_demo_data(args.out, seed=args.seed, num_fashion_train=args.fashion_train,
                          num_fashion_eval=args.fashion_eval))
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from vregion.data import make_synthetic_shards

    print(make_synthetic_shards(args.out, args.num, args.image_size, args.seed, args.samples_per_shard))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from vregion.region.analyze import analyze_checkpoint

    out = Path(args.out or Path(args.checkpoint) / "analysis")
    analyze_checkpoint(args.checkpoint, args.data, out, args.max_samples, base=args.base, block=args.block)
    print(f"wrote {out / 'layers.csv'}, {out / 'layers.json'}, {out / 'layers.png'}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    import json

    from vregion.region.analyze import prune_checkpoint

    table = json.loads(Path(args.scores).read_text())["layers"] if args.scores else None
    report = prune_checkpoint(args.checkpoint, args.drop, args.metric, args.data, args.out, captions=args.captions,
                              max_samples=args.max_samples, base=args.base, table=table)
    print(json.dumps(report, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vregion", description=__doc__)
    # The deepspeed launcher passes --local_rank before the sub-command; LOCAL_RANK in the env is what is used.
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a config (all its stages)")
    train.add_argument("config", help="YAML file, or a shipped config name (tiny, demo, ...)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 region.count=8")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    train.set_defaults(func=_train)

    transfer = sub.add_parser("transfer", help="VPG transfer: init from transfer.source, projector warm-up, then train")
    transfer.add_argument("config", help="target config (model = target LLM; transfer.source = source checkpoint)")
    transfer.add_argument("overrides", nargs="*", help="dotted overrides, e.g. transfer.source=runs/a/train/final")
    transfer.add_argument("--resume", action="store_true", help="continue the transfer run in run.output_dir")
    transfer.set_defaults(func=_transfer)
    demo = sub.add_parser("transfer-demo", help="VPG transfer SmolLM2-135M -> Gemma3-270M vs a projector from scratch")
    demo.add_argument("--out", default="runs/transfer-demo", help="folder of the four runs and the report")
    demo.add_argument("--source-steps", type=int, default=80, help="projector steps on SmolLM2 (the source)")
    demo.add_argument("--scratch-steps", type=int, default=120, help="projector steps of the from-scratch baseline")
    demo.add_argument("--warmup-steps", type=int, default=10, help="transferred runs: 5x-lr projector warm-up steps")
    demo.add_argument("--transfer-steps", type=int, default=30, help="transferred runs: projector steps after warm-up")
    demo.add_argument("--eval-every", type=int, default=10, help="scratch run: steps between held-out evaluations")
    demo.add_argument("--transfer-eval-every", type=int, default=5, help="transferred runs: steps between evaluations")
    demo.set_defaults(func=_transfer_demo)

    bench = sub.add_parser("bench", help="step time of training variants, interleaved side by side")
    bench.add_argument("config")
    bench.add_argument("overrides", nargs="*")
    bench.add_argument("--variants", default="full,region,region-lora", help="comma list of full, region, region-lora, projector, each optionally @K/S (pooling)")
    bench.add_argument("--schedule", default=None,
                       help="compression preset: time the first variant with each of its stages, plus the run average")
    bench.add_argument("--stage", default=None, help="stage whose settings are used (default: the last)")
    bench.add_argument("--rounds", type=int, default=3, help="A B C rounds")
    bench.add_argument("--steps", type=int, default=2, help="optimizer steps per variant per round")
    bench.add_argument("--out", default=None, help="folder for bench.json / bench.md (default: <run>/bench)")
    bench.add_argument("--plan", action="store_true",
                       help="print the analytic plan (params, FLOPs, memory per GPU, epoch time) instead of running")
    bench.add_argument("--gpus", type=int, default=1, help="--plan: GPUs (data-parallel ranks)")
    bench.add_argument("--gpu", default="h100", help="--plan: h100 | h200 | a100 | a peak in bf16 TFLOP/s")
    bench.add_argument("--samples", type=int, default=665_000, help="--plan: samples in one epoch")
    bench.add_argument("--tokens-per-sample", type=int, default=None,
                       help="--plan: LLM tokens per sample (default: visual tokens + 256, capped by data.max_length)")
    bench.set_defaults(func=_bench)

    data = sub.add_parser("data", help="build webdataset shards").add_subparsers(dest="data_command", required=True)
    pack = data.add_parser("pack", help="LLaVA-format JSON + image folder -> tar shards + index.json")
    pack.add_argument("json")
    pack.add_argument("images", help="folder the JSON's image paths are relative to")
    pack.add_argument("out")
    pack.add_argument("--samples-per-shard", type=int, default=1000)
    pack.set_defaults(func=_data_pack)
    demo = data.add_parser("demo", help="emoji captions + Fashion-MNIST VQA shards (train, eval-fashion, eval-emoji)")
    demo.add_argument("out")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--fashion-train", type=int, default=2000)
    demo.add_argument("--fashion-eval", type=int, default=200)
    demo.set_defaults(func=_data_demo)
    synth = data.add_parser("synth", help="generated coloured-shape shards for smoke runs")
    synth.add_argument("out")
    synth.add_argument("--num", type=int, default=256)
    synth.add_argument("--image-size", type=int, default=32)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--samples-per-shard", type=int, default=64)
    synth.set_defaults(func=_data_synth)

    analyze = sub.add_parser("analyze", help="per-layer importance (BI, angular, parameter change) of a checkpoint")
    analyze.add_argument("checkpoint")
    analyze.add_argument("--data", required=True, help="calibration shards (the checkpoint's template applies)")
    analyze.add_argument("--base", default=None, help="checkpoint or HF folder to measure parameter change against")
    analyze.add_argument("--out", default=None, help="output folder (default: CHECKPOINT/analysis)")
    analyze.add_argument("--max-samples", type=int, default=256)
    analyze.add_argument("--block", type=int, default=2, help="n for the block angular distance h_i vs h_i+n")
    analyze.set_defaults(func=_analyze)
    prune = sub.add_parser("prune", help="drop the least important layers outside the visual region")
    prune.add_argument("checkpoint")
    prune.add_argument("--drop", type=int, required=True, help="number of layers to remove")
    prune.add_argument("--metric", default="angular", help="ranking metric (a column of layers.csv)")
    prune.add_argument("--data", required=True, help="VQA shards: calibration, accuracy, answer loss, speed")
    prune.add_argument("--captions", default=None, help="caption shards for held-out caption loss")
    prune.add_argument("--out", required=True, help="folder of the pruned checkpoint")
    prune.add_argument("--max-samples", type=int, default=100)
    prune.add_argument("--base", default=None, help="base weights (for param_* metrics)")
    prune.add_argument("--scores", default=None, help="layers.json from `vregion analyze` (skips calibration)")
    prune.set_defaults(func=_prune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunDirectoryError) as e:
        print(f"vregion: config error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

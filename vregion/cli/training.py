"""`vregion train | doctor | transfer | transfer-demo | replicate | bench`: the verbs that run training."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vregion.config import ConfigError, resolve_config_path
from vregion.validate import load_and_validate

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: stopped by SIGTERM/SIGUSR1 after a checkpoint; `--resume` continues


def _train(args: argparse.Namespace) -> int:
    cfg = load_and_validate(resolve_config_path(args.config), args.overrides)
    from vregion.engine.run import run_training  # heavy imports only once the config is valid
    from vregion.engine.exit_status import write_exit_status
    from vregion.engine.trainer import Preempted

    try:
        run_training(cfg, resume=args.resume)
    except Preempted as stop:
        print(f"vregion: {stop}", file=sys.stderr)
        write_exit_status(PREEMPTED_EXIT, stop.step, stop.signal_name)
        return PREEMPTED_EXIT
    write_exit_status(0)
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from vregion.launch.preflight import run_doctor

    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0, got {args.timeout}")
    return run_doctor(args.config, args.overrides, timeout=args.timeout)


def _probe_vision(args: argparse.Namespace) -> int:
    import json

    from vregion.assets import resolve_asset
    from vregion.eval.feature_probe import probe_tower
    from vregion.models.backbones import build_vision_backbone

    if min(args.train, args.eval, args.epochs) < 1:
        raise ConfigError(f"--train, --eval and --epochs must be >= 1, got {args.train}, {args.eval}, {args.epochs}")
    cfg = load_and_validate(resolve_config_path(args.config), args.overrides)
    vision = cfg.model.vision
    vision.path = resolve_asset(vision.path, cfg.model.llm.cache_dir)
    result = probe_tower(build_vision_backbone(vision), args.train, args.eval, args.epochs, seed=args.seed)
    print(json.dumps(result, indent=1))
    return 0


def _transfer(args: argparse.Namespace) -> int:
    cfg = load_and_validate(resolve_config_path(args.config), args.overrides)
    from vregion.transfer import run_transfer

    run_transfer(cfg, resume=args.resume)
    return 0


def _transfer_demo(args: argparse.Namespace) -> int:
    from vregion.transfer.demo import run_demo

    run_demo(Path(args.out), args.source_steps, args.scratch_steps, args.transfer_steps, args.warmup_steps,
             args.eval_every, args.transfer_eval_every, args.seed)
    return 0


def _replicate(args: argparse.Namespace) -> int:
    from vregion.replicate import run_replication

    def names(text):
        return None if text is None else [n for n in text.split(",") if n and n != "none"]

    try:
        run_replication(args.out, args.config, args.overrides, tuple(int(s) for s in args.seeds.split(",")),
                        args.steps, args.align_steps, names(args.variants), names(args.schedules), args.max_samples,
                        args.text, args.best, args.report_only, args.drop_finals)
    except RuntimeError as e:  # a run failed; its own output is above, and re-running continues
        print(f"vregion: replicate: {e}", file=sys.stderr)
        return 1
    return 0


def _bench(args: argparse.Namespace) -> int:
    cfg = load_and_validate(resolve_config_path(args.config), args.overrides)
    stages = cfg.stage_configs()
    names = [s.stage_name for s in stages]
    stage = stages[-1] if args.stage is None else next((s for s in stages if s.stage_name == args.stage), None)
    if stage is None:
        raise ConfigError(f"no stage {args.stage!r}; stages: {', '.join(names)}")
    from vregion.assets import resolve_config_assets

    if args.plan:
        from vregion.bench.plan import plan_text

        stage = resolve_config_assets(stage)  # a local model's shape comes from its config.json
        try:
            print(plan_text(stage, args.gpus, args.gpu, args.samples, args.tokens_per_sample, args.profile))
        except ValueError as e:  # a model the plan has no shape for: say which, and what to provide
            raise ConfigError(f"--plan: {e}") from None
        return 0
    from vregion.bench.run import check_variants, default_variants, run_bench, schedule_variants
    from vregion.bench.report import Projection
    from vregion.engine.prepare import prepare_data

    variants, schedule = (args.variants.split(","), None) if args.variants else default_variants(stage)
    if args.schedule:
        schedule = args.schedule
        variants = schedule_variants(variants[0], args.schedule)
    try:
        check_variants(stage, variants)
    except ValueError as e:  # a bad --variants: before data or models are prepared
        raise ConfigError(f"--variants: {e}") from None
    stage = prepare_data(stage, Path(stage.run.output_dir).resolve())
    stage = resolve_config_assets(stage)
    out = Path(args.out or Path(stage.run.output_dir) / "bench")
    projection = Projection(args.samples, args.epochs, args.global_batch, args.gpus)
    run_bench(stage, variants, args.rounds, args.steps, out, schedule=schedule, peak=args.peak_tflops,
              projection=projection, memory=not args.no_memory)
    return 0


def add_commands(sub) -> None:
    """The training verbs' parsers."""
    train = sub.add_parser("train", help="train a config (all its stages)")
    train.add_argument("config", help="YAML file, or a shipped config name (tiny, demo, ...)")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=1e-4 region.count=8")
    train.add_argument("--resume", action="store_true", help="continue from the run directory's last checkpoint")
    train.set_defaults(func=_train)

    doctor = sub.add_parser("doctor", help="check this node, or under srun every node, before a multi-node job: "
                            "versions, accelerators, config, shards, output directory, rendezvous port")
    doctor.add_argument("config", nargs="?", default=None, help="the config the job will train (omit to check "
                        "only software, accelerators and the port)")
    doctor.add_argument("overrides", nargs="*", help="the job's dotted overrides")
    doctor.add_argument("--timeout", type=float, default=30.0, help="seconds the first node waits for the "
                        "others' reports (and they for it)")
    doctor.set_defaults(func=_doctor)

    probe = sub.add_parser("probe-vision", help="linear probe of a config's vision tokens on generated scenes: "
                           "per-object colour and shape accuracy (JSON), before spending a training run on them")
    probe.add_argument("config", help="YAML file, or a shipped config name; only model.vision is used")
    probe.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.vision.feature_blocks=[15,5]")
    probe.add_argument("--train", type=int, default=3000, help="training scenes")
    probe.add_argument("--eval", type=int, default=500, help="eval scenes (each holds a held-out colour-shape pair)")
    probe.add_argument("--epochs", type=int, default=30)
    probe.add_argument("--seed", type=int, default=0)
    probe.set_defaults(func=_probe_vision)

    transfer = sub.add_parser("transfer", help="VPG transfer: init from transfer.source, projector warm-up, then train")
    transfer.add_argument("config", help="target config (model = target LLM; transfer.source = source checkpoint)")
    transfer.add_argument("overrides", nargs="*", help="dotted overrides, e.g. transfer.source=runs/a/train/final")
    transfer.add_argument("--resume", action="store_true", help="continue the transfer run in run.output_dir")
    transfer.set_defaults(func=_transfer)
    demo = sub.add_parser("transfer-demo", help="VPG transfer SmolLM2-135M -> Gemma3-270M vs a projector from scratch")
    demo.add_argument("--out", default="runs/transfer-demo", help="folder of the five runs and the report")
    demo.add_argument("--source-steps", type=int, default=40, help="projector steps on SmolLM2 (the source)")
    demo.add_argument("--scratch-steps", type=int, default=80, help="projector steps of the from-scratch baseline")
    demo.add_argument("--warmup-steps", type=int, default=20, help="transferred runs: 5x-lr projector warm-up steps")
    demo.add_argument("--transfer-steps", type=int, default=10, help="transferred runs: projector steps after warm-up")
    demo.add_argument("--eval-every", type=int, default=10, help="scratch run: steps between held-out evaluations")
    demo.add_argument("--transfer-eval-every", type=int, default=5, help="transferred runs: steps between evaluations")
    demo.add_argument("--seed", type=int, default=0, help="run.seed of all five runs (data order, projector init)")
    demo.set_defaults(func=_transfer_demo)

    rep = sub.add_parser("replicate", help="visual-region replication: stage 1, stage-2 region variants, compression "
                         "schedules, held-out evals, report (markdown + plot) against the papers")
    rep.add_argument("overrides", nargs="*", help="dotted overrides of the config, applied before its stages resolve")
    rep.add_argument("--config", default="demo", help="config with an align stage first and the region stage last")
    rep.add_argument("--out", default="runs/replicate", help="folder of every run and the report (re-run to continue)")
    rep.add_argument("--seeds", default="0,1", help="comma list; every run is repeated per seed")
    rep.add_argument("--steps", type=int, default=None, help="stage-2 optimizer steps (default: the config's)")
    rep.add_argument("--align-steps", type=int, default=None, help="stage-1 optimizer steps (default: the config's)")
    rep.add_argument("--variants", default=None,
                     help="comma list: full, projector, uniform-N, bottom-N, middle-N, top-N, bottom-top-N, metric-N, "
                          "metric-<metric>-N (default: full, projector, uniform-1,2,4,8,15, bottom/middle/top-8, "
                          "metric-8)")
    rep.add_argument("--schedules", default=None,
                     help="compression presets run on the best region, comma list or 'none' (default: every preset)")
    rep.add_argument("--best", default=None, help="region variant the schedules run on (default: the best finished "
                     "region no larger than the config's, by held-out accuracy)")
    rep.add_argument("--max-samples", type=int, default=None, help="held-out samples per set (default: the config's)")
    rep.add_argument("--text", default=None, help="passage file for text perplexity (default: paragraphs of Debian's "
                     "/usr/share/common-licenses)")
    rep.add_argument("--report-only", action="store_true", help="run nothing; report the finished runs in --out")
    rep.add_argument("--drop-finals", action="store_true", help="delete each stage-2 model once evaluated (saves "
                     "~0.55 GB a run on the demo; stage 1's and full's are kept)")
    rep.set_defaults(func=_replicate)

    bench = sub.add_parser("bench", help="time, throughput, MFU, memory and projected GPU-hours of training variants")
    bench.add_argument("config")
    bench.add_argument("overrides", nargs="*")
    bench.add_argument("--variants", default=None,
                       help="comma list of full, region, region-lora, projector, each optionally @K/S (pooling at "
                            "K of 32 layers, stride S) and +packed / +grouped, and hf-trainer (full's training by "
                            "transformers.Trainer as HF LLaVA: the reference row when first); first = baseline "
                            "of the ratios. Default: full, region, "
                            "region-lora, full at each compressed stage of the config's schedule (else "
                            "four-wider-then-deeper), region at its heaviest stage, + the schedule's average")
    bench.add_argument("--schedule", default=None,
                       help="compression preset: time the first variant with each of its stages, plus the run average")
    bench.add_argument("--stage", default=None, help="stage whose settings are used (default: the last)")
    bench.add_argument("--rounds", type=int, default=3, help="interleaved A B C rounds (after a warm-up round)")
    bench.add_argument("--steps", type=int, default=1, help="optimizer steps per variant per round")
    bench.add_argument("--out", default=None, help="folder for bench.md / .json / .png (default: <run>/bench)")
    bench.add_argument("--peak-tflops", default=None,
                       help="peak for MFU: h100 | h200 | a100 | h100-pcie | TFLOP/s (default: the GPU's bf16 dense "
                            "peak if known, else a measured matmul rate, e.g. on CPU)")
    bench.add_argument("--no-memory", action="store_true",
                       help="skip peak memory (measured in the warm-up; on CPU it needs Linux + glibc)")
    bench.add_argument("--plan", action="store_true",
                       help="print the analytic plan (params, FLOPs, memory per GPU, epoch time) instead of running")
    bench.add_argument("--gpus", type=int, default=1, help="GPUs (data-parallel ranks) of the projected / planned run")
    bench.add_argument("--gpu", default="h100", help="--plan: h100 | h200 | a100 | a peak in bf16 TFLOP/s")
    bench.add_argument("--samples", type=int, default=665_000, help="samples in one epoch of the projected run")
    bench.add_argument("--epochs", type=float, default=1.0, help="epochs of the projected run")
    bench.add_argument("--global-batch", type=int, default=128, help="global batch of the projected run")
    bench.add_argument("--tokens-per-sample", type=int, default=None,
                       help="--plan: LLM tokens per sample (default: visual tokens + 256, capped by data.max_length)")
    bench.add_argument("--profile", default=None,
                       help="--plan: a length profile (llava-665k) for tokens per sample and each data mode's padding "
                            "(padded, +grouped, +packed variants)")
    bench.set_defaults(func=_bench)

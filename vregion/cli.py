"""`vregion` command line: parse, build, call. Every hyperparameter lives in the config, not here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vregion.config import ConfigError, resolve_config_path
from vregion.errors import RunDirectoryError
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


def _data_demo_tasks(args: argparse.Namespace) -> int:
    from vregion.assets import prepare_demo_sources
    from vregion.data.demo_tasks import build_demo_tasks

    prepare_demo_sources()
    print(json.dumps(build_demo_tasks(args.out, seed=args.seed, image_size=args.image_size), indent=1))
    return 0


def _data_synth(args: argparse.Namespace) -> int:
    from vregion.data.profile_synth import make_profile_shards
    from vregion.data.profiles import describe_profiles

    if args.profile == "list":
        print("\n".join(describe_profiles()))
        return 0
    if args.out is None:
        raise SystemExit("vregion data synth: OUT is required (except with --profile list)")
    print(make_profile_shards(args.out, args.profile, args.num, args.image_size, args.seed, args.samples_per_shard))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from vregion.region.analyze import analyze_checkpoint

    out = Path(args.out or Path(args.checkpoint) / "analysis")
    analyze_checkpoint(args.checkpoint, args.data, out, args.max_samples, base=args.base, block=args.block)
    print(f"wrote {out / 'layers.csv'}, {out / 'layers.json'}, {out / 'layers.png'}")
    return 0


def _prune(args: argparse.Namespace) -> int:
    import contextlib

    if args.scores and not Path(args.scores).is_file():
        raise ConfigError(f"--scores: no such file {args.scores}")
    # stdout carries only the JSON report: library prints and logs (DeepSpeed's accelerator warning) go to stderr.
    with contextlib.redirect_stdout(sys.stderr):
        from vregion.region.analyze import prune_checkpoint

        table = json.loads(Path(args.scores).read_text())["layers"] if args.scores else None
        # Bad values (ConfigError, exit 2) are refused before the model loads or calibration runs.
        report = prune_checkpoint(args.checkpoint, args.drop, args.metric, args.data, args.out, captions=args.captions,
                                  max_samples=args.max_samples, base=args.base, table=table)
    print(json.dumps(report, indent=2))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from vregion.engine.convert import convert_checkpoint

    print(f"wrote {convert_checkpoint(args.checkpoint, args.out, dtype=args.dtype)}")
    return 0


def _check_compress(value: str) -> None:
    """A --compress value (auto | none | K/S), refused with exit 2 before any model loads."""
    from vregion.compress.from_config import inference_setting

    if value != "auto":
        try:
            inference_setting(value, "--compress")
        except ValueError as e:
            raise ConfigError(f"{e}; valid: auto (the checkpoint's own setting) | none | K/S") from None


def _sampling(args: argparse.Namespace):
    """The decoding flags as a checked Sampling (exit 2 on a bad value)."""
    from vregion.chat import ChatError, Sampling

    try:
        return Sampling(args.max_new_tokens, args.temperature, args.top_p).check()
    except ChatError as e:
        raise ConfigError(str(e)) from None


def _load_chat_models(paths: list[str], compress: str):
    """Checkpoints loaded for answering, after every argument was checked; library prints go to stderr."""
    import contextlib

    from vregion.models.checkpoint import require_checkpoint

    for path in paths:
        require_checkpoint(path)
    _check_compress(compress)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only answers (--prompt is scriptable)
        from vregion.chat import ChatModel

        return [ChatModel.load(path, compress) for path in paths]


def _chat(args: argparse.Namespace) -> int:
    sampling = _sampling(args)
    if args.image is not None and not Path(args.image).is_file():
        raise ConfigError(f"--image: no such file {args.image}")
    models = _load_chat_models([args.checkpoint, *([args.compare] if args.compare else [])], args.compress)
    import torch

    from vregion.chat import ChatError
    from vregion.chat.terminal import TerminalChat

    torch.manual_seed(args.seed)  # sampled answers repeat with the same seed
    chat = TerminalChat(models, sampling)
    try:
        chat.set_image(args.image)
        if args.prompt is not None:
            chat.ask(args.prompt, labelled=args.compare is not None)
            return 0
    except ChatError as e:
        raise ConfigError(str(e)) from None
    chat.loop()
    return 0


def _serve(args: argparse.Namespace) -> int:
    sampling = _sampling(args)
    try:
        import flask  # noqa: F401  (the `serve` extra)
    except ImportError:
        print('vregion: serve: needs Flask: pip install -e ".[serve]" (or pip install "flask>=3.0")', file=sys.stderr)
        return 2
    from vregion.chat.server import PortInUse, bind

    try:
        server = bind(args.host, args.port)  # before the models load: a taken port fails at once
    except PortInUse as e:
        print(f"vregion: serve: {e}", file=sys.stderr)
        return 2
    try:
        models = _load_chat_models(args.checkpoints, args.compress)
        import torch

        torch.manual_seed(args.seed)
        server.load(models, sampling)
        print(f"serving {len(args.checkpoints)} checkpoint(s) on {server.url} (Ctrl-C stops)", file=sys.stderr)
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vregion.eval.run import EvalOptions, run_eval

    if not any((args.vqa, args.choices, args.captions, args.loss, args.text)):
        raise ConfigError("nothing to evaluate: give --vqa, --choices, --captions, --loss and/or --text")
    if args.candidates and not args.choices:
        raise ConfigError("--candidates lists the answers --choices ranks: give --choices SHARDS too")
    from vregion.models.checkpoint import require_checkpoint

    require_checkpoint(args.checkpoint)  # bad values exit 2 before any model loads
    _check_compress(args.compress)
    opts = EvalOptions(vqa=args.vqa, choices=args.choices, candidates=args.candidates, captions=args.captions,
                       loss=args.loss, text=args.text, compress=args.compress, max_samples=args.max_samples,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_examples=args.num_examples,
                       dtype=args.dtype)
    run_eval(args.checkpoint, opts, out=args.out)
    return 0


def _export(args: argparse.Namespace) -> int:
    from vregion.models.hf_export import ExportError, export_checkpoint

    try:
        result = export_checkpoint(args.checkpoint, args.out, args.format, args.allow_uncompressed)
    except (ExportError, FileNotFoundError) as e:
        print(f"vregion: export: {e}", file=sys.stderr)
        return 2
    if result.get("warning"):
        print(f"vregion: export: warning: {result['warning']}", file=sys.stderr)
    if result["format"] == "vregion":
        print(f"kept the vregion format ({result['reason']}); wrote {result['path']}")
    else:
        print(f"wrote a Hugging Face LLaVA folder to {result['path']}")
    print(f"load it with:\n{result['load']}")
    return 0


def _import(args: argparse.Namespace) -> int:
    from vregion.models.importer import ImportRefused, import_checkpoint

    try:
        result = import_checkpoint(args.source, args.out, template=args.template, vision=args.vision)
    except (ImportRefused, FileNotFoundError) as e:
        print(f"vregion: import: {e}", file=sys.stderr)
        return 2
    out = Path(result["path"]).resolve()
    m = result["model"]
    print(f"imported {result['kind']} {args.source} -> {out}")
    for note in result["notes"]:
        print(f"  {note}")
    print(f"train from it with this model section (or evaluate / export the folder as it is):\n"
          f"model:\n  init_from: {out}\n  vision: {{type: {m['vision']['type']}, path: {out / 'vision'}, "
          f"feature_layer: {m['vision']['feature_layer']}, image_aspect: {m['vision']['image_aspect']}}}\n"
          f"  projector: {{type: {m['projector']['type']}}}\n  llm: {{path: {out / 'llm'}}}\n"
          f"  template: {m['template']}")
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

    doctor = sub.add_parser("doctor", help="check this node, or under srun every node, before a multi-node job: "
                            "versions, accelerators, config, shards, output directory, rendezvous port")
    doctor.add_argument("config", nargs="?", default=None, help="the config the job will train (omit to check "
                        "only software, accelerators and the port)")
    doctor.add_argument("overrides", nargs="*", help="the job's dotted overrides")
    doctor.add_argument("--timeout", type=float, default=30.0, help="seconds the first node waits for the "
                        "others' reports (and they for it)")
    doctor.set_defaults(func=_doctor)

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
    tasks = data.add_parser("demo-tasks", help="the demo's tasks: 48 everyday objects in many emoji views, "
                            "compositional scene VQA, Fashion-MNIST; held-out styles, scenes and pairs")
    tasks.add_argument("out")
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--image-size", type=int, default=128, help="side of the stored pictures")
    tasks.set_defaults(func=_data_demo_tasks)
    synth = data.add_parser("synth", help="generated shards for smoke runs (coloured shapes) or a length profile")
    synth.add_argument("out", nargs="?")
    synth.add_argument("--profile", default="shapes",
                       help="shapes (default) | llava-665k (LLaVA-1.5 mix lengths) | list (print the profiles)")
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

    evaluate = sub.add_parser("eval", help="held-out loss, VQA exact-match accuracy and text perplexity of a "
                              "checkpoint (JSON); under the deepspeed launcher each rank scores a share")
    evaluate.add_argument("checkpoint", help="vregion checkpoint folder (e.g. runs/x/final)")
    evaluate.add_argument("--vqa", default=None, help="short-answer VQA shards: greedy answers, normalised exact "
                          "match, and the answer loss")
    evaluate.add_argument("--choices", default=None, help="VQA shards scored closed-set: every candidate answer "
                          "ranked by its log-likelihood given the prompt; accuracy (gold ranked first) and mean rank")
    evaluate.add_argument("--candidates", default=None, help="with --choices: file of candidate answers, one a line "
                          "(default: the distinct normalised gold answers of the first --max-samples samples)")
    evaluate.add_argument("--captions", default=None, help="caption shards: held-out loss and perplexity")
    evaluate.add_argument("--loss", default=None, help="any conversation shards: held-out loss and perplexity")
    evaluate.add_argument("--text", default=None, help="text file (one passage a line) or text-only shards: "
                          "perplexity, i.e. the language ability left after tuning")
    evaluate.add_argument("--compress", default="auto", help="visual-token pooling: auto (the checkpoint's "
                          "compress.inference: its schedule's setting or a K/S) | none | K/S (K of 32 layers, scaled "
                          "to the model)")
    evaluate.add_argument("--max-samples", type=int, default=200, help="samples per set, over all ranks")
    evaluate.add_argument("--batch-size", type=int, default=16, help="samples per forward / generation, per rank")
    evaluate.add_argument("--max-new-tokens", type=int, default=16, help="generation budget per answer")
    evaluate.add_argument("--num-examples", type=int, default=4, help="example answers kept in the JSON")
    evaluate.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"), help="model dtype")
    evaluate.add_argument("--out", default=None, help="also write the JSON to this file")
    evaluate.set_defaults(func=_eval)
    export = sub.add_parser("export", help="write a checkpoint as a Hugging Face LLaVA folder (CLIP/SigLIP + "
                            "llama/mistral/qwen2/gemma3), or keep the vregion format")
    export.add_argument("checkpoint", help="vregion checkpoint folder")
    export.add_argument("out", help="new output folder")
    export.add_argument("--format", default="auto", choices=("auto", "hf"),
                        help="hf: LlavaForConditionalGeneration or an error; auto: hf when possible, else a copy in "
                             "the vregion format (loaded with vregion.models.load_checkpoint)")
    export.add_argument("--allow-uncompressed", action="store_true",
                        help="export to hf a checkpoint that pools visual tokens inside the LLM at inference "
                             "(compress.inference); LLaVA cannot pool, so the exported model runs uncompressed "
                             "(recorded in vregion_export.json). Without it such a checkpoint is refused")
    export.set_defaults(func=_export)

    imp = sub.add_parser("import", help="write a vregion checkpoint from a Hugging Face LLaVA folder (llava-hf/*, "
                         "`vregion export` output) or an original LLaVA-1.5 folder; logits stay equal")
    imp.add_argument("source", help="local folder: LlavaForConditionalGeneration, or LLaVA's LlavaLlamaForCausalLM")
    imp.add_argument("out", help="new output folder (a vregion checkpoint)")
    imp.add_argument("--template", default=None, help="vregion chat template (default: inferred from the source's "
                     "chat template; vicuna-v1 for original LLaVA-1.5 folders without one)")
    imp.add_argument("--vision", default=None, help="original LLaVA: the vision tower's local Hugging Face folder "
                     "(default: the config's mm_vision_tower)")
    imp.set_defaults(func=_import)
    chat = sub.add_parser("chat", help="talk to a checkpoint in the terminal about an image (or answer one "
                          "--prompt and exit)")
    chat.add_argument("checkpoint", help="vregion checkpoint folder (trained, pruned, converted or imported)")
    chat.add_argument("--image", default=None, help="image file the conversation is about (/image PATH switches)")
    chat.add_argument("--prompt", default=None, help="ask this, print the answer and exit")
    chat.add_argument("--compare", default=None, metavar="CKPT2", help="a second checkpoint answering the same "
                      "questions, printed after the first")
    _decoding_flags(chat)
    chat.set_defaults(func=_chat)
    serve = sub.add_parser("serve", help="a local web page: upload an image, ask, see each checkpoint's answer "
                           "stream in, beside its config and held-out results")
    serve.add_argument("checkpoints", nargs="+", help="one or more vregion checkpoint folders")
    serve.add_argument("--port", type=int, default=7860, help="TCP port")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    _decoding_flags(serve)
    serve.set_defaults(func=_serve)

    convert = sub.add_parser("convert", help="DeepSpeed checkpoint (any ZeRO stage) -> vregion model checkpoint")
    convert.add_argument("checkpoint", help="checkpoints/step-N folder, or a run/stage folder (newest complete one)")
    convert.add_argument("out", help="output folder (model.safetensors + config.yaml)")
    convert.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the floating weights")
    convert.set_defaults(func=_convert)
    return parser


def _decoding_flags(parser: argparse.ArgumentParser) -> None:
    """The flags `chat` and `serve` share: inference compression and how answers are decoded."""
    parser.add_argument("--compress", default="auto", help="visual-token pooling: auto (the checkpoint's "
                        "compress.inference) | none | K/S (K of 32 layers, scaled to the model), as in eval")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="answer length limit in tokens")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy (the answers eval scores); "
                        "> 0: sample at this temperature")
    parser.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability mass kept")
    parser.add_argument("--seed", type=int, default=0, help="sampling: torch seed set once at start")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with `key=value` overrides accepted anywhere after the config, also after flags
    (argparse alone ends the `overrides` positional at the first flag and rejects the rest)."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(args, "overrides") or any(a.startswith("-") or "=" not in a for a in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, RunDirectoryError) as e:
        print(f"vregion: config error: {e}", file=sys.stderr)
        return 2


def run() -> None:
    """The `vregion` program: `main`, then leave the process group before the interpreter exits.

    `main` itself leaves it alone, so code that calls it in-process (tests, notebooks) keeps its group.
    """
    code = main()
    # Only commands that set up torch.distributed imported this module; the others stay free of torch.
    distributed = sys.modules.get("vregion.distributed")
    if distributed is not None:
        distributed.shutdown(wait_for_peers=code == 0)  # a failed rank must not wait for the others
    sys.exit(code)


if __name__ == "__main__":
    run()

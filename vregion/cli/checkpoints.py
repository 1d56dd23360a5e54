"""`vregion eval | analyze | prune | convert | export | import`: verbs that read or write checkpoints."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vregion.config import ConfigError

from .flags import check_compress


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


def _eval(args: argparse.Namespace) -> int:
    from vregion.eval.run import EvalOptions, run_eval

    if not any((args.vqa, args.choices, args.captions, args.loss, args.text)):
        raise ConfigError("nothing to evaluate: give --vqa, --choices, --captions, --loss and/or --text")
    if args.candidates and not args.choices:
        raise ConfigError("--candidates lists the answers --choices ranks: give --choices SHARDS too")
    if args.predictions and not args.vqa:
        raise ConfigError("--predictions lists the --vqa answers: give --vqa SHARDS too")
    from vregion.models.checkpoint import require_checkpoint

    require_checkpoint(args.checkpoint)  # bad values exit 2 before any model loads
    check_compress(args.compress)
    opts = EvalOptions(vqa=args.vqa, choices=args.choices, candidates=args.candidates, captions=args.captions,
                       loss=args.loss, text=args.text, compress=args.compress, max_samples=args.max_samples,
                       batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, num_examples=args.num_examples,
                       dtype=args.dtype, predictions=args.predictions)
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


def add_commands(sub) -> None:
    """The checkpoint verbs' parsers."""
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
    evaluate.add_argument("--predictions", default=None, help="with --vqa: write every answer to this JSONL file, "
                          "one line per question in the set's order: position, id, question, gold, answer, correct")
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
    convert = sub.add_parser("convert", help="DeepSpeed checkpoint (any ZeRO stage) -> vregion model checkpoint")
    convert.add_argument("checkpoint", help="checkpoints/step-N folder, or a run/stage folder (newest complete one)")
    convert.add_argument("out", help="output folder (model.safetensors + config.yaml)")
    convert.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="dtype of the floating weights")
    convert.set_defaults(func=_convert)

"""`vregion data pack | demo | demo-tasks | synth`: build webdataset shards."""

from __future__ import annotations

import argparse
import json


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


def add_commands(sub) -> None:
    """`vregion data` and its sub-verbs."""
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

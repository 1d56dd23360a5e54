"""`vregion chat | serve`: talk to checkpoints in the terminal or on a local web page."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vregion.config import ConfigError

from .flags import add_decoding_flags, check_compress, checked_sampling


def _load_chat_models(paths: list[str], compress: str):
    """Checkpoints loaded for answering, after every argument was checked; library prints go to stderr."""
    import contextlib

    from vregion.models.checkpoint import require_checkpoint

    for path in paths:
        require_checkpoint(path)
    check_compress(compress)
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries only answers (--prompt is scriptable)
        from vregion.chat import ChatModel

        return [ChatModel.load(path, compress) for path in paths]


def _chat(args: argparse.Namespace) -> int:
    sampling = checked_sampling(args)
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
    sampling = checked_sampling(args)
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


def add_commands(sub) -> None:
    """The chat verbs' parsers."""
    chat = sub.add_parser("chat", help="talk to a checkpoint in the terminal about an image (or answer one "
                          "--prompt and exit)")
    chat.add_argument("checkpoint", help="vregion checkpoint folder (trained, pruned, converted or imported)")
    chat.add_argument("--image", default=None, help="image file the conversation is about (/image PATH switches)")
    chat.add_argument("--prompt", default=None, help="ask this, print the answer and exit")
    chat.add_argument("--compare", default=None, metavar="CKPT2", help="a second checkpoint answering the same "
                      "questions, printed after the first")
    add_decoding_flags(chat)
    chat.set_defaults(func=_chat)
    serve = sub.add_parser("serve", help="a local web page: upload an image, ask, see each checkpoint's answer "
                           "stream in, beside its config and held-out results")
    serve.add_argument("checkpoints", nargs="+", help="one or more vregion checkpoint folders")
    serve.add_argument("--port", type=int, default=7860, help="TCP port")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine only)")
    add_decoding_flags(serve)
    serve.set_defaults(func=_serve)

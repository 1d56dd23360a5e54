"""`vregion serve`: a local web page to ask one or more checkpoints about an uploaded image.

Flask (a small, pure-Python, long-maintained framework whose install changes none of torch, transformers,
huggingface_hub or deepspeed; Gradio would bring its own pinned stack) serves one page and one streaming endpoint
per checkpoint; werkzeug's threaded server runs it, bound to 127.0.0.1 unless told otherwise. Answers stream as newline-delimited JSON, which the page's script appends as it
reads; a request the model cannot answer (undecodable image, over-long prompt, bad decoding values) gets a 400
with the reason, which the page shows.
"""

from __future__ import annotations

import errno
import json
import socket
import threading
import time
from typing import Iterator

from .conversation import Conversation
from .model import ChatError, ChatModel, Sampling
from .page import PAGE
from .summary import checkpoint_summary

MAX_UPLOAD_BYTES = 32 * 1024 * 1024  # one photo; larger requests get a 413 before anything is read
MAX_PROMPT_CHARS = 4000  # refused before tokenizing; the token limit (data.max_length) is checked after


class PortInUse(OSError):
    """The port cannot be bound (another server holds it)."""


def _form_sampling(form, default: Sampling) -> Sampling:
    """Decoding values from the page's form, the server's flags where a field is empty."""
    def number(name: str, kind, fallback):
        text = (form.get(name) or "").strip()
        if not text:
            return fallback
        try:
            return kind(text)
        except ValueError:
            raise ChatError(f"{name.replace('_', ' ')} must be a number, got {text!r}") from None

    return Sampling(number("max_new_tokens", int, default.max_new_tokens),
                    number("temperature", float, default.temperature),
                    number("top_p", float, default.top_p)).check()


def build_app(models: list[ChatModel], sampling: Sampling):
    """The Flask app: GET / (the page) and POST /api/answer/<i> (checkpoint i's streamed answer)."""
    from flask import Flask, Response, jsonify, render_template_string, request, stream_with_context

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_UPLOAD_BYTES
    cards = [checkpoint_summary(m.path, m.config, m.compression, m.model.runner.num_layers) for m in models]
    locks = [threading.Lock() for _ in models]  # one answer at a time per model; models answer in parallel

    def error(message: str, status: int = 400):
        return jsonify(error=message), status

    @app.errorhandler(413)
    def too_large(_):
        return error(f"the upload is larger than {MAX_UPLOAD_BYTES // 2**20} MiB", 413)

    @app.get("/")
    def page():
        return render_template_string(PAGE, cards=cards, sampling=sampling, max_chars=MAX_PROMPT_CHARS)

    @app.post("/api/answer/<int:index>")
    def answer(index: int):
        if not 0 <= index < len(models):
            return error(f"no checkpoint {index}; this server has {len(models)}", 404)
        model = models[index]
        prompt = request.form.get("prompt", "")
        try:
            if len(prompt) > MAX_PROMPT_CHARS:
                raise ChatError(f"the question is {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
            upload = request.files.get("image")
            data = upload.read() if upload is not None else b""
            conversation = Conversation(model.read_image(data) if data else None)
            reply = model.reply(conversation, prompt, _form_sampling(request.form, sampling))
        except ChatError as e:
            return error(str(e))

        def events() -> Iterator[str]:
            start = time.perf_counter()
            with locks[index]:
                for delta in reply:
                    yield json.dumps({"delta": delta}) + "\n"
            yield json.dumps({"done": True, "answer": reply.text, "tokens": len(reply.tokens),
                              "seconds": time.perf_counter() - start}) + "\n"

        return Response(stream_with_context(events()), mimetype="application/x-ndjson")

    return app


class ChatServer:
    """A bound, not yet serving, HTTP server; `load` gives it the models, `serve_forever` answers."""

    def __init__(self, host: str, port: int):
        from werkzeug.serving import make_server

        self._app = None
        # Bound here, not by werkzeug, whose own bind failure prints and exits the process.
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port left in TIME_WAIT is free
            sock.bind((host, port))
            sock.listen(128)
            # The WSGI callable defers to the app set by `load`: the port is taken before models load.
            self.httpd = make_server(host, port, self._dispatch, threaded=True, fd=sock.fileno())
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise PortInUse(f"port {port} on {host} is already in use (another `vregion serve`?); "
                                "choose a free one with --port") from None
            raise
        finally:
            sock.close()  # the server holds its own duplicate of the socket
        self.host, self.port = host, self.httpd.socket.getsockname()[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _dispatch(self, environ, start_response):
        if self._app is None:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"checkpoints are still loading"]
        return self._app(environ, start_response)

    def load(self, models: list[ChatModel], sampling: Sampling) -> None:
        self._app = build_app(models, sampling)

    def serve_forever(self) -> None:
        self.httpd.serve_forever()

    def shutdown(self) -> None:
        self.httpd.shutdown()

    def server_close(self) -> None:
        self.httpd.server_close()


def bind(host: str, port: int) -> ChatServer:
    """Take `host:port` now (port 0: any free one); raises PortInUse with a message saying what to do."""
    return ChatServer(host, port)

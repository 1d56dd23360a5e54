"""`vregion chat`: a conversation in the terminal, or one answer with --prompt (scriptable)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional, TextIO

from .conversation import Conversation
from .model import ChatError, ChatModel, Sampling

HELP = "commands: /image PATH (new conversation about that image), /reset (forget the history), /quit"


def read_image_file(model: ChatModel, path: str | Path):
    """(3, S, S) pixels of an image file, or ChatError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ChatError(f"no such image file: {path}")
    try:
        return model.read_image(path.read_bytes())
    except ChatError as e:
        raise ChatError(f"{path}: {e}") from None


class TerminalChat:
    """One conversation per model (each model answers its own history), printed as the answers stream."""

    def __init__(self, models: list[ChatModel], sampling: Sampling, out: Optional[TextIO] = None):
        self.models = models
        self.sampling = sampling.check()
        self.out = sys.stdout if out is None else out  # looked up now: tests and callers may have replaced it
        self.conversations = [Conversation() for _ in models]

    def set_image(self, path: Optional[str]) -> None:
        """Start new conversations about the image at `path` (None: text only)."""
        self.conversations = [Conversation(None if path is None else read_image_file(m, path)) for m in self.models]

    def reset(self) -> None:
        self.conversations = [Conversation(c.image) for c in self.conversations]

    def ask(self, question: str, labelled: bool) -> list[str]:
        """Every model's answer to `question`, printed token by token (labelled by checkpoint when asked)."""
        # All prompts are checked before any model answers, so a too-long prompt prints no half comparison.
        replies = [m.reply(c, question, self.sampling) for m, c in zip(self.models, self.conversations)]
        answers = []
        for model, conversation, reply in zip(self.models, self.conversations, replies):
            if labelled:
                self.out.write(f"[{model.path}] ")
            for delta in reply:
                self.out.write(delta)
                self.out.flush()
            self.out.write("\n")
            conversation.add(question, reply.text)
            answers.append(reply.text)
        return answers

    def loop(self, read: Callable[[str], str] = input) -> None:
        """Read questions and commands until /quit or end of input."""
        self.out.write(f"{HELP}\n")
        while True:
            try:
                line = read("you> ").strip()
            except EOFError:
                self.out.write("\n")
                return
            if not line:
                continue
            command, _, arg = line.partition(" ")
            try:
                if command in ("/quit", "/exit"):
                    return
                if command == "/reset":
                    self.reset()
                elif command == "/image":
                    self.set_image(arg.strip() or None)
                    self.out.write(f"new conversation about {arg.strip()}\n" if arg.strip() else "text only\n")
                elif command.startswith("/"):
                    self.out.write(f"unknown command {command}; {HELP}\n")
                else:
                    self.ask(line, labelled=len(self.models) > 1)
            except ChatError as e:  # a bad image or a too-long history: say so and keep the session
                self.out.write(f"error: {e}\n")

"""Talk to a checkpoint: `vregion chat` (a terminal conversation) and `vregion serve` (a local web page).

Both load checkpoints the way `vregion eval` does (its `--compress` semantics included), render the conversation
with the checkpoint's own chat template exactly as training rendered it, and stream the answer token by token
through `VisionLanguageModel.generate` (greedy answers are its answers). The web page needs the `serve` extra.
"""

from .conversation import Conversation
from .model import ChatError, ChatModel, Sampling

__all__ = ["ChatError", "ChatModel", "Conversation", "Sampling"]

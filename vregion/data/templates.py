"""Chat templates of the supported LLMs, and LLaVA conversations -> input ids, labels and visual spans.

Ids are built piece by piece (bos, prompt text, each `<image>`, each answer, each end-of-turn token), every
piece tokenized on its own and the ids concatenated. Label boundaries are then exact by construction, with
no offset arithmetic on a whole-prompt tokenization (the source of LLaVA's "tokenization mismatch" bugs).
"""

from __future__ import annotations

from dataclasses import dataclass

from vregion.constants import IGNORE_INDEX

from .errors import (
    IMAGE_COUNT_MISMATCH,
    MALFORMED,
    NO_SUPERVISED_TOKENS,
    TOKENIZATION_MISMATCH,
    TRUNCATED_NO_SUPERVISION,
    SampleError,
)

IMAGE_TAG = "<image>"
_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class ChatTemplate:
    """How one LLM family renders a conversation. Separators that BPE tokenizers glue to the next word
    (spaces) lead the following piece, so piece-wise and whole-string tokenization agree."""

    name: str
    bos: str  # text of the begin-of-sequence token ("" when the family has none)
    end: str  # end-of-turn token closing each answer; supervised, so the model learns to stop
    default_system: str | None  # used when the conversation has no system turn
    system_fmt: str  # "{system}" is replaced by the system text
    system_sep: str  # between the system block and the first user turn
    user_fmt: str  # "{content}" is replaced by the user text
    assistant_header: str  # closes the prompt; the answer follows
    answer_prefix: str = ""  # supervised text before each answer (Vicuna's space after "ASSISTANT:")
    turn_sep: str = ""  # unsupervised text after each end-of-turn token
    system_in_user: bool = False  # no system role (Gemma): the system text opens the first user turn
    specials: tuple[str, ...] = ()  # special-token strings that must be single tokens of the tokenizer


_VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)

TEMPLATES: dict[str, ChatTemplate] = {
    # LLaVA-1.5 conv_vicuna_v1: "<s>SYS USER: q ASSISTANT: a</s>USER: q2 ASSISTANT: a2</s>"
    "vicuna-v1": ChatTemplate(
        name="vicuna-v1", bos="<s>", end="</s>", default_system=_VICUNA_SYSTEM,
        system_fmt="{system}", system_sep=" ", user_fmt="USER: {content}", assistant_header=" ASSISTANT:",
        answer_prefix=" ", specials=("<s>", "</s>"),
    ),
    # Meta Llama-3 instruct: header tokens around the role, "\n\n", content, <|eot_id|>
    "llama-3": ChatTemplate(
        name="llama-3", bos="<|begin_of_text|>", end="<|eot_id|>", default_system=None,
        system_fmt="<|start_header_id|>system<|end_header_id|>\n\n{system}<|eot_id|>", system_sep="",
        user_fmt="<|start_header_id|>user<|end_header_id|>\n\n{content}<|eot_id|>",
        assistant_header="<|start_header_id|>assistant<|end_header_id|>\n\n",
        specials=("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    # ChatML (Qwen2): no bos; Qwen's default system prompt
    "chatml": ChatTemplate(
        name="chatml", bos="", end="<|im_end|>", default_system="You are a helpful assistant.",
        system_fmt="<|im_start|>system\n{system}<|im_end|>", system_sep="\n",
        user_fmt="<|im_start|>user\n{content}<|im_end|>\n", assistant_header="<|im_start|>assistant\n",
        turn_sep="\n", specials=("<|im_start|>", "<|im_end|>"),
    ),
    # Gemma: roles "user"/"model"; a system text is prepended to the first user turn
    "gemma": ChatTemplate(
        name="gemma", bos="<bos>", end="<end_of_turn>", default_system=None,
        system_fmt="{system}", system_sep="", user_fmt="<start_of_turn>user\n{content}<end_of_turn>\n",
        assistant_header="<start_of_turn>model\n", turn_sep="\n", system_in_user=True,
        specials=("<bos>", "<start_of_turn>", "<end_of_turn>"),
    ),
}


@dataclass
class TokenizedSample:
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX except on assistant answers and their end-of-turn token
    image_starts: list[int]  # start of each visual span, in image order; truncation may drop trailing ones


def get_template(name: str | ChatTemplate) -> ChatTemplate:
    """The template registered under `name` (a ChatTemplate passes through)."""
    if isinstance(name, ChatTemplate):
        return name
    if name not in TEMPLATES:
        raise ValueError(f"unknown chat template {name!r}; valid: {', '.join(sorted(TEMPLATES))}")
    return TEMPLATES[name]


def validate_template(tokenizer, template: str | ChatTemplate) -> None:
    """Raise ValueError if a special token of the template is not a single token of `tokenizer`
    (the template then does not belong to this LLM, and every sample would be silently wrong)."""
    tpl = get_template(template)
    for text in tpl.specials:
        ids = tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"template {tpl.name!r}: {text!r} is not one token of this tokenizer (got {ids})")


def _split_turns(conversations) -> tuple[str | None, list[tuple[str, str | None]]]:
    """(system, [(question, answer-or-None)]) from LLaVA turns; an unanswered last question is kept."""
    if not isinstance(conversations, list) or not conversations:
        raise SampleError(MALFORMED, "conversations must be a non-empty list")
    turns = []
    for turn in conversations:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise SampleError(MALFORMED, f"bad turn {turn!r:.80}")
        role = _ROLES.get(turn.get("from"))
        if role is None:
            raise SampleError(MALFORMED, f"unknown role {turn.get('from')!r}")
        turns.append((role, turn["value"]))
    system = None
    if turns[0][0] == "system":
        system = turns.pop(0)[1]
    roles = [r for r, _ in turns]
    if not turns or any(r != ("user" if i % 2 == 0 else "assistant") for i, r in enumerate(roles)):
        raise SampleError(MALFORMED, f"turns must alternate human/gpt starting with human, got {roles}")
    if (system and IMAGE_TAG in system) or any(IMAGE_TAG in v for r, v in turns if r == "assistant"):
        raise SampleError(MALFORMED, f"{IMAGE_TAG} outside a human turn")
    pairs = [(turns[i][1], turns[i + 1][1] if i + 1 < len(turns) else None) for i in range(0, len(turns), 2)]
    return system, pairs


def _render(tpl: ChatTemplate, system: str | None, pairs) -> list[tuple[str, str]]:
    """The conversation as (kind, text) pieces; kind is prompt | image | answer | end."""
    system = system if system is not None else tpl.default_system
    pieces: list[tuple[str, str]] = []
    prompt = ""
    if system and tpl.system_in_user:
        first_q, first_a = pairs[0]
        pairs = [(f"{system}\n\n{first_q}", first_a)] + list(pairs[1:])
    elif system:
        prompt = tpl.system_fmt.replace("{system}", system) + tpl.system_sep
    for question, answer in pairs:
        prompt += tpl.user_fmt.replace("{content}", question) + tpl.assistant_header
        if answer is None:
            break
        pieces += _prompt_pieces(prompt)
        pieces += [("answer", tpl.answer_prefix + answer), ("end", tpl.end)]
        prompt = tpl.turn_sep
    pieces += _prompt_pieces(prompt)  # the trailing separator, or an unanswered last question
    return [(kind, text) for kind, text in pieces if text]


def _prompt_pieces(prompt: str) -> list[tuple[str, str]]:
    """Prompt text split at each <image>, the tag becoming its own piece."""
    pieces = []
    for j, part in enumerate(prompt.split(IMAGE_TAG)):
        pieces += [("image", IMAGE_TAG)] if j else []
        pieces.append(("prompt", part))
    return pieces


def _adds_prefix_space(tokenizer) -> bool:
    """SentencePiece tokenizers (Llama-2/Vicuna) put "▁" before the first word of every encode call;
    a piece's own leading space would then become a second one, so it is dropped before encoding."""
    ids = tokenizer.encode("a", add_special_tokens=False)
    return bool(ids) and tokenizer.convert_ids_to_tokens(ids[0]).startswith("\u2581")


def _squash(text: str) -> str:
    return "".join(text.split())


def tokenize_conversation(
    conversations: list[dict],
    tokenizer,
    template: str | ChatTemplate,
    num_image_tokens: int,
    max_length: int,
    image_token_id: int,
    num_images: int | None = None,
) -> TokenizedSample:
    """Tokenize one LLaVA conversation with `template`.

    Args:
        conversations: [{"from": "human"|"gpt" (or "system" first), "value": "...<image>..."}, ...].
        num_image_tokens: visual tokens per image; each `<image>` becomes that many `image_token_id`.
        max_length: longer samples are cut, never inside a visual span (the cut moves before the span,
            and images whose span is cut away are dropped from `image_starts`).
        num_images: images stored with the sample; when given, the number of `<image>` tags must match.

    Raises:
        SampleError: reason `malformed`, `image_count_mismatch`, `no_supervised_tokens`,
            `truncated_no_supervision` or `tokenization_mismatch`. The mismatch check decodes the ids of
            all text pieces and compares with the rendered text ignoring whitespace: it catches lost or
            replaced characters (unknown tokens, normalisers), not spacing, which legitimately differs
            for SentencePiece prefix spaces.
    """
    tpl = get_template(template)
    system, pairs = _split_turns(conversations)
    _check_image_count(pairs, num_images)
    input_ids, labels, image_starts = _encode(tpl, system, pairs, tokenizer, num_image_tokens, image_token_id)
    if all(label == IGNORE_INDEX for label in labels):
        raise SampleError(NO_SUPERVISED_TOKENS)
    if len(input_ids) > max_length:
        input_ids, labels, image_starts = _truncate(input_ids, labels, image_starts, num_image_tokens, max_length)
    return TokenizedSample(input_ids, labels, image_starts)


def tokenize_prompt(
    conversations: list[dict],
    tokenizer,
    template: str | ChatTemplate,
    num_image_tokens: int,
    image_token_id: int,
    num_images: int | None = None,
) -> TokenizedSample:
    """Tokenize a conversation that ends with an unanswered question: the prompt a model answers (chat).

    The ids are exactly those `tokenize_conversation` gives the same conversation, once answered, before its
    last answer: a chat history is rendered as the model saw it in training. Nothing is truncated (the caller
    decides what an over-long prompt means); labels are all IGNORE_INDEX except on earlier answers.

    Raises:
        SampleError: reason `malformed` (also when the last turn is an answer), `image_count_mismatch` or
            `tokenization_mismatch`.
    """
    tpl = get_template(template)
    system, pairs = _split_turns(conversations)
    if pairs[-1][1] is not None:
        raise SampleError(MALFORMED, "a prompt must end with a question (a human turn)")
    _check_image_count(pairs, num_images)
    return TokenizedSample(*_encode(tpl, system, pairs, tokenizer, num_image_tokens, image_token_id))


def _check_image_count(pairs, num_images: int | None) -> None:
    num_tags = sum(q.count(IMAGE_TAG) for q, _ in pairs)
    if num_images is not None and num_tags != num_images:
        raise SampleError(IMAGE_COUNT_MISMATCH, f"{num_tags} {IMAGE_TAG} tags, {num_images} images")


def _encode(tpl: ChatTemplate, system, pairs, tokenizer, num_image_tokens: int,
            image_token_id: int) -> tuple[list[int], list[int], list[int]]:
    """(input_ids, labels, image_starts) of the rendered pieces, each piece tokenized on its own."""
    strip_space = _adds_prefix_space(tokenizer)
    input_ids: list[int] = []
    labels: list[int] = []
    image_starts: list[int] = []
    text_ids: list[int] = []
    rendered = ""
    if tpl.bos:
        input_ids.append(_single_token(tokenizer, tpl.bos, tpl))
        labels.append(IGNORE_INDEX)
    for kind, text in _render(tpl, system, pairs):
        if kind == "image":
            image_starts.append(len(input_ids))
            input_ids += [image_token_id] * num_image_tokens
            labels += [IGNORE_INDEX] * num_image_tokens
            continue
        if kind == "end":
            ids = [_single_token(tokenizer, text, tpl)]
        else:
            ids = tokenizer.encode(text[1:] if strip_space and text[0] == " " else text, add_special_tokens=False)
        input_ids += ids
        labels += ids if kind in ("answer", "end") else [IGNORE_INDEX] * len(ids)
        text_ids += ids
        rendered += text
    decoded = tokenizer.decode(text_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
    if _squash(decoded) != _squash(rendered):
        raise SampleError(TOKENIZATION_MISMATCH, f"decoded {decoded[:60]!r} != rendered {rendered[:60]!r}")
    return input_ids, labels, image_starts


def _single_token(tokenizer, text: str, tpl: ChatTemplate) -> int:
    ids = tokenizer.encode(text, add_special_tokens=False)
    if len(ids) != 1:  # a configuration error for every sample, so not a (counted, skipped) SampleError
        raise ValueError(f"template {tpl.name!r}: {text!r} is not one token of this tokenizer (got {ids})")
    return ids[0]


def _truncate(input_ids, labels, image_starts, span, max_length):
    cut = max_length
    for start in image_starts:
        if start < cut < start + span:
            cut = start  # never feed the model a partial image
    labels = labels[:cut]
    if all(label == IGNORE_INDEX for label in labels):
        raise SampleError(TRUNCATED_NO_SUPERVISION, f"nothing supervised in the first {cut} tokens")
    return input_ids[:cut], labels, [s for s in image_starts if s + span <= cut]

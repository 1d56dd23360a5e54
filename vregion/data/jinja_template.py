"""A vregion ChatTemplate as a Hugging Face Jinja chat template (`apply_chat_template`) rendering the training text.

The rendered string is the text `tokenize_conversation` tokenizes for the same conversation: system block (or
the template's default system text; Gemma puts it at the head of the first user turn), each user turn, the
assistant header, each answer with its prefix, end-of-turn token and separator. Message content is a string
(kept as written, an `<image>` in it included) or LLaVA's list of parts: every image part becomes "<image>\\n"
ahead of the text parts (joined by "\\n"), as in vregion's training data ("<image>\\n{question}").
"""

from __future__ import annotations

import json

from .templates import IMAGE_TAG, ChatTemplate, get_template


# Every tag trims the whitespace around it: the line breaks below are layout, never output.
_SOURCE = """\
{%- macro content_text(content) -%}
  {%- if content is string -%}
    {{- content -}}
  {%- else -%}
    {%- for part in content if part['type'] == 'image' -%}{{- @IMAGE@ -}}{%- endfor -%}
    {%- for part in content if part['type'] == 'text' -%}
      {{- ('\\n' if not loop.first else '') + part['text'] -}}
    {%- endfor -%}
  {%- endif -%}
{%- endmacro -%}
{%- if messages and messages[0]['role'] == 'system' -%}
  {%- set system = content_text(messages[0]['content']) -%}
  {%- set turns = messages[1:] -%}
{%- else -%}
  {%- set system = @DEFAULT_SYSTEM@ -%}
  {%- set turns = messages -%}
{%- endif -%}
{{- @BOS@ -}}
{%- if system and not @SYSTEM_IN_USER@ -%}
  {{- @SYSTEM_PRE@ + system + @SYSTEM_POST@ -}}
{%- endif -%}
{%- for message in turns -%}
  {%- if message['role'] != ['user', 'assistant'][loop.index0 % 2] -%}
    {{- raise_exception('after an optional system message, roles must alternate user/assistant from user') -}}
  {%- endif -%}
  {%- if message['role'] == 'user' -%}
    {%- set text = content_text(message['content']) -%}
    {%- if loop.first and system and @SYSTEM_IN_USER@ -%}
      {%- set text = system + '\\n\\n' + text -%}
    {%- endif -%}
    {{- @USER_PRE@ + text + @USER_POST@ -}}
  {%- else -%}
    {{- @ANSWER_PRE@ + content_text(message['content']) + @ANSWER_POST@ -}}
  {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- @HEADER@ -}}
{%- endif -%}
"""


def _lit(text: str) -> str:
    """`text` as a Jinja string literal (JSON's escapes are Jinja's: \\n, \\", \\uXXXX)."""
    return json.dumps(text)


def _around(fmt: str, field: str) -> tuple[str, str]:
    """(text before, text after) the single `{field}` of a format string."""
    before, sep, after = fmt.partition("{" + field + "}")
    if not sep:
        raise ValueError(f"format {fmt!r} has no {{{field}}}")
    return before, after


def build_jinja_template(template: str | ChatTemplate, with_bos: bool = True) -> str:
    """The Jinja chat template of `template`.

    Args:
        template: a template id (vicuna-v1, llama-3, chatml, gemma) or a ChatTemplate.
        with_bos: render the template's BOS text first. False for a tokenizer that adds BOS itself when it
            encodes text (the processor's tokenization would otherwise give two).
    Returns:
        The template source; `add_generation_prompt` appends the assistant header (the prompt end in training).
    """
    tpl = get_template(template)
    system_pre, system_post = _around(tpl.system_fmt, "system")
    user_pre, user_post = _around(tpl.user_fmt, "content")
    values = {
        "IMAGE": _lit(IMAGE_TAG + "\n"),
        "DEFAULT_SYSTEM": _lit(tpl.default_system or ""),
        "BOS": _lit(tpl.bos if with_bos else ""),
        "SYSTEM_IN_USER": "true" if tpl.system_in_user else "false",
        "SYSTEM_PRE": _lit(system_pre),
        "SYSTEM_POST": _lit(system_post + tpl.system_sep),
        "USER_PRE": _lit(user_pre),
        "USER_POST": _lit(user_post),
        "ANSWER_PRE": _lit(tpl.assistant_header + tpl.answer_prefix),
        "ANSWER_POST": _lit(tpl.end + tpl.turn_sep),
        "HEADER": _lit(tpl.assistant_header),
    }
    source = _SOURCE
    for key, value in values.items():
        source = source.replace(f"@{key}@", value)
    return source

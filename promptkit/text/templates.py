"""Chat templates: a request's messages and tools as a chat server renders them.

A chat server does not tokenize a request's texts one by one. vLLM's OpenAI
server (0.32, ``vllm/renderers``) first turns the request into a conversation
(:func:`conversation`): a message's text parts joined by newlines (empty parts
dropped, no content an empty string), an assistant's ``tool_calls`` with their
``arguments`` parsed into objects (not JSON text: an unparsable or non-object
value becomes ``{}``; an empty list is dropped), a tool result's text parts
joined; and the request's ``tools`` as its request model writes them back
(:func:`request_tools`: ``{"type": "function", "function": {"name",
"description", "parameters"}}``, a missing description or parameters as
``null``, unknown keys dropped). A template that loops over a message's content
gets it as a list of text parts instead (vLLM's "openai" content format). Then it
renders the chat template with the conversation, the tools and the generation
prompt, and tokenizes the text. A request its request model refuses (a user, system
or tool message whose content is null; a tool call without a string ``id``, ``type``
``function`` or string ``arguments``; a tool whose description is not a string) is
answered with an error: :class:`TemplateError` here.

Templates put the tools **before** the first user message's text: Qwen 2.5 in
its system turn after the system message's text, Llama 3.1 inside the first
user message before its text, Hermes (ChatML with tools) in a system turn
before every message. A nonce at the start of the user's text then comes after
hundreds of shared tokens.

The built-in templates render as the real ones do, tools included:

- ``llama3.1``: Meta's Llama 3.1 Instruct template (texts trimmed; tools in the
  first user message; one tool call a message; a tool result written as JSON).
- ``qwen2.5``: Qwen 2.5 Instruct's (its default system prompt when none is
  given; tools in the system turn).
- ``chatml``: ChatML; a request with tools as ChatML models with tool use render
  it (NousResearch Hermes 2 Pro's ``tool_use`` template, without a BOS token as
  ChatML has none): a system turn listing the tools first.
- ``hf``: the tokenizer folder's own template, through ``transformers`` exactly
  as vLLM calls it.

A request a template refuses (Llama 3.1 with two tool calls in one message,
Hermes with a tool that has no description) is a :class:`TemplateError`: the
server answers it with an error, so it is no request of the run.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Mapping
from typing import Any

from promptkit.core.errors import CheckError, InvalidRecordError, OptionNeededError
from promptkit.core.records import Message, content_texts

TEMPLATES = ("none", "llama3.1", "chatml", "qwen2.5", "hf")

#: A marker no text holds: put where content would go, it shows where the template puts
#: that content.
PROBE = "\u2063PROMPTKIT_PROBE\u2063"
#: A conversation as the template sees it: one dict a message (``role``, ``content``
#: and, where the request has them, ``tool_calls``, ``tool_call_id``, ``name``).
Conversation = list[dict[str, Any]]
#: A request's tools as the template sees them (``None``: the request has none).
Tools = list[dict[str, Any]] | None


class TemplateError(InvalidRecordError):
    """The chat template refuses the request (the server answers it with an error)."""


# ---------------------------------------------------------------- the request as vLLM reads it


def text_of(content: Any) -> str:
    """The text of a conversation's content: a text, or its text parts joined."""
    if isinstance(content, str):
        return content
    return "\n".join(part["text"] for part in content)


def message_text(content: Any) -> str:
    """A message content as the server reads it: its non-empty text parts joined by
    newlines; no content is an empty text."""
    if isinstance(content, str):
        return content
    return "\n".join(text for text in content_texts(content) if text)


def conversation(messages: Iterable[Message], parts: bool = False) -> Conversation:
    """The conversation vLLM renders of ``messages`` (see the module's rules). A message
    with no role is a user message. A message the server refuses (no content on a
    message that is not the assistant's; a tool call without a string ``id``, ``type``
    ``function``, a string name and string ``arguments``) raises
    :class:`TemplateError`. With ``parts`` (a template that loops over a message's
    content), a content is the list of its text parts, as vLLM hands it to such a
    template (a tool result's still one text)."""
    out: Conversation = []
    for message in messages:
        role = message.role or "user"
        if message.content is None and role != "assistant":
            raise TemplateError(f"a {role} message with no content (the server refuses it)")
        content: Any = message_text(message.content)
        if parts:  # every text part, empty ones too; a tool result's joined
            texts = ([] if message.content is None else [message.content]
                     if isinstance(message.content, str) else content_texts(message.content))
            content = ("\n".join(texts) if role == "tool"
                       else [{"type": "text", "text": text} for text in texts])
        item: dict[str, Any] = {"role": role, "content": content}
        fields = message.fields
        if role == "assistant" and fields.get("tool_calls") is not None:
            calls = _tool_calls(fields["tool_calls"])
            if calls:
                item["tool_calls"] = calls
        elif role == "tool" and "tool_call_id" in fields:
            item["tool_call_id"] = fields["tool_call_id"]
        if isinstance(fields.get("name"), str):
            item["name"] = fields["name"]
        out.append(item)
    return out


def _tool_calls(calls: Any) -> list[dict[str, Any]]:
    """An assistant's tool calls as the template sees them: the request model's key
    order (``id``, ``function`` with ``arguments`` then ``name``, ``type``, the rest),
    arguments parsed into an object (``{}`` where they are not one)."""
    if not isinstance(calls, list):
        raise TemplateError("'tool_calls' must be a list (the server refuses it)")
    out = []
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if (not isinstance(function, dict) or not isinstance(call.get("id"), str)
                or call.get("type") != "function" or not isinstance(function.get("name"), str)
                or not isinstance(function.get("arguments"), str)):
            raise TemplateError("a tool call without a string 'id', 'type' \"function\" and "
                                "a function of a string 'name' and string 'arguments' (the "
                                "server refuses it)")
        arguments: Any = {}
        if function["arguments"]:
            with contextlib.suppress(ValueError):
                arguments = json.loads(function["arguments"])
        item: dict[str, Any] = {
            "id": call["id"],
            "function": {"arguments": arguments if isinstance(arguments, dict) else {},
                         "name": function["name"]},
            "type": "function"}
        item.update((k, v) for k, v in call.items() if k not in item)
        out.append(item)
    return out


def request_tools(tools: Any) -> Tools:
    """A request's ``tools`` as vLLM hands them to the template (``None``: none sent)."""
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise TemplateError("'tools' must be a list of tools (the server refuses it)")
    out = []
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if (not isinstance(function, dict) or tool.get("type", "function") != "function"
                or not isinstance(function.get("name"), str)
                or not isinstance(function.get("description"), str | None)
                or not isinstance(function.get("parameters"), dict | None)):
            raise TemplateError("a tool that is not a function with a string name (and a "
                                "string description, an object of parameters) "
                                "(the server refuses it)")
        made: dict[str, Any] = {"name": function["name"],
                                "description": function.get("description"),
                                "parameters": function.get("parameters")}
        for key in ("strict", "defer_loading"):
            value = function.get(key, tool.get(key) if key == "defer_loading" else None)
            if value is not None:
                made[key] = value
        out.append({"type": "function", "function": made})
    return out


# ---------------------------------------------------------------- the built-in templates


def tojson(value: Any, indent: int | None = None) -> str:
    """The ``tojson`` filter of the templates as transformers renders them."""
    return json.dumps(value, ensure_ascii=False, indent=indent)


QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
LLAMA_HEADER = ("Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n")
LLAMA_BOS = "<|begin_of_text|>"


def render(messages: Conversation, tools: Tools, template: str) -> str:
    """The text a built-in template makes of a conversation and its tools, with the
    generation prompt at the end (as servers render a chat request)."""
    if template == "llama3.1":
        return _llama(messages, tools)
    if template == "qwen2.5":
        return _qwen(messages, tools)
    if template == "chatml":
        return _hermes(messages, tools) if tools is not None else _chatml(messages)
    raise CheckError(f"unknown chat template {template!r}; choose from {', '.join(TEMPLATES)}")


def _llama(messages: Conversation, tools: Tools) -> str:
    out = [LLAMA_BOS]
    system = ""
    if messages and messages[0]["role"] == "system":
        system, messages = messages[0]["content"].strip(), messages[1:]
    out.append("<|start_header_id|>system<|end_header_id|>\n\n")
    if tools is not None:
        out.append("Environment: ipython\n")
    out += [LLAMA_HEADER, system, "<|eot_id|>"]
    if tools is not None:
        if not messages:
            raise TemplateError("the llama3.1 template puts the tools into the first user "
                                "message, and there is none (the server refuses it)")
        first, messages = messages[0]["content"].strip(), messages[1:]
        out += ["<|start_header_id|>user<|end_header_id|>\n\n",
                "Given the following functions, please respond with a JSON for a function "
                "call with its proper arguments that best answers the given prompt.\n\n",
                'Respond in the format {"name": function name, "parameters": dictionary of '
                "argument name and its value}.Do not use variables.\n\n"]
        out += [tojson(tool, indent=4) + "\n\n" for tool in tools]
        out.append(first + "<|eot_id|>")
    for message in messages:
        role = message["role"]
        if "tool_calls" in message:
            if len(message["tool_calls"]) != 1:
                raise TemplateError("the llama3.1 template takes one tool call a message "
                                    "(the server refuses more)")
            call = message["tool_calls"][0]["function"]
            out.append('<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "'
                       f'{call["name"]}", "parameters": {tojson(call["arguments"])}}}'
                       "<|eot_id|>")
        elif role in ("tool", "ipython"):
            content = message["content"]
            written = (tojson(content) if isinstance(content, str | list | dict)
                       else str(content))
            out.append(f"<|start_header_id|>ipython<|end_header_id|>\n\n{written}<|eot_id|>")
        else:
            out.append(f"<|start_header_id|>{role}<|end_header_id|>\n\n"
                       f"{message['content'].strip()}<|eot_id|>")
    out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


_QWEN_TOOLS = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user "
               "query.\n\nYou are provided with function signatures within <tools></tools> "
               "XML tags:\n<tools>")
_QWEN_CALLS = ("\n</tools>\n\nFor each function call, return a json object with function name "
               "and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
               '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
               "<|im_end|>\n")


def _qwen(messages: Conversation, tools: Tools) -> str:
    out = []
    system = (messages[0]["content"] if messages and messages[0]["role"] == "system"
              else QWEN_SYSTEM)
    if tools:
        out += ["<|im_start|>system\n", system, _QWEN_TOOLS]
        out += ["\n" + tojson(tool) for tool in tools]
        out.append(_QWEN_CALLS)
    else:
        out.append(f"<|im_start|>system\n{system}<|im_end|>\n")
    last = len(messages) - 1
    for i, message in enumerate(messages):
        role = message["role"]
        if (role == "user" or (role == "system" and i > 0)
                or (role == "assistant" and not message.get("tool_calls"))):
            out.append(f"<|im_start|>{role}\n{message['content']}<|im_end|>\n")
        elif role == "assistant":
            out.append("<|im_start|>assistant")
            if message["content"]:
                out.append("\n" + message["content"])
            out += [_tool_call(call) for call in message["tool_calls"]]
            out.append("<|im_end|>\n")
        elif role == "tool":
            if i == 0 or messages[i - 1]["role"] != "tool":
                out.append("<|im_start|>user")
            out.append(f"\n<tool_response>\n{message['content']}\n</tool_response>")
            if i == last or messages[i + 1]["role"] != "tool":
                out.append("<|im_end|>\n")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def _tool_call(call: dict[str, Any]) -> str:
    """A tool call as Qwen 2.5 and Hermes write it in an assistant turn."""
    function = call["function"]
    return ('\n<tool_call>\n{"name": "' + function["name"] + '", "arguments": '
            + tojson(function["arguments"]) + "}\n</tool_call>")


def _chatml(messages: Conversation) -> str:
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    return "".join(out) + "<|im_start|>assistant\n"


_HERMES_HEAD = (
    "<|im_start|>system\nYou are a function calling AI model. You are provided with function "
    "signatures within <tools></tools> XML tags. You may call one or more functions to assist "
    "with the user query. Don't make assumptions about what values to plug into functions. "
    "Here are the available tools: <tools> ")
_HERMES_TAIL = (
    ' </tools>Use the following pydantic model json schema for each tool call you will make: '
    '{"properties": {"name": {"title": "Name", "type": "string"}, "arguments": {"title": '
    '"Arguments", "type": "object"}}, "required": ["name", "arguments"], "title": '
    '"FunctionCall", "type": "object"}}\nFor each function call return a json object with '
    "function name and arguments within <tool_call></tool_call> XML tags as follows:\n"
    '<tool_call>\n{"name": <function-name>, "arguments": <args-dict>}\n</tool_call><|im_end|>\n')
_PY_TYPES = {"string": "str", "number": "float", "integer": "int", "boolean": "bool"}


class _Undefined:
    """What a template reads where there is nothing (an empty iterable)."""

    def __iter__(self) -> Any:
        return iter(())


_UNDEFINED = _Undefined()


def _get(value: Any, key: str) -> Any:
    return value[key] if isinstance(value, Mapping) and key in value else _UNDEFINED


def _py_type(spec: Any, depth: int = 0) -> str:
    """Hermes' ``json_to_python_type`` macro, quirks included: an array is
    ``list[Union[]]``, a type it does not know but can iterate (a string such as
    ``"null"``, a list of such) recurses until the template fails."""
    if depth > 50:
        raise TemplateError("the chatml (Hermes) template cannot write a parameter's type "
                            "(it recurses without end; the server refuses the request)")
    kind = _get(spec, "type")
    try:
        if kind in _PY_TYPES:
            return _PY_TYPES[kind]
    except TypeError:  # an unhashable type: not one of the names
        pass
    if kind == "array":
        return "list[Union[]]"
    if kind == "object":
        extra = _get(spec, "additionalProperties")
        return "dict" if extra is _UNDEFINED else f"dict[str, {_py_type(extra, depth + 1)}]"
    if isinstance(kind, str | list | tuple | dict | _Undefined):
        return "Union[" + ",".join(_py_type({"type": t}, depth + 1) for t in kind) + "]"
    return "Any"


def _soft_str(value: Any) -> str:
    return "" if value is _UNDEFINED else value if isinstance(value, str) else str(value)


def _hermes(messages: Conversation, tools: list[dict[str, Any]]) -> str:
    out = [_HERMES_HEAD]
    for k, tool in enumerate(tools):
        function = tool.get("function", tool)
        name = function["name"]
        description = function.get("description")
        if not isinstance(description, str):
            raise TemplateError("the chatml (Hermes) template cannot write a tool with no "
                                "description (the server refuses the request)")
        properties = _get(function.get("parameters"), "properties")
        if not isinstance(properties, Mapping | _Undefined):
            raise TemplateError("the chatml (Hermes) template cannot read a tool's "
                                "parameters' properties that are not an object (the server "
                                "refuses the request)")
        pairs = list(properties.items()) if isinstance(properties, Mapping) else []
        out.append('{"type": "function", "function": {"name": "' + name + '", "description": "'
                   + name + "(" + ", ".join(f"{p}: {_py_type(f)}" for p, f in pairs) + ")")
        out.append(" - " + description + "\n\n")
        if pairs:
            out.append("    Args:\n")
        out += ["        " + p + "(" + _py_type(f) + "): "
                + _soft_str(_get(f, "description")).strip() for p, f in pairs]
        out.append('", "parameters": '
                   + ("{}" if not pairs else tojson(function.get("parameters"))) + "}")
        if k < len(tools) - 1:
            out.append("\n")
    out.append(_HERMES_TAIL)
    last = len(messages) - 1
    for i, message in enumerate(messages):
        role = message["role"]
        if role in ("user", "system") or (role == "assistant" and "tool_calls" not in message):
            out.append(f"<|im_start|>{role}\n{message['content']}<|im_end|>\n")
        elif role == "assistant":
            out.append("<|im_start|>assistant")
            out += [_tool_call(call) for call in message["tool_calls"]]
            out.append("<|im_end|>\n")
        elif role == "tool":
            if i > 0 and messages[i - 1]["role"] != "tool":
                out.append("<|im_start|>tool\n")
            out.append(f"<tool_response>\n{message['content']}\n</tool_response>"
                       + ("\n" if i < last else ""))
            if i == last or messages[i + 1]["role"] != "tool":
                out.append("<|im_end|>")
    out.append("<|im_start|>assistant\n")
    return "".join(out)


def without_developer(messages: Conversation) -> Conversation:
    """``developer`` messages as vLLM hands them to a template that does not know the
    role: system messages, all of them merged into one at the start."""
    if not any(m["role"] == "developer" for m in messages):
        return messages
    messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    systems = [i for i, m in enumerate(messages) if m["role"] == "system"]
    if systems == [0]:
        return messages
    merged = "\n\n".join(text for m in messages if m["role"] == "system"
                          if (text := text_of(m["content"])))
    return [{"role": "system", "content": merged},
            *(m for m in messages if m["role"] != "system")]


# ---------------------------------------------------------------- a tokenizer's own template


def hf_template(spec: str | None) -> Any:
    """The ``transformers`` tokenizer of ``spec`` (a folder, or ``hf:OWNER/NAME`` in the
    local cache) whose chat template ``--chat-template hf`` renders."""
    if spec is None or not (os.path.isdir(spec) or spec.startswith("hf:")):
        raise OptionNeededError("--chat-template hf needs a Hugging Face tokenizer (a folder "
                                "or hf:OWNER/NAME) with a chat template")
    try:
        import jinja2  # noqa: F401  (transformers renders chat templates with it)
        from transformers import AutoTokenizer
    except ImportError:
        raise CheckError("--chat-template hf needs transformers and jinja2: pip install "
                         "transformers jinja2") from None
    name = spec[3:] if spec.startswith("hf:") else spec
    try:
        tok = AutoTokenizer.from_pretrained(name, local_files_only=True)
    except Exception as exc:
        raise CheckError(f"{spec}: cannot load it with transformers ({type(exc).__name__})"
                         ) from None
    if not getattr(tok, "chat_template", None):
        raise CheckError(f"{spec}: the tokenizer has no chat template; choose a built-in "
                         f"one with --chat-template ({', '.join(TEMPLATES[1:-1])})")
    return tok


def loops_over_content(template: str) -> bool:
    """Whether a chat template loops over a message's ``content`` (``{% for part in
    message['content'] %}``), which makes vLLM hand it a content as a list of parts
    (its "openai" content format) instead of one text."""
    from jinja2 import nodes
    from transformers.utils.chat_template_utils import _compile_jinja_template

    try:  # (transformers' own environment: it knows the tags chat templates use)
        tree = _compile_jinja_template(template).environment.parse(template)
    except Exception:  # a template vLLM cannot parse either: it takes the string format
        return False

    def is_content(node: Any) -> bool:
        while isinstance(node, nodes.Filter | nodes.Test) and node.node is not None:
            node = node.node
        return (isinstance(node, nodes.Getattr) and node.attr == "content"
                or isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const)
                and node.arg.value == "content")

    return any(is_content(loop.iter) for loop in tree.find_all(nodes.For))


def render_hf(tok: Any, messages: Conversation, tools: Tools) -> str:
    """The text ``tok``'s own chat template makes, called as vLLM calls it."""
    try:
        return str(tok.apply_chat_template(messages, tools=tools, tokenize=False,
                                           add_generation_prompt=True))
    except Exception as exc:  # the template raised: the server answers with an error
        raise TemplateError(f"the tokenizer's chat template refuses the request "
                            f"({type(exc).__name__}: {exc}; the server refuses it)") from None


# ---------------------------------------------------------------- rendering and tokenizing


class Renderer:
    """A chat template (a built-in one, or ``hf``: the tokenizer folder's own) with the
    tokenizer the server tokenizes its text with."""

    def __init__(self, template: str, tokenizer: Any, tokenizer_spec: str | None = None):
        if template not in TEMPLATES or template == "none":
            raise CheckError(f"unknown chat template {template!r}; choose from "
                             f"{', '.join(TEMPLATES[1:])}")
        self.template = template
        self.tokenizer = tokenizer
        self.hf = hf_template(tokenizer_spec) if template == "hf" else None
        text = str(self.hf.chat_template) if self.hf is not None else ""
        self.knows_developer = '"developer"' in text or "'developer'" in text
        #: The template loops over a message's content: vLLM gives it text parts.
        self.parts = bool(text) and loops_over_content(text)

    def conversation(self, messages: Iterable[Message]) -> Conversation:
        """``messages`` as this template is given them (see :func:`conversation`)."""
        return conversation(messages, parts=self.parts)

    def content(self, text: str) -> Any:
        """A message content of ``text`` as this template is given it."""
        return [{"type": "text", "text": text}] if self.parts else text

    def text(self, messages: Conversation, tools: Tools) -> str:
        """The prompt text of a request (raises :class:`TemplateError` where the template
        refuses it)."""
        if not self.knows_developer:
            messages = without_developer(messages)
        if self.hf is not None:
            return render_hf(self.hf, messages, tools)
        return render(messages, tools, self.template)

    def encode(self, texts: list[str]) -> list[list[int]]:
        """The tokens of prompt texts, as the server tokenizes a rendered prompt."""
        if self.hf is not None:
            encode = self.hf.encode
            return [list(encode(text, add_special_tokens=False)) for text in texts]
        return self.tokenizer.encode_batch(texts)

    def tokens_before(self, messages: Conversation, tools: Tools, marker: str) -> int | None:
        """How many tokens of a request's prompt come before the first ``marker`` in its
        text (``None``: the text has no ``marker``)."""
        text = self.text(messages, tools)
        at = text.find(marker)
        if at < 0:
            return None
        head = text[:at]
        if self.hf is not None:
            return len(self.hf.encode(head, add_special_tokens=False))
        return len(self.tokenizer.encode(head))

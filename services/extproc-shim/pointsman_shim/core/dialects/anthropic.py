"""The Anthropic Messages API: ``POST /v1/messages`` and ``POST /v1/messages/count_tokens``.

Both dialects check the body as Anthropic documents it (every problem a 400 in Anthropic's error
format, with its own ``reason``), normalise it for the classifier and the picker, and send it on
either as it is, to a pool whose engine serves the Messages API (``native``: vLLM does), or
translated to chat completions (``chat``, the default, since not every engine has it; a token
count is answered by the engine's chat completions). :mod:`.anthropic_answer` translates the
answers back.

What the translation to chat completions does (the same mapping vLLM's own Messages endpoint
makes, so a native and a translated pool answer alike):

* ``system`` becomes the first, system, message; text blocks become text (a lone text block a
  plain string), images ``image_url`` parts (a base64 source a data URL);
* an assistant's ``tool_use`` blocks become its ``tool_calls`` (``input`` as JSON arguments); a
  user's ``tool_result`` blocks become ``tool`` messages before the rest of that turn;
  ``thinking`` and ``redacted_thinking`` blocks of earlier turns are dropped (engines re-think);
* ``tools`` become function tools (``input_schema`` as ``parameters``), ``tool_choice`` ``auto``,
  ``any``, ``tool`` and ``none`` become ``auto``, ``required``, a named function and ``none``,
  ``disable_parallel_tool_use`` becomes ``parallel_tool_calls: false``; Anthropic's server tools
  (web search, code execution, ...) have no chat equivalent: 400 for a translated pool;
* ``max_tokens``, ``temperature``, ``top_p``, ``top_k`` pass; ``stop_sequences`` becomes
  ``stop``; a stream asks for ``stream_options.include_usage`` (the usage of the last event);
* ``thinking`` becomes the chat template switches of the reasoning families that have one
  (``chat_template_kwargs``: ``enable_thinking`` for Qwen3, ``thinking`` for DeepSeek).

The classifier's reasoning switch maps to ``thinking`` for a native pool (``enabled`` with half of
``max_tokens`` as budget, at least Anthropic's minimum of 1024 and less than ``max_tokens``, or
``disabled``); its ``body_set`` (the model family's own switch) applies to the body either way.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from pointsman.v1.classify import CachedAnswer
from pointsman_shim.core.dialects import anthropic_answer, openai, openai_chat
from pointsman_shim.core.dialects.base import (
    BodyChanges,
    ChatTurn,
    LLMRequest,
    Rendered,
    Translating,
    Upstream,
    UpstreamAnswer,
)
from pointsman_shim.core.dialects.sse import event
from pointsman_shim.core.errors import RequestError, invalid

_encoder = msgspec.json.Encoder()

#: The smallest thinking budget Anthropic accepts.
MIN_THINKING_BUDGET = 1024
_BLOCKS = frozenset({"text", "image", "tool_use", "tool_result", "thinking", "redacted_thinking"})
_TOOL_CHOICES = frozenset({"auto", "any", "tool", "none"})


class _Anthropic:
    """What both Messages dialects share: checks, errors, the chat translation of a body."""

    name: str
    paths: tuple[str, ...]
    api: str = "messages"
    reformats_errors: bool = True
    #: ``max_tokens`` is required (a generation), not for a token count.
    _needs_max_tokens: bool = True

    def error_body(
        self, message: str, *, type: str, code: str, param: str | None = None, status: int = 400
    ) -> bytes:
        return anthropic_answer.error_body(message, status)

    def response_translator(
        self, request: LLMRequest, answer: UpstreamAnswer
    ) -> Translating | None:
        """Errors always speak Anthropic; a translated success is translated back."""
        if answer.status >= 400:
            return anthropic_answer.ErrorTranslator(answer.status)
        if not answer.translated:
            return None
        return self._translator(request, sse=answer.sse, nonce=answer.nonce)

    def _translator(self, request: LLMRequest, *, sse: bool, nonce: str) -> Translating:
        raise NotImplementedError

    def parse(self, raw: bytes, *, max_bytes: int) -> LLMRequest:
        request = openai.decode(self.name, raw, max_bytes=max_bytes)
        body = request.body
        if self._needs_max_tokens or body.get("max_tokens") is not None:
            _max_tokens(body.get("max_tokens"))
        request.turns = _system_turns(body.get("system")) + _message_turns(body.get("messages"))
        tools = _tools(body.get("tools"))
        _tool_choice(body.get("tool_choice"), tools)
        _thinking(body.get("thinking"), body.get("max_tokens"))
        stops = body.get("stop_sequences")
        if stops is not None and not (
            isinstance(stops, list) and all(isinstance(s, str) for s in stops)
        ):
            raise invalid("'stop_sequences' must be an array of strings", "stop_sequences")
        params: dict[str, Any] = {
            k: request.params[k] for k in ("temperature", "top_p", "stream") if k in body
        }
        for key in ("max_tokens", "tools", "tool_choice", "top_k", "thinking"):
            if key in body:
                params[key] = body[key]
        if stops:
            params["stop"] = stops
        request.params = params
        return request

    def _chat_body(self, request: LLMRequest, changes: BodyChanges) -> dict[str, Any]:
        """The request as chat completions, with the decision applied (model, system prompt,
        ``body_set`` last so that the classifier's switch wins over the client's own)."""
        body = request.body
        tools = body.get("tools") or ()
        chat = openai_chat.translated(chat_messages(body), [_chat_tool(t) for t in tools], changes)
        choice = body.get("tool_choice")
        if isinstance(choice, dict):
            kind = choice.get("type")
            chat["tool_choice"] = (
                {"type": "function", "function": {"name": choice.get("name")}}
                if kind == "tool"
                else {"auto": "auto", "any": "required", "none": "none"}[str(kind)]
            )
            if choice.get("disable_parallel_tool_use") is True:
                chat["parallel_tool_calls"] = False
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") in ("enabled", "disabled"):
            on = thinking["type"] == "enabled"
            chat["chat_template_kwargs"] = {"enable_thinking": on, "thinking": on}
        if changes.body_set:
            openai.deep_merge(chat, changes.body_set)
        return chat


class AnthropicMessages(_Anthropic):
    name: str = "anthropic-messages"
    paths: tuple[str, ...] = ("/v1/messages",)
    generates: bool = True

    def rewrite(self, request: LLMRequest, changes: BodyChanges) -> Upstream:
        if changes.upstream == "chat":
            chat = self._chat_body(request, changes)
            body = request.body
            for key in ("max_tokens", "temperature", "top_p", "top_k"):
                if key in body:
                    chat[key] = body[key]
            if body.get("stop_sequences"):
                chat["stop"] = body["stop_sequences"]
            if request.stream:
                chat["stream"] = True
                chat["stream_options"] = {"include_usage": True}
            return openai_chat.upstream(chat)
        native = openai.changed_body(request, changes)
        if changes.system_prompt is not None:
            native["system"] = _with_system_prompt(
                request.body.get("system"), changes.system_prompt, changes.system_prompt_mode
            )
        if changes.reasoning is not None:
            _set_thinking(native, changes.reasoning)
        return openai.upstream(request, native)

    def usage_reader(self, *, sse: bool) -> anthropic_answer.UsageReader:
        return anthropic_answer.UsageReader(sse=sse)

    def answer_reader(self, *, sse: bool) -> anthropic_answer.AnswerReader:
        return anthropic_answer.AnswerReader(sse=sse)

    def render_cached(
        self, request: LLMRequest, answer: CachedAnswer, *, model: str, nonce: str, created: int
    ) -> Rendered:
        """A cache hit as a message with one text block, or its event stream."""
        mid = f"msg_cache_{nonce}"
        stop = anthropic_answer.STOP_REASONS.get(answer.finish_reason or "stop", "end_turn")
        usage = {
            "input_tokens": answer.prompt_tokens or 0,
            "output_tokens": answer.completion_tokens or 0,
        }
        if not request.stream:
            message = anthropic_answer.message(mid, model, [_text(answer.content)], stop, usage)
            return Rendered(_encoder.encode(message), "application/json")
        start = anthropic_answer.message(mid, model, [], None, {**usage, "output_tokens": 0})
        body = b"".join(
            [
                event("message_start", {"type": "message_start", "message": start}),
                event(
                    "content_block_start",
                    {"type": "content_block_start", "index": 0, "content_block": _text("")},
                ),
                event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "text_delta", "text": answer.content},
                    },
                ),
                event("content_block_stop", {"type": "content_block_stop", "index": 0}),
                event(
                    "message_delta",
                    {
                        "type": "message_delta",
                        "delta": {"stop_reason": stop, "stop_sequence": None},
                        "usage": usage,
                    },
                ),
                event("message_stop", {"type": "message_stop"}),
            ]
        )
        return Rendered(body, "text/event-stream")

    def _translator(self, request: LLMRequest, *, sse: bool, nonce: str) -> Translating:
        stops = request.body.get("stop_sequences") or []
        if sse:
            return anthropic_answer.StreamTranslator(f"msg_{nonce}", request.model, stops)
        return anthropic_answer.JsonTranslator(f"msg_{nonce}", request.model, stops)


class AnthropicCountTokens(_Anthropic):
    """``POST /v1/messages/count_tokens``: no answer is asked for, so no classifier and no cache.

    A translated pool's engine counts the same chat messages by answering them with one token:
    its ``usage.prompt_tokens`` is the count (the chat template and the generation prompt
    included, as Anthropic's and vLLM's own counts are). Chat completions is the one API every
    such engine serves and every gateway route carries (``/tokenize`` is vLLM's, and private
    behind Pointsman's gateway); the one token costs a decode step, and the prompt's prefill is
    then in the engine's prefix cache for the request the count was for.
    """

    name: str = "anthropic-count-tokens"
    paths: tuple[str, ...] = ("/v1/messages/count_tokens",)
    generates: bool = False
    _needs_max_tokens = False

    def rewrite(self, request: LLMRequest, changes: BodyChanges) -> Upstream:
        if changes.upstream == "chat":
            chat = self._chat_body(request, changes)
            chat.pop("tool_choice", None)  # a forced call would change nothing counted
            chat.pop("parallel_tool_calls", None)
            chat["max_tokens"] = 1
            return openai_chat.upstream(chat)
        return openai.upstream(request, openai.changed_body(request, changes))

    def usage_reader(self, *, sse: bool) -> anthropic_answer.NoUsage:
        return anthropic_answer.NoUsage()

    def answer_reader(self, *, sse: bool) -> anthropic_answer.NoAnswer:
        return anthropic_answer.NoAnswer()

    def render_cached(
        self, request: LLMRequest, answer: CachedAnswer, *, model: str, nonce: str, created: int
    ) -> Rendered:
        body = {"input_tokens": answer.prompt_tokens or 0}
        return Rendered(_encoder.encode(body), "application/json")

    def _translator(self, request: LLMRequest, *, sse: bool, nonce: str) -> Translating:
        return anthropic_answer.CountTranslator()


MESSAGES = AnthropicMessages()
COUNT_TOKENS = AnthropicCountTokens()


# -- checks ------------------------------------------------------------------------------------


def _max_tokens(value: Any) -> None:
    if value is None:
        raise invalid("'max_tokens' is required", "max_tokens", "missing_max_tokens")
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise invalid("'max_tokens' must be an integer of at least 1", "max_tokens")


def _system_turns(system: Any) -> list[ChatTurn]:
    if system is None:
        return []
    text = blocks_text(system, only_text=True)
    if text is None:
        raise invalid("'system' must be a string or an array of text blocks", "system")
    return [ChatTurn("system", text)] if text else []


def blocks_text(content: Any, *, only_text: bool) -> str | None:
    """The text of a string or an array of content blocks (the text blocks' joined by newlines);
    ``None``: malformed. ``only_text``: a block of another type makes it malformed (``system``);
    otherwise such blocks are skipped (a ``tool_result``'s images)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return None
    parts = []
    for block in content:
        if not isinstance(block, dict) or not isinstance(block.get("type"), str):
            return None
        if block["type"] != "text":
            if only_text:
                return None
            continue
        text = block.get("text")
        if not isinstance(text, str):
            return None
        parts.append(text)
    return "\n".join(parts)


def _message_turns(messages: Any) -> list[ChatTurn]:
    if messages is None:
        raise invalid("'messages' is required", "messages", "missing_messages")
    if not isinstance(messages, list):
        raise invalid(f"'messages' must be an array, not {openai.json_type(messages)}", "messages")
    if not messages:
        raise invalid("'messages' must not be empty", "messages", "empty_messages")
    turns = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise invalid(f"'messages[{i}]' must be an object", "messages")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise invalid(f"'messages[{i}].role' must be 'user' or 'assistant'", "messages")
        content = message.get("content")
        if isinstance(content, str):
            turns.append(ChatTurn(role, content))
            continue
        if not isinstance(content, list):
            raise invalid(
                f"'messages[{i}].content' must be a string or an array of content blocks",
                "messages",
            )
        turns.append(ChatTurn(role, "\n".join(_blocks(content, role, i))))
    return turns


def _bad_block(i: int, j: int, problem: str) -> RequestError:
    return RequestError(
        400,
        f"'messages[{i}].content[{j}]' {problem}",
        reason="invalid_content_block",
        param="messages",
    )


def _blocks(content: list[Any], role: str, i: int) -> list[str]:
    """Check a message's content blocks; the texts a classifier may read (text, tool results)."""
    texts = []
    for j, block in enumerate(content):
        if not isinstance(block, dict):
            raise _bad_block(i, j, "must be an object")
        kind = block.get("type")
        if kind not in _BLOCKS:
            raise _bad_block(
                i, j, f"has an unsupported type {kind!r}; supported: {', '.join(sorted(_BLOCKS))}"
            )
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise _bad_block(i, j, "(text) needs a string 'text'")
            texts.append(block["text"])
        elif kind == "image":
            source = block.get("source")
            if not isinstance(source, dict) or source.get("type") not in ("base64", "url"):
                raise _bad_block(i, j, "(image) needs a 'source' of type base64 or url")
        elif kind == "tool_use":
            if role != "assistant":
                raise _bad_block(i, j, "(tool_use) may only appear in an assistant message")
            if not isinstance(block.get("id"), str) or not isinstance(block.get("name"), str):
                raise _bad_block(i, j, "(tool_use) needs a string 'id' and 'name'")
            if not isinstance(block.get("input"), dict):
                raise _bad_block(i, j, "(tool_use) needs an object 'input'")
        elif kind == "tool_result":
            if role != "user":
                raise _bad_block(i, j, "(tool_result) may only appear in a user message")
            if not isinstance(block.get("tool_use_id"), str):
                raise _bad_block(i, j, "(tool_result) needs a string 'tool_use_id'")
            text = blocks_text(block.get("content"), only_text=False)
            if text is None:
                raise _bad_block(i, j, "(tool_result) 'content' must be a string or blocks")
            texts.append(text)
        elif kind == "thinking" and not isinstance(block.get("thinking"), str):
            raise _bad_block(i, j, "(thinking) needs a string 'thinking'")
    return texts


def _tools(tools: Any) -> list[dict[str, Any]]:
    if tools is None:
        return []
    if not isinstance(tools, list):
        raise invalid("'tools' must be an array", "tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("name"), str):
            raise invalid(f"'tools[{i}]' needs a string 'name'", "tools")
        if tool.get("type") in (None, "custom") and not isinstance(tool.get("input_schema"), dict):
            raise invalid(f"'tools[{i}].input_schema' must be an object", "tools")
    return tools


def _tool_choice(choice: Any, tools: list[dict[str, Any]]) -> None:
    if choice is None:
        return
    if not isinstance(choice, dict) or choice.get("type") not in _TOOL_CHOICES:
        raise invalid(
            "'tool_choice' must be an object with 'type' auto, any, tool or none", "tool_choice"
        )
    if choice["type"] == "tool":
        name = choice.get("name")
        if not isinstance(name, str) or name not in {t.get("name") for t in tools}:
            raise invalid("'tool_choice.name' must name one of 'tools'", "tool_choice")


def _thinking(thinking: Any, max_tokens: Any) -> None:
    if thinking is None:
        return
    kind = thinking.get("type") if isinstance(thinking, dict) else None
    if kind not in ("enabled", "disabled", "adaptive"):
        raise invalid("'thinking.type' must be enabled, disabled or adaptive", "thinking")
    if kind != "enabled":
        return
    budget = thinking.get("budget_tokens")
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < MIN_THINKING_BUDGET:
        raise invalid(
            f"'thinking.budget_tokens' must be an integer of at least {MIN_THINKING_BUDGET}",
            "thinking",
        )
    if isinstance(max_tokens, int) and budget >= max_tokens:
        raise invalid("'thinking.budget_tokens' must be less than 'max_tokens'", "thinking")


# -- translation to chat completions ----------------------------------------------------------


def chat_messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    """A checked Messages body's system prompt and messages as chat completions messages."""
    out: list[dict[str, Any]] = []
    system = blocks_text(body.get("system"), only_text=True)
    if system:
        out.append({"role": "system", "content": system})
    for message in body["messages"]:
        role, content = message["role"], message["content"]
        if isinstance(content, str):
            out.append({"role": role, "content": content})
            continue
        parts: list[dict[str, Any]] = []
        calls: list[dict[str, Any]] = []
        for block in content:
            kind = block["type"]
            if kind == "text":
                parts.append({"type": "text", "text": block["text"]})
            elif kind == "image":
                parts.append({"type": "image_url", "image_url": {"url": _image_url(block)}})
            elif kind == "tool_use":
                calls.append(
                    {
                        "id": block["id"],
                        "type": "function",
                        "function": {
                            "name": block["name"],
                            "arguments": _encoder.encode(block["input"]).decode(),
                        },
                    }
                )
            elif kind == "tool_result":
                out.append(
                    {
                        "role": "tool",
                        "tool_call_id": block["tool_use_id"],
                        "content": blocks_text(block.get("content"), only_text=False) or "",
                    }
                )
        chat: dict[str, Any] = {"role": role}
        if parts:
            only_text = len(parts) == 1 and parts[0]["type"] == "text"
            chat["content"] = parts[0]["text"] if only_text else parts
        if calls:
            chat["tool_calls"] = calls
        if parts or calls:
            out.append(chat)
    return out


def _image_url(block: dict[str, Any]) -> str:
    source = block["source"]
    if source.get("type") == "url":
        return str(source.get("url", ""))
    return f"data:{source.get('media_type', 'image/png')};base64,{source.get('data', '')}"


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") not in (None, "custom"):
        raise RequestError(
            400,
            f"tool '{tool.get('name')}' is an Anthropic server tool ({tool.get('type')}), which "
            "the model's engine does not run",
            reason="unsupported_tool",
            param="tools",
        )
    function: dict[str, Any] = {"name": tool["name"], "parameters": tool["input_schema"]}
    if isinstance(tool.get("description"), str):
        function["description"] = tool["description"]
    return {"type": "function", "function": function}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _with_system_prompt(system: Any, prompt: str, mode: str) -> Any:
    """Anthropic's ``system`` with ours after the client's (``insert``) or instead (``replace``)."""
    if mode == "replace" or not system:
        return prompt
    if isinstance(system, str):
        return [_text(system), _text(prompt)]
    return [*copy.deepcopy(system), _text(prompt)]


def _set_thinking(body: dict[str, Any], on: bool) -> None:
    if not on:
        body["thinking"] = {"type": "disabled"}
        return
    current = body.get("thinking")
    if isinstance(current, dict) and current.get("type") in ("enabled", "adaptive"):
        return  # the client's own budget stands
    max_tokens = body.get("max_tokens")
    budget = max(MIN_THINKING_BUDGET, max_tokens // 2) if isinstance(max_tokens, int) else 0
    if isinstance(max_tokens, int) and budget < max_tokens:
        body["thinking"] = {"type": "enabled", "budget_tokens": budget}

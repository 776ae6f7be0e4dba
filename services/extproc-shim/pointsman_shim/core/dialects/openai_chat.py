"""OpenAI chat completions (``POST /v1/chat/completions``): a conversation of ``messages``."""

from __future__ import annotations

from typing import Any

import msgspec

from pointsman_shim.core.dialects import openai
from pointsman_shim.core.dialects.base import BodyChanges, ChatTurn, LLMRequest, Upstream
from pointsman_shim.core.errors import RequestError

_encoder = msgspec.json.Encoder()


class OpenAIChat(openai.OpenAIDialect):
    name: str = "openai-chat"
    paths: tuple[str, ...] = ("/v1/chat/completions",)
    chat: bool = True

    def parse(self, raw: bytes, *, max_bytes: int) -> LLMRequest:
        request = openai.decode(self.name, raw, max_bytes=max_bytes)
        request.turns = _turns(request.body.get("messages"))
        return request

    def rewrite(self, request: LLMRequest, changes: BodyChanges) -> Upstream:
        """``insert`` puts the system prompt before the client's messages (after any system
        messages the client sent, so the client's own instructions keep the last word);
        ``replace`` drops the client's system messages for ours."""
        body = openai.changed_body(request, changes)
        if changes.system_prompt is not None:
            body["messages"] = with_system_prompt(
                list(body.get("messages") or []), changes.system_prompt, changes.system_prompt_mode
            )
        return openai.upstream(request, body)


DIALECT = OpenAIChat()


def translated(
    messages: list[dict[str, Any]], tools: list[dict[str, Any]], changes: BodyChanges
) -> dict[str, Any]:
    """The start of a chat completions body translated from another API (Messages, Responses),
    with the decision applied: its model, its system prompt (:func:`with_system_prompt`), and
    the tools, already in chat form, when there are any."""
    if changes.system_prompt is not None:
        messages = with_system_prompt(messages, changes.system_prompt, changes.system_prompt_mode)
    chat: dict[str, Any] = {"model": changes.model, "messages": messages}
    if tools:
        chat["tools"] = tools
    return chat


def upstream(chat: dict[str, Any]) -> Upstream:
    """A body translated to chat completions (:func:`translated`), for the engine's chat
    completions path; the answer comes back in this dialect's format."""
    return Upstream(_encoder.encode(chat), path=OpenAIChat.paths[0], speaks=OpenAIChat.name)


def with_system_prompt(
    messages: list[dict[str, Any]], prompt: str, mode: str
) -> list[dict[str, Any]]:
    """Chat messages with a system prompt inserted after the client's system messages
    (``insert``) or in place of them (``replace``); the list given is not changed."""
    system = {"role": "system", "content": prompt}
    if mode == "replace":
        return [system, *(m for m in messages if m.get("role") != "system")]
    first_other = next(
        (i for i, m in enumerate(messages) if m.get("role") != "system"), len(messages)
    )
    return [*messages[:first_other], system, *messages[first_other:]]


def _turns(messages: Any) -> list[ChatTurn]:
    if messages is None:
        raise _invalid("'messages' is required", "missing_messages")
    if not isinstance(messages, list):
        raise _invalid(f"'messages' must be an array, not {openai.json_type(messages)}")
    if not messages:
        raise _invalid("'messages' must not be empty", "empty_messages")
    turns = []
    for i, message in enumerate(messages):
        role = _string_of(message, "role", "'messages[{i}]'", "'messages[{i}].role'", i)
        _check_content(i, role, message)
        turns.append(ChatTurn(role, content_text(message.get("content"))))
    return turns


#: Roles whose message may leave out ``content`` (an assistant turn that only calls tools).
_CONTENT_OPTIONAL = frozenset({"assistant"})


def _check_content(i: int, role: str, message: dict[str, Any]) -> None:
    """``content`` as OpenAI's API takes it: a string, or an array of typed parts where a
    ``text`` part has a string ``text``; missing or null only in an assistant message."""
    content = message.get("content")
    where = f"'messages[{i}].content'"
    if content is None:
        if role not in _CONTENT_OPTIONAL:
            raise _invalid(f"{where} is required for a message of role '{role}'")
        return
    if isinstance(content, str):
        return
    if not isinstance(content, list):
        raise _invalid(f"{where} must be a string or an array, not {openai.json_type(content)}")
    for j, part in enumerate(content):
        kind = _string_of(part, "type", where + "[{i}]", where + "[{i}].type", j)
        if kind == "text" and not isinstance(part.get("text"), str):
            raise _invalid(f"{where}[{j}].text must be a string")


def _string_of(item: Any, key: str, where: str, field: str, i: int) -> str:
    """``item[key]``, checked: ``item`` must be an object and the value a string. ``where`` and
    ``field`` name them in the error, with ``{i}`` for the item's index (formatted only then)."""
    if not isinstance(item, dict):
        raise _invalid(where.format(i=i) + " must be an object")
    value = item.get(key)
    if not isinstance(value, str):
        raise _invalid(field.format(i=i) + " must be a string")
    return value


def _invalid(message: str, reason: str = "invalid_messages") -> RequestError:
    return RequestError(400, message, reason=reason, param="messages")


def content_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a multi-part array."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text":
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
        return "\n".join(parts)
    return ""

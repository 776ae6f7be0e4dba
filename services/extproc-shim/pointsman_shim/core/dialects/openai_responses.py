"""The OpenAI Responses API (``POST /v1/responses``): the request side.

The shim checks the body (every problem a 400 in OpenAI's error format, with its own
``reason``), normalises it for the classifier and the picker, and sends the engine a *stateless*
request: Pointsman keeps the Responses API's state itself (``pointsman_shim.state``), so a turn
that continues an earlier one (``previous_response_id``) reaches the engine with the whole
conversation in ``input`` (:func:`resume`) and ``store: false``. That makes any replica of any
engine able to answer it, with vLLM's store off (its default) or on.

A pool serves the API ``native`` (vLLM does: the body passes on, made stateless) or ``chat``
(translated to chat completions, and the answer back by :mod:`.responses_answer`):

* ``instructions`` become the first, system, message; input messages keep their role
  (``developer`` becomes ``system``) and their text (``input_text``, ``output_text``,
  ``refusal`` parts; ``input_image`` parts become ``image_url`` parts);
* a ``function_call`` item becomes a ``tool_calls`` entry of an assistant message (consecutive
  calls share one), a ``function_call_output`` a ``tool`` message; ``reasoning`` items of earlier
  turns are dropped;
* function ``tools`` become chat function tools, ``tool_choice`` ``{"type": "function", "name"}``
  a named function; built-in tools (web search, file search, ...) and input files have no chat
  equivalent: 400 for a translated pool;
* ``max_output_tokens`` becomes ``max_tokens``; ``temperature``, ``top_p``,
  ``parallel_tool_calls`` pass; ``text.format`` becomes ``response_format``;
  ``reasoning.effort`` becomes ``reasoning_effort``; a stream asks for the usage.
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec

from pointsman.v1.classify import CachedAnswer
from pointsman_shim.core.dialects import openai, openai_chat, responses_answer
from pointsman_shim.core.dialects.base import (
    BodyChanges,
    ChatTurn,
    LLMRequest,
    Rendered,
    Translating,
    Upstream,
    UpstreamAnswer,
)
from pointsman_shim.core.errors import RequestError, invalid

_encoder = msgspec.json.Encoder()

_ROLES = frozenset({"user", "assistant", "system", "developer"})
_TEXT_PARTS = frozenset({"input_text", "output_text", "text", "refusal"})
_PARTS = _TEXT_PARTS | {"input_image", "input_file", "input_audio"}
_ITEMS = frozenset({"message", "function_call", "function_call_output", "reasoning"})


class OpenAIResponses:
    name: str = "openai-responses"
    paths: tuple[str, ...] = ("/v1/responses",)
    api: str = "responses"
    reformats_errors: bool = False
    generates: bool = True

    def parse(self, raw: bytes, *, max_bytes: int) -> LLMRequest:
        request = openai.decode(self.name, raw, max_bytes=max_bytes)
        body = request.body
        if "input" not in body or body["input"] is None:
            raise invalid("'input' is required", "input", "missing_input")
        items = input_items(body["input"])
        instructions = body.get("instructions")
        if instructions is not None and not isinstance(instructions, str):
            raise invalid("'instructions' must be a string", "instructions")
        previous = body.get("previous_response_id")
        if previous is not None and (not isinstance(previous, str) or not previous):
            raise invalid("'previous_response_id' must be a string", "previous_response_id")
        store = body.get("store")
        if store is not None and not isinstance(store, bool):
            raise invalid("'store' must be a boolean", "store")
        if body.get("background") is True:
            raise RequestError(
                400,
                "background responses are not supported",
                reason="background_unsupported",
                param="background",
            )
        limit = body.get("max_output_tokens")
        if limit is not None and (
            not isinstance(limit, int) or isinstance(limit, bool) or limit < 1
        ):
            raise invalid(
                "'max_output_tokens' must be an integer of at least 1", "max_output_tokens"
            )
        _tools(body.get("tools"))
        request.turns = turns_of(instructions, items)
        request.previous_response_id = previous
        request.store = store is not False
        params: dict[str, Any] = {
            k: body[k] for k in ("temperature", "top_p", "tools", "tool_choice") if k in body
        }
        if limit is not None:
            params["max_tokens"] = limit
        for key in ("text", "reasoning"):
            if body.get(key) is not None:
                params[key] = body[key]
        if request.stream:
            params["stream"] = True
        request.params = params
        return request

    def rewrite(self, request: LLMRequest, changes: BodyChanges) -> Upstream:
        body = request.body
        items = input_items(body["input"])
        instructions = body.get("instructions")
        if changes.system_prompt is not None and changes.system_prompt_mode == "replace":
            instructions = None
            items = [i for i in items if not _is_system(i)]
        if changes.upstream == "chat":
            chat = _chat_body(body, instructions, items, changes, stream=request.stream)
            return openai_chat.upstream(chat)
        native = openai.changed_body(request, changes)
        if changes.system_prompt is not None:
            system = {"type": "message", "role": "system", "content": changes.system_prompt}
            first_other = next((n for n, i in enumerate(items) if not _is_system(i)), len(items))
            items = [*items[:first_other], system, *items[first_other:]]
            native["input"] = items
            if instructions is None:
                native.pop("instructions", None)
        effort = native.pop("reasoning_effort", None)
        if effort is not None:  # a family whose switch is the effort: the API's own field
            native["reasoning"] = {**(native.get("reasoning") or {}), "effort": effort}
        native["store"] = False
        native.pop("previous_response_id", None)
        return Upstream(_encoder.encode(native))

    def usage_reader(self, *, sse: bool) -> responses_answer.UsageReader:
        return responses_answer.UsageReader(sse=sse)

    def answer_reader(self, *, sse: bool) -> responses_answer.AnswerReader:
        return responses_answer.AnswerReader(sse=sse)

    def render_cached(
        self, request: LLMRequest, answer: CachedAnswer, *, model: str, nonce: str, created: int
    ) -> Rendered:
        return responses_answer.render_cached(
            request, answer, model=model, nonce=nonce, created=created
        )

    def error_body(
        self, message: str, *, type: str, code: str, param: str | None = None, status: int = 400
    ) -> bytes:
        return openai.error_body(message, type=type, code=code, param=param)

    def response_translator(
        self, request: LLMRequest, answer: UpstreamAnswer
    ) -> Translating | None:
        if answer.status >= 400 or not answer.translated:
            return None  # chat completions' errors are already in this API's format
        kind = responses_answer.StreamTranslator if answer.sse else responses_answer.JsonTranslator
        return kind(request, nonce=answer.nonce, created=answer.created)


DIALECT = OpenAIResponses()


def resume(request: LLMRequest, history: list[dict[str, Any]]) -> LLMRequest:
    """``request`` continuing a conversation: ``history`` (the earlier turns' input and output
    items, as the state keeps them) before its own input, so that the engine gets it all. The
    reference stays in :attr:`LLMRequest.previous_response_id`, for the answer to repeat it."""
    body = dict(request.body)
    items = input_items(body["input"])
    body["input"] = [*copy.deepcopy(history), *items]
    body.pop("previous_response_id", None)
    out = copy.copy(request)
    out.body = body
    out.turns = turns_of(body.get("instructions"), body["input"])
    return out


def conversation(request: LLMRequest) -> list[dict[str, Any]]:
    """The input items this turn's answer continues from (without ``instructions``, which a
    later turn does not inherit, as OpenAI documents): what the state keeps of the request."""
    return input_items(request.body["input"])


# -- checks ------------------------------------------------------------------------------------


def _bad_item(i: int, problem: str) -> RequestError:
    return RequestError(400, f"'input[{i}]' {problem}", reason="invalid_input_item", param="input")


def input_items(value: Any) -> list[dict[str, Any]]:
    """The ``input`` as a list of checked items (a string is one user message)."""
    if isinstance(value, str):
        return [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise invalid(
            f"'input' must be a string or an array, not {openai.json_type(value)}", "input"
        )
    if not value:
        raise invalid("'input' must not be empty", "input", "empty_input")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise _bad_item(i, "must be an object")
        kind = item.get("type", "message")
        if kind not in _ITEMS:
            raise _bad_item(
                i, f"has an unsupported type {kind!r}; supported: {', '.join(sorted(_ITEMS))}"
            )
        if kind == "message":
            if item.get("role") not in _ROLES:
                raise _bad_item(i, "(message) needs a role: user, assistant, system or developer")
            content = item.get("content")
            if not isinstance(content, str):
                if not isinstance(content, list):
                    raise _bad_item(i, "(message) content must be a string or an array of parts")
                for part in content:
                    if not isinstance(part, dict) or part.get("type") not in _PARTS:
                        raise _bad_item(i, "(message) has a content part of unsupported type")
                    if part["type"] in _TEXT_PARTS and not isinstance(
                        part.get("text", part.get("refusal")), str
                    ):
                        raise _bad_item(i, "(message) has a text part without text")
        elif kind == "function_call":
            if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
                raise _bad_item(i, "(function_call) needs string call_id, name and arguments")
        elif kind == "function_call_output" and (
            not isinstance(item.get("call_id"), str) or _output_text(item.get("output")) is None
        ):
            raise _bad_item(i, "(function_call_output) needs a string call_id and output")
    return value


def _tools(tools: Any) -> None:
    if tools is None:
        return
    if not isinstance(tools, list):
        raise invalid("'tools' must be an array", "tools")
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise invalid(f"'tools[{i}]' must be an object with a 'type'", "tools")
        if tool["type"] == "function" and not isinstance(tool.get("name"), str):
            raise invalid(f"'tools[{i}]' (function) needs a string 'name'", "tools")


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for part in content or []:
        if part.get("type") in _TEXT_PARTS:
            parts.append(part.get("text", part.get("refusal", "")))
    return "\n".join(parts)


def _output_text(output: Any) -> str | None:
    if isinstance(output, str):
        return output
    if isinstance(output, list):
        return _text_of(output)
    return None


def _is_system(item: dict[str, Any]) -> bool:
    return item.get("type", "message") == "message" and item.get("role") in ("system", "developer")


def turns_of(instructions: Any, items: list[dict[str, Any]]) -> list[ChatTurn]:
    """The conversation as the classifier reads it: text, tool outputs; no calls, no reasoning."""
    turns = (
        [ChatTurn("system", instructions)] if isinstance(instructions, str) and instructions else []
    )
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            turns.append(ChatTurn(role, _text_of(item.get("content"))))
        elif kind == "function_call_output":
            turns.append(ChatTurn("tool", _output_text(item.get("output")) or ""))
    return turns


# -- translation to chat completions ----------------------------------------------------------


def _chat_body(
    body: dict[str, Any],
    instructions: Any,
    items: list[dict[str, Any]],
    changes: BodyChanges,
    *,
    stream: bool,
) -> dict[str, Any]:
    messages = chat_messages(instructions, items)  # its errors first, then the tools'
    tools = [_chat_tool(t) for t in body.get("tools") or ()]
    chat = openai_chat.translated(messages, tools, changes)
    choice = body.get("tool_choice")
    if isinstance(choice, str):
        chat["tool_choice"] = choice
    elif isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise RequestError(
                400,
                "this tool_choice has no chat completions equivalent for the model's engine",
                reason="unsupported_tool_choice",
                param="tool_choice",
            )
        chat["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    if body.get("max_output_tokens") is not None:
        chat["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "parallel_tool_calls", "top_k", "seed", "user"):
        if body.get(key) is not None:
            chat[key] = body[key]
    text = body.get("text")
    fmt = text.get("format") if isinstance(text, dict) else None
    if isinstance(fmt, dict) and fmt.get("type") in ("json_schema", "json_object"):
        if fmt["type"] == "json_object":
            chat["response_format"] = {"type": "json_object"}
        else:
            schema = {k: fmt[k] for k in ("name", "schema", "strict", "description") if k in fmt}
            chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    if changes.body_set:
        openai.deep_merge(chat, changes.body_set)
    return chat


def chat_messages(instructions: Any, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Checked input items (and instructions) as chat completions messages."""
    out: list[dict[str, Any]] = []
    if isinstance(instructions, str) and instructions:
        out.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type", "message")
        if kind == "message":
            role = "system" if item["role"] == "developer" else item["role"]
            out.append({"role": role, "content": _chat_content(item["content"])})
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "assistant":  # one turn: text, then calls
                last.setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            out.append(
                {
                    "role": "tool",
                    "tool_call_id": item["call_id"],
                    "content": _output_text(item.get("output")) or "",
                }
            )
    return out


def _chat_content(content: Any) -> Any:
    if isinstance(content, str):
        return content
    parts: list[dict[str, Any]] = []
    for part in content:
        kind = part["type"]
        if kind in _TEXT_PARTS:
            parts.append({"type": "text", "text": part.get("text", part.get("refusal", ""))})
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise RequestError(
                400,
                f"input parts of type {kind!r} have no chat completions equivalent for the "
                "model's engine",
                reason="unsupported_input_part",
                param="input",
            )
    if len(parts) == 1 and parts[0]["type"] == "text":
        return parts[0]["text"]
    return parts


def _chat_tool(tool: dict[str, Any]) -> dict[str, Any]:
    if tool.get("type") != "function":
        raise RequestError(
            400,
            f"built-in tool {tool.get('type')!r} has no chat completions equivalent for the "
            "model's engine",
            reason="unsupported_tool",
            param="tools",
        )
    function: dict[str, Any] = {"name": tool["name"]}
    for key in ("description", "parameters", "strict"):
        if tool.get(key) is not None:
            function[key] = tool[key]
    return {"type": "function", "function": function}

"""OpenAI (legacy) completions (``POST /v1/completions``): one ``prompt``, no system prompt."""

from __future__ import annotations

from typing import Any

from pointsman_shim.core.dialects import openai
from pointsman_shim.core.dialects.base import BodyChanges, LLMRequest, Upstream
from pointsman_shim.core.errors import RequestError


class OpenAICompletions(openai.OpenAIDialect):
    name: str = "openai-completions"
    paths: tuple[str, ...] = ("/v1/completions",)
    chat: bool = False

    def parse(self, raw: bytes, *, max_bytes: int) -> LLMRequest:
        request = openai.decode(self.name, raw, max_bytes=max_bytes)
        request.prompt = _prompt(request.body.get("prompt"))
        return request

    def rewrite(self, request: LLMRequest, changes: BodyChanges) -> Upstream:
        """The model and ``body_set``; a system prompt has no place in a bare prompt."""
        body = openai.changed_body(request, changes)
        return openai.upstream(request, body)


DIALECT = OpenAICompletions()


def _prompt(prompt: Any) -> str:
    if prompt is None:
        raise RequestError(400, "'prompt' is required", reason="missing_prompt", param="prompt")
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return "\n".join(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
        # Token ids: no text to classify, but a stable string keeps prefix affinity working.
        return " ".join(str(p) for p in prompt)
    raise RequestError(
        400,
        "'prompt' must be a non-empty string, array of strings or array of token ids",
        reason="invalid_prompt",
        param="prompt",
    )

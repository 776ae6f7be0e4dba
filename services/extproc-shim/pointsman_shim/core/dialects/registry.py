"""Which dialect speaks which request path. A new API: its module, and one line in ``DIALECTS``."""

from __future__ import annotations

from pointsman_shim.core.dialects import (
    anthropic,
    openai_chat,
    openai_completions,
    openai_responses,
)
from pointsman_shim.core.dialects.base import Dialect


class Registry:
    """Dialects by request path and by name; a name or a path may belong to one dialect only."""

    def __init__(self, *dialects: Dialect) -> None:
        self.by_name: dict[str, Dialect] = {}
        self.by_path: dict[str, Dialect] = {}
        for d in dialects:
            if d.name in self.by_name:
                raise ValueError(f"two dialects are named {d.name!r}")
            self.by_name[d.name] = d
            for path in d.paths:
                if path in self.by_path:
                    raise ValueError(
                        f"path {path!r} belongs to {self.by_path[path].name!r} and {d.name!r}"
                    )
                self.by_path[path] = d

    def for_path(self, path: str) -> Dialect | None:
        """The dialect of a request path (query string and trailing slash ignored); ``None``:
        not an API the shim routes, the request passes through."""
        return self.by_path.get(path.split("?", 1)[0].rstrip("/"))

    def named(self, name: str) -> Dialect | None:
        return self.by_name.get(name)


DIALECTS = Registry(
    openai_chat.DIALECT,
    openai_completions.DIALECT,
    openai_responses.DIALECT,
    anthropic.MESSAGES,
    anthropic.COUNT_TOKENS,
)

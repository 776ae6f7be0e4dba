"""A small Dockerfile reader for the image tests: instructions per build stage.

Enough of the Dockerfile grammar for Pointsman's own files (line continuations, comments, exec
and shell forms); it is not a general parser.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass
class Instruction:
    keyword: str  # upper-case: FROM, RUN, COPY, ...
    args: str  # the rest of the logical line, continuations joined

    def exec_form(self) -> list[str] | None:
        """The JSON-array form (ENTRYPOINT ["python", ...]) as a list, or None for shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list)
            return [str(v) for v in value]
        return None


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction | None:
        found = self.all(keyword)
        return found[-1] if found else None


@dataclass
class Dockerfile:
    path: Path
    args: dict[str, str]  # global ARGs (before the first FROM) with their defaults
    stages: list[Stage]

    @property
    def final(self) -> Stage:
        return self.stages[-1]

    def resolve(self, text: str) -> str:
        for key, value in self.args.items():
            text = text.replace("${" + key + "}", value).replace("$" + key, value)
        return text

    def built_with(self, build_args: dict[str, str]) -> Dockerfile:
        """The file as one build sees it: every ``$NAME``, ``${NAME}`` and ``${NAME:?...}`` of an
        ARG replaced by its value (the build's ``--build-arg``, else the ARG's default, else
        empty); other variables (``$PATH``) are left as they are."""
        values = {**self.args, **build_args}
        stages = []
        for stage in self.stages:
            for arg in stage.all("ARG"):
                key, _, default = arg.args.partition("=")
                values.setdefault(key.strip(), default.strip())
            stages.append(replace(stage, instructions=[]))
            for i in stage.instructions:
                text = i.args
                for key, value in values.items():
                    pattern = r"\$\{" + key + r"(:[?-][^}]*)?\}|\$" + key + r"\b"
                    text = re.sub(pattern, lambda _, v=value: v, text)
                stages[-1].instructions.append(Instruction(i.keyword, text))
        return Dockerfile(path=self.path, args=values, stages=stages)

    def arg(self, name: str) -> str:
        """The value of an ARG (global or of any stage): its default, or a build's value after
        :meth:`built_with`."""
        if name in self.args:
            return self.args[name]
        for stage in self.stages:
            for arg in stage.all("ARG"):
                key, _, default = arg.args.partition("=")
                if key.strip() == name:
                    return default.strip()
        raise KeyError(f"{self.path}: no ARG {name}")


def logical_lines(text: str) -> list[str]:
    lines: list[str] = []
    current = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        lines.append(current)
        current = ""
    if current:
        lines.append(current)
    return lines


def parse(path: Path) -> Dockerfile:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical_lines(path.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        keyword = keyword.upper()
        rest = rest.strip()
        if keyword == "FROM":
            words = shlex.split(rest)
            words = [w for w in words if not w.startswith("--")]
            name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base=words[0], name=name))
        elif not stages:
            if keyword == "ARG":
                key, _, default = rest.partition("=")
                global_args[key.strip()] = default.strip()
        else:
            stages[-1].instructions.append(Instruction(keyword, rest))
    return Dockerfile(path=path, args=global_args, stages=stages)

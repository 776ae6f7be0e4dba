"""The ``pointsman`` command: one entry point, each subcommand owned by the module that does it.

Subcommands forward their arguments untouched, so every module owns its own flags and ``--help``
and the CLI never needs to know them. Heavy modules (torch for ``train``/``eval``) are imported only
when their subcommand runs.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (module with a ``main(argv) -> int``, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "up": ("pointsman.stack", "start the whole stack locally: NATS, services, Envoy, simulators"),
    "sim": ("pointsman.sim", "run one simulated vLLM server (OpenAI API + Prometheus /metrics)"),
    "train": ("pointsman_classifier.train", "train the classifier heads from labelled data"),
    "eval": ("pointsman_classifier.evaluate", "evaluate a classifier on a labelled data set"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: pointsman COMMAND [ARGS...]",
        "",
        "Pointsman: semantic router and endpoint picker for LLM inference fleets.",
        "",
        "commands:",
    ]
    lines += [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    lines += ["", "Run 'pointsman COMMAND --help' for the flags of a command."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    if args[0] in {"-V", "--version"}:
        from pointsman import __version__

        print(f"pointsman {__version__}")
        return 0
    name, rest = args[0], args[1:]
    if name not in COMMANDS:
        print(f"pointsman: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, _ = COMMANDS[name]
    if name == "eval" and rest[:1] == ["pii"]:
        module_name, rest, name = "pointsman_lab.pii_eval", rest[1:], "eval pii"
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        print(
            f"pointsman {name}: needs module '{exc.name}', which is not installed "
            "(install the matching extra, e.g. pip install 'pointsman[classifier]')",
            file=sys.stderr,
        )
        return 2
    result: int = module.main(rest, prog=f"pointsman {name}")
    return result


if __name__ == "__main__":
    sys.exit(main())

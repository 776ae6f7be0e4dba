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
    "train": ("pointsman_lab.train", "train the classifier heads from labelled data"),
    "eval": ("pointsman_lab.evaluate", "evaluate a classifier on a labelled data set"),
}

#: ``pointsman eval TASK``: the module that evaluates each task (``main(argv) -> int``); other
#: tasks (``category``) go to the ``eval`` command's own module.
EVAL_TASKS: dict[str, str] = {
    "jailbreak": "pointsman_lab.jailbreak_eval",
    "pii": "pointsman_lab.pii_eval",
}

#: Commands whose modules live in an offline extra (``pointsman[train]``), not in the runtime
#: services, and what that extra adds to the classifier's.
OFFLINE = {"train", "eval"}
OFFLINE_DEPS = ("tqdm", "matplotlib", "torch")


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
    prog = f"pointsman {name}"
    if name == "eval" and rest and rest[0] in EVAL_TASKS:
        module_name, prog, rest = EVAL_TASKS[rest[0]], f"pointsman eval {rest[0]}", rest[1:]
    extra = "train" if name in OFFLINE else "classifier"
    try:
        if name in OFFLINE:
            for dep in OFFLINE_DEPS:  # up front: the modules import some of them only when used
                importlib.import_module(dep)
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            print(
                f"{prog}: not available in this version ({module_name} is missing)", file=sys.stderr
            )
        else:
            print(
                f"{prog}: needs module '{exc.name}', which is not installed "
                f"(install the matching extra: pip install 'pointsman[{extra}]')",
                file=sys.stderr,
            )
        return 2
    if module_name == EVAL_TASKS["pii"]:
        result: int = module.main(rest)  # ml-pii's module: main(argv) -> int
    else:
        result = module.main(rest, prog=prog)
    return result


if __name__ == "__main__":
    sys.exit(main())

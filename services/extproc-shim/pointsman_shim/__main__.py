"""``python -m pointsman_shim --config FILE``: run the extproc-shim."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pointsman import configfile, tracing
from pointsman.runtime import run, service_parser, setup_logging


def main(argv: Sequence[str] | None = None, prog: str = "pointsman-shim") -> int:
    parser = service_parser(
        prog, "Pointsman extproc-shim: Envoy ext_proc server that routes LLM requests.", "shim"
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level, json_logs=args.json_logs)

    from pointsman_shim.app import load_config, load_extra, serve

    try:
        config, nats, tracing_config = load_config(args.config)
        debug, pools, redis = load_extra(args.config)
    except configfile.ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    tracing.setup(tracing_config, "pointsman-shim")
    run(lambda stop: serve(config, nats, stop, debug=debug, pools=pools, redis=redis))
    return 0


if __name__ == "__main__":
    sys.exit(main())

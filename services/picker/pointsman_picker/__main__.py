"""``python -m pointsman_picker --config FILE``: run one picker replica until SIGTERM/SIGINT."""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence

from pointsman import bus, configfile, redisconf, tracing
from pointsman.debug import DebugConfig
from pointsman.runtime import run, service_parser, setup_logging
from pointsman_picker.config import PickerConfig


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    args = service_parser(
        prog or "pointsman-picker",
        "Pointsman endpoint picker: answers pick requests over NATS.",
        "picker",
    ).parse_args(argv)
    setup_logging(args.log_level, json_logs=args.json_logs)
    from pointsman_picker.plan import build_plans

    try:
        data = configfile.read(args.config)
        cfg = configfile.section(data, "picker", PickerConfig)
        build_plans(cfg)  # fail now, at start-up, on a bad plugin, parameter or profile name
        nats = bus.nats_config(data)
        debug = configfile.section(data, "debug", DebugConfig).enabled
        redis = redisconf.security(data)
        tracing_cfg = configfile.section(data, "tracing", tracing.TracingConfig)
    except configfile.ConfigError as exc:
        print(f"pointsman-picker: {exc}", file=sys.stderr)
        return 2
    tracing.setup(tracing_cfg, "pointsman-picker")
    # Fewer young-generation collections: each pick allocates a few hundred short-lived
    # objects, and the default threshold (700) would collect several times per pick burst.
    gc.set_threshold(20_000, 20, 50)
    from pointsman_picker.app import run as serve

    run(lambda stop: serve(cfg, nats, stop, debug=debug, redis=redis))
    return 0


if __name__ == "__main__":
    sys.exit(main())

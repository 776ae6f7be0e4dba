"""``python -m pointsman_classifier --config FILE`` (also the ``pointsman-classifier`` script)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from pointsman import bus, configfile, redisconf, tracing
from pointsman.runtime import run, service_parser, setup_logging
from pointsman_classifier.config import ClassifierConfig


def main(argv: Sequence[str] | None = None) -> int:
    p = service_parser(
        "pointsman-classifier", "Pointsman classifier: model selection and safety.", "classifier"
    )
    args = p.parse_args(argv)
    setup_logging(args.log_level, json_logs=args.json_logs)
    try:
        data = configfile.read(args.config)
        cfg = configfile.section(data, "classifier", ClassifierConfig)
        bus.nats_config(data)  # fail at start-up on a bad nats section, not after loading models
        redisconf.security(data)
        tracing_cfg = configfile.section(data, "tracing", tracing.TracingConfig)
    except configfile.ConfigError as exc:
        print(f"pointsman-classifier: {exc}", file=sys.stderr)
        return 2
    tracing.setup(tracing_cfg, "pointsman-classifier")
    from pointsman_classifier.app import run as serve

    run(lambda stop: serve(data, cfg, stop))
    return 0


if __name__ == "__main__":
    sys.exit(main())

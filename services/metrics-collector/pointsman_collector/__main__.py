"""``python -m pointsman_collector --config FILE`` (also ``pointsman-collector``)."""

from __future__ import annotations

import os
import sys

from pointsman import bus, configfile
from pointsman.runtime import run, service_parser, setup_logging
from pointsman_collector.app import run as serve
from pointsman_collector.config import CollectorConfig


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = service_parser(
        prog or "pointsman-collector",
        "Scrape engine /metrics and publish pool snapshots on NATS.",
        "collector",
    )
    args = parser.parse_args(argv)
    config_path = args.config or os.environ.get(configfile.ENV_CONFIG)
    setup_logging(args.log_level, json_logs=args.json_logs)
    try:
        data = configfile.read(args.config)
        cfg = configfile.section(data, "collector", CollectorConfig)
        nats = bus.nats_config(data)
    except configfile.ConfigError as exc:
        print(f"pointsman-collector: {exc}", file=sys.stderr)
        return 2
    run(lambda stop: serve(cfg, nats=nats, config_path=config_path, stop=stop))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m pointsman_collector --config FILE`` (also ``pointsman-collector``)."""

from __future__ import annotations

import argparse
import os
import sys

from pointsman import bus, configfile
from pointsman.runtime import run, setup_logging
from pointsman_collector.app import run as serve
from pointsman_collector.config import CollectorConfig


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "pointsman-collector",
        description="Scrape engine /metrics and publish pool snapshots on NATS.",
    )
    parser.add_argument(
        "--config",
        default=os.environ.get(configfile.ENV_CONFIG),
        help="the Pointsman YAML config file (default: $POINTSMAN_CONFIG)",
    )
    parser.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    parser.add_argument(
        "--json-logs", action="store_true", help="log one JSON object per line, with the trace id"
    )
    args = parser.parse_args(argv)
    setup_logging(args.log_level, json_logs=args.json_logs)
    try:
        data = configfile.read(args.config)
        cfg = configfile.section(data, "collector", CollectorConfig)
        nats = bus.nats_config(data)
    except configfile.ConfigError as exc:
        print(f"pointsman-collector: {exc}", file=sys.stderr)
        return 2
    run(lambda stop: serve(cfg, nats=nats, config_path=args.config, stop=stop))
    return 0


if __name__ == "__main__":
    sys.exit(main())

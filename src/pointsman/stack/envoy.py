"""Render the Envoy config of a Pointsman stack from ``src/pointsman/stack/envoy.template.yaml``.

The template holds everything that does not depend on the fleet; this module fills its
placeholders and appends one fail-open route and cluster per pool, so that when the picker does
not answer, Envoy still sends each model's requests to that model's pods with its own load
balancing.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from pointsman.v1 import headers as reported

TEMPLATE_NAME = "envoy.template.yaml"
OBSERVER_FILTER = "pointsman.ext_proc.observe"


def template_text() -> str:
    """The template (``envoy.template.yaml``, packaged beside this module: the one copy, no symlink)."""
    return resources.files("pointsman.stack").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


@dataclass
class EnvoyOptions:
    listen_port: int
    admin_port: int
    shim_host: str
    shim_port: int
    #: served model name -> endpoints ("host:port"); each gets a fail-open cluster.
    pools: dict[str, list[str]] = field(default_factory=dict)
    default_pool: str | None = None
    listen_address: str = "127.0.0.1"
    body_mode: Literal["BUFFERED", "FULL_DUPLEX_STREAMED"] = "BUFFERED"
    #: true = fail-open when the shim itself is down or too slow (ext_proc failure_mode_allow).
    failure_mode_allow: bool = True
    message_timeout_ms: int = 2000
    max_body_bytes: int = 4 * 1024 * 1024
    #: Where the shim reads responses: ``observer`` = a second ext_proc filter in
    #: observability_mode (off the client's critical path, one more gRPC stream per request);
    #: ``inline`` = the decision filter also sends the response (fewer streams, less CPU, but
    #: the client waits for the shim's answers on the response too).
    response_path: Literal["observer", "inline"] = "observer"


def render(options: EnvoyOptions) -> dict[str, Any]:
    text = string.Template(template_text()).substitute(
        ADMIN_PORT=options.admin_port,
        LISTEN_ADDRESS=options.listen_address,
        LISTEN_PORT=options.listen_port,
        BUFFER_LIMIT=2 * options.max_body_bytes,
        SHIM_HOST=options.shim_host,
        SHIM_PORT=options.shim_port,
        BODY_MODE=options.body_mode,
        # FULL_DUPLEX_STREAMED needs trailers sent, so the shim always sees the end of the body.
        TRAILER_MODE="SEND" if options.body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
        FAILURE_MODE_ALLOW="true" if options.failure_mode_allow else "false",
        MESSAGE_TIMEOUT=f"{options.message_timeout_ms / 1000:.3f}s",
        RESPONSE_HEADER_MODE="SKIP" if options.response_path == "observer" else "SEND",
        RESPONSE_BODY_MODE="NONE" if options.response_path == "observer" else "STREAMED",
    )
    config: dict[str, Any] = yaml.safe_load(text)
    resources_ = config["static_resources"]
    hcm = resources_["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    if options.response_path == "inline":
        hcm["http_filters"] = [f for f in hcm["http_filters"] if f["name"] != OBSERVER_FILTER]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["response_headers_to_add"] = report_headers()
    # A client-sent report header would be echoed when the shim is down: drop them all early.
    early = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    removed = {m["remove"] for m in early if "remove" in m}
    early += [{"remove": name} for name in reported.REPORTED if name not in removed]
    routes: list[dict[str, Any]] = vhost["routes"]
    for index, (model, endpoints) in enumerate(sorted(options.pools.items())):
        cluster = f"pool_{index}"
        routes.append(
            {
                "name": f"fail-open-{model}",
                "match": {
                    "prefix": "/",
                    "headers": [{"name": "x-selected-model", "string_match": {"exact": model}}],
                },
                "route": {"cluster": cluster, "timeout": "0s"},
            }
        )
        resources_["clusters"].append(_pool_cluster(cluster, endpoints))
    default = options.default_pool or (sorted(options.pools)[0] if options.pools else None)
    if default is not None:
        index = sorted(options.pools).index(default)
        routes.append(
            {
                "name": "default-pool",
                "match": {"prefix": "/"},
                "route": {"cluster": f"pool_{index}", "timeout": "0s"},
            }
        )
    return config


def report_headers() -> list[dict[str, Any]]:
    """``response_headers_to_add`` that copy the decision's headers onto the response.

    ``%REQ(name)%`` reads the routed request as the shim left it, so reporting needs no ext_proc
    message on the response path; an empty value (no decision, e.g. a non-LLM path) adds nothing.
    """
    out = [
        {
            "header": {"key": name, "value": f"%REQ({name})%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "keep_empty_value": False,
        }
        for name in reported.REPORTED
    ]
    out.append(
        {
            "header": {"key": reported.ENDPOINT, "value": "%UPSTREAM_REMOTE_ADDRESS%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "keep_empty_value": False,
        }
    )
    return out


def _pool_cluster(name: str, endpoints: list[str]) -> dict[str, Any]:
    lb_endpoints = []
    for endpoint in endpoints:
        host, _, port = endpoint.rpartition(":")
        lb_endpoints.append(
            {
                "endpoint": {
                    "address": {
                        "socket_address": {"address": host.strip("[]"), "port_value": int(port)}
                    }
                }
            }
        )
    return {
        "name": name,
        "type": "STRICT_DNS",
        "lb_policy": "LEAST_REQUEST",
        "connect_timeout": "2s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    }


def render_yaml(options: EnvoyOptions) -> str:
    return yaml.safe_dump(render(options), sort_keys=False)

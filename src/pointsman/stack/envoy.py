"""Render the Envoy config of a Pointsman stack from ``src/pointsman/stack/envoy.template.yaml``.

The template holds everything that does not depend on the fleet; this module fills its
placeholders and adds what does: the routes (the API of :mod:`pointsman.stack.gateway`, then 404
for any other path), one cluster per pool, and the local reply mappers.

Each pool is one cluster whose load balancer is Envoy's ``override_host`` policy, the one made
for the Gateway API Inference Extension's endpoint-picker protocol: the shim's pick (``envoy.lb``
metadata ``x-gateway-destination-endpoint``, primary then fallbacks) chooses the endpoint, a
retry takes the next one listed, and without a pick (fail-open) Envoy balances by least requests
over the pool's healthy endpoints. A picked address the pool does not list is skipped, so a
forged pick can only ever reach an endpoint of the model's own pool. There is no ORIGINAL_DST
cluster: every pool ``pointsman up`` and docker-compose route to is known when the config is
rendered.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import yaml

from pointsman.stack.gateway import ENVOY_MADE, LOCAL_REPLIES, ApiRoute, GatewayConfig
from pointsman.v1 import headers as reported

TEMPLATE_NAME = "envoy.template.yaml"
OBSERVER_FILTER = "pointsman.ext_proc.observe"
#: Model-selector mode: the ext_proc filter of each pool's own endpoint picker (EPP), after
#: Pointsman's decision filter; its gRPC service is set per route, i.e. per pool.
POOL_PICKER_FILTER = "pointsman.ext_proc.pool_picker"
#: The endpoint-picker protocol's names: metadata namespace and key of the picked endpoints.
LB_NAMESPACE = "envoy.lb"
DESTINATION = "x-gateway-destination-endpoint"
SERVED = "x-gateway-destination-endpoint-served"
ERROR_HEADER = "x-pointsman-error"

_EXT_PROC_PER_ROUTE = (
    "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExtProcPerRoute"
)
_OVERRIDE_HOST = (
    "type.googleapis.com/envoy.extensions.load_balancing_policies.override_host.v3.OverrideHost"
)
_LEAST_REQUEST = (
    "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
)
_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
_UPSTREAM_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
_CEL_FILTER = "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter"
#: What a retry is for: the endpoint refused the connection or the stream, or dropped it before
#: the response began (a request it may have started is run again elsewhere; a response already
#: streaming to the client is never retried).
RETRY_ON = "connect-failure,refused-stream,reset"
#: Draws of a retry's endpoint before Envoy settles for one already tried (see :func:`retry_policy`).
HOST_SELECTION_ATTEMPTS = 16


def template_text() -> str:
    """The template (``envoy.template.yaml``, packaged beside this module: the one copy, no symlink)."""
    return resources.files("pointsman.stack").joinpath(TEMPLATE_NAME).read_text(encoding="utf-8")


@dataclass(frozen=True)
class ShimTls:
    """How Envoy reaches the shim over TLS: the CA that signed the shim's certificate, and
    Envoy's own certificate for a shim that requires mutual TLS (``shim.tls.client_ca_file``)."""

    ca_file: str
    cert_file: str | None = None
    key_file: str | None = None
    #: Server name sent and verified (the shim's certificate must name it); none: the chain only.
    sni: str | None = None


def shim_transport_socket(tls: ShimTls) -> dict[str, Any]:
    """The shim cluster's ``transport_socket``: TLS (ALPN h2, gRPC), verified against
    ``ca_file``, with a client certificate when given."""
    common: dict[str, Any] = {
        "alpn_protocols": ["h2"],
        "validation_context": {"trusted_ca": {"filename": tls.ca_file}},
    }
    if tls.sni:
        common["validation_context"]["match_typed_subject_alt_names"] = [
            {"san_type": "DNS", "matcher": {"exact": tls.sni}}
        ]
    if tls.cert_file:
        common["tls_certificates"] = [
            {
                "certificate_chain": {"filename": tls.cert_file},
                "private_key": {"filename": tls.key_file},
            }
        ]
    context: dict[str, Any] = {"@type": _UPSTREAM_TLS, "common_tls_context": common}
    if tls.sni:
        context["sni"] = tls.sni
    return {"name": "envoy.transport_sockets.tls", "typed_config": context}


@dataclass
class EnvoyOptions:
    listen_port: int
    admin_port: int
    shim_host: str
    shim_port: int
    #: served model name -> endpoints ("ip:port"; a host name is resolved, but then the pick
    #: cannot name it); each pool gets a cluster and a route.
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
    #: The ``gateway:`` config section: extra API paths, retries, health checks.
    gateway: GatewayConfig = field(default_factory=GatewayConfig)
    #: ``full``: the shim picks the endpoint too. ``selector``: the shim (``shim.mode:
    #: selector``) chooses the model only, and a pool listed in ``pool_pickers`` gets its pod
    #: from that endpoint picker (a second ext_proc, the endpoint-picker protocol); a pool not
    #: listed is balanced by Envoy (an InferencePool without an endpoint picker).
    mode: Literal["full", "selector"] = "full"
    #: Model-selector mode: pool -> ``host:port`` of its endpoint picker's ext_proc server.
    pool_pickers: dict[str, str] = field(default_factory=dict)
    #: Model-selector mode: serve a request when its pool's picker is down or slow (Envoy's
    #: own balancing), as an InferencePool's ``failureMode: FailOpen``.
    pool_picker_fail_open: bool = True
    #: Report the replica that served a response (``x-pointsman-endpoint``; ``debug.report_endpoint``).
    report_endpoint: bool = False
    #: ext_proc to the shim over TLS (``shim.tls``); ``None``: plaintext gRPC.
    shim_tls: ShimTls | None = None


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
    pickers = _pool_pickers(options)
    if pickers:
        # Right after the decision filter: the model (and so the route) is chosen first.
        hcm["http_filters"].insert(1, pool_picker_filter(options, next(iter(pickers.values()))))
    ext_procs = [f["name"] for f in hcm["http_filters"] if f["name"] != "envoy.filters.http.router"]
    vhost = hcm["route_config"]["virtual_hosts"][0]
    vhost["response_headers_to_add"] = report_headers(endpoint=options.report_endpoint)
    # A client-sent report header would be echoed when the shim is down: drop them all early.
    early = hcm["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    removed = {m["remove"] for m in early if "remove" in m}
    early += [{"remove": name} for name in reported.REPORTED if name not in removed]
    if options.shim_tls is not None:
        shim = next(c for c in resources_["clusters"] if c["name"] == "pointsman_shim")
        shim["transport_socket"] = shim_transport_socket(options.shim_tls)

    gateway = options.gateway
    clusters = {model: f"pool_{i}" for i, model in enumerate(sorted(options.pools))}
    default = options.default_pool or (sorted(options.pools)[0] if options.pools else None)
    if default is not None and default not in clusters:
        raise ValueError(f"default pool {default!r} is not one of the pools {sorted(clusters)}")
    per_pool = {
        model: _pool_picker_route_config(pickers.get(model), options.message_timeout_ms)
        for model in clusters
    } if options.mode == "selector" and pickers else {}  # fmt: skip
    vhost["routes"] = routes(
        gateway.api_routes(),
        clusters,
        clusters[default] if default else None,
        ext_procs,
        per_pool=per_pool,
        default_pool=default,
    )
    if gateway.retries:
        vhost["retry_policy"] = retry_policy(gateway.retries)
    hcm["local_reply_config"]["mappers"] = local_reply_mappers()
    for model, name in clusters.items():
        resources_["clusters"].append(pool_cluster(name, options.pools[model], gateway))
    if pickers:
        for name, address in _epp_clusters(options.pool_pickers).items():
            resources_["clusters"].append(_grpc_cluster(name, address))
    return config


def _pool_pickers(options: EnvoyOptions) -> dict[str, str]:
    """pool -> the cluster name of its endpoint picker (model-selector mode only)."""
    if options.mode != "selector":
        return {}
    unknown = sorted(set(options.pool_pickers) - set(options.pools))
    if unknown:
        raise ValueError(f"pool_pickers names pools that are not pools: {unknown}")
    by_address = {a: n for n, a in _epp_clusters(options.pool_pickers).items()}
    return {model: by_address[address] for model, address in sorted(options.pool_pickers.items())}


def _epp_clusters(pool_pickers: dict[str, str]) -> dict[str, str]:
    """cluster name -> ``host:port``, one cluster per distinct picker address."""
    addresses = sorted(set(pool_pickers.values()))
    return {f"pool_picker_{i}": address for i, address in enumerate(addresses)}


def pool_picker_filter(options: EnvoyOptions, cluster: str) -> dict[str, Any]:
    """The second ext_proc of model-selector mode, as Inference Extension gateways configure
    their endpoint picker: headers and the whole body, the pick read from ``envoy.lb`` metadata,
    the subset hint forwarded. The body is ``BUFFERED``, not the protocol's
    ``FULL_DUPLEX_STREAMED``: Envoy 1.40 does not honour ``failure_mode_allow`` on a full-duplex
    stream (a picker that is down gave 500s, ``test_epp_unavailable_fail_open``), and a
    picker that speaks the protocol must answer a buffered stream too. Its service is set per route (per pool); ``cluster`` is only the
    default Envoy requires. It sees the request after Pointsman's decision filter, so its body
    has the selected (or rewritten) model."""
    timeout = f"{options.message_timeout_ms / 1000:.3f}s"
    return {
        "name": POOL_PICKER_FILTER,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
            "grpc_service": {"envoy_grpc": {"cluster_name": cluster}, "timeout": timeout},
            "failure_mode_allow": options.pool_picker_fail_open,
            "message_timeout": timeout,
            "processing_mode": {
                "request_header_mode": "SEND",
                "request_body_mode": "BUFFERED",
                "request_trailer_mode": "SKIP",
                "response_header_mode": "SKIP",
                "response_body_mode": "NONE",
                "response_trailer_mode": "SKIP",
            },
            "metadata_options": {
                "forwarding_namespaces": {"untyped": ["envoy.lb.subset_hint"]},
                # envoy.lb: the pick; pointsman: a Pointsman picker's context for the observer.
                "receiving_namespaces": {"untyped": ["envoy.lb", "pointsman"]},
            },
        },
    }


def _pool_picker_route_config(cluster: str | None, timeout_ms: int) -> dict[str, Any]:
    """A pool route's setting of the pool-picker filter: its own picker, or none."""
    if cluster is None:
        return {"@type": _EXT_PROC_PER_ROUTE, "disabled": True}
    return {
        "@type": _EXT_PROC_PER_ROUTE,
        "overrides": {
            "grpc_service": {
                "envoy_grpc": {"cluster_name": cluster},
                "timeout": f"{timeout_ms / 1000:.3f}s",
            }
        },
    }


def _grpc_cluster(name: str, address: str) -> dict[str, Any]:
    host, _, port = address.rpartition(":")
    return {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "1s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            }
        },
        "load_assignment": {
            "cluster_name": name,
            "endpoints": [
                {
                    "lb_endpoints": [
                        {
                            "endpoint": {
                                "address": {
                                    "socket_address": {
                                        "address": host.strip("[]"),
                                        "port_value": int(port),
                                    }
                                }
                            }
                        }
                    ]
                }
            ],
        },
    }


def routes(
    api: tuple[ApiRoute, ...],
    pools: dict[str, str],
    default_cluster: str | None,
    ext_procs: list[str],
    *,
    per_pool: dict[str, dict[str, Any]] | None = None,
    default_pool: str | None = None,
) -> list[dict[str, Any]]:
    """The route table: 405 for a wrong method on an API path, then one route per pool chosen
    by the shim's ``x-selected-model``, the default pool (shim down), and 404 for the rest.

    The 404 and 405 answers are Envoy's own, with every ext_proc filter off for them: neither the
    shim nor an engine ever sees such a request. ``per_pool`` (model-selector mode): each pool
    route's setting of the pool-picker filter.
    """
    per_pool = per_pool or {}

    def picker_of(model: str | None) -> dict[str, Any]:
        if model is None or model not in per_pool:
            return {}
        return {"typed_per_filter_config": {POOL_PICKER_FILTER: per_pool[model]}}

    off = {name: {"@type": _EXT_PROC_PER_ROUTE, "disabled": True} for name in ext_procs}
    out: list[dict[str, Any]] = []
    for api_route in api:
        out.append(
            {
                "name": f"method-not-allowed {api_route.path}",
                "match": {
                    **_path_match(api_route),
                    "headers": [
                        {
                            "name": ":method",
                            "string_match": {
                                "safe_regex": {"regex": f"(?:{'|'.join(api_route.methods)})"}
                            },
                            "invert_match": True,
                        }
                    ],
                },
                "direct_response": {"status": 405},
                "response_headers_to_add": [
                    {
                        "header": {"key": "allow", "value": ", ".join(api_route.methods)},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
                "typed_per_filter_config": off,
            }
        )
    any_api = {"safe_regex": {"regex": f"(?:{'|'.join(r.regex() for r in api)})"}}
    for model, cluster in pools.items():
        out.append(
            {
                "name": f"model {model}",
                "match": {
                    **any_api,
                    "headers": [{"name": "x-selected-model", "string_match": {"exact": model}}],
                },
                "route": {"cluster": cluster, "timeout": "0s"},
                **picker_of(model),
            }
        )
    if default_cluster is not None:
        out.append(
            {
                "name": "default-pool",
                "match": any_api,
                "route": {"cluster": default_cluster, "timeout": "0s"},
                **picker_of(default_pool),
            }
        )
    out.append(
        {
            "name": "not-found",
            "match": {"prefix": "/"},
            "direct_response": {"status": 404},
            "typed_per_filter_config": off,
        }
    )
    return out


def _path_match(api_route: ApiRoute) -> dict[str, Any]:
    if api_route.templated:
        return {"safe_regex": {"regex": api_route.regex()}}
    return {"path": api_route.path}


def retry_policy(retries: int) -> dict[str, Any]:
    """Retry a transport failure once per ``retries`` on another endpoint of the same pool.

    ``previous_hosts`` keeps the pool's balancer off the endpoints already tried; the
    override_host balancer moves to the next picked endpoint by itself.

    The predicate only makes Envoy draw again, up to ``host_selection_retry_max_attempts`` times,
    and then it takes the last draw even if it was tried. Least-request draws at random among
    equally loaded endpoints, so with a pool of two and one dead the retry lands on the dead one
    again with probability 2^-(attempts+1): 1 in 64 at 5 attempts, which failed a CI run
    (``test_fail_open_request_to_a_killed_replica_is_retried``). At
    :data:`HOST_SELECTION_ATTEMPTS` it is about 1 in 130,000; a draw costs microseconds and
    only on a retry.
    """
    return {
        "retry_on": RETRY_ON,
        "num_retries": retries,
        "retry_host_predicate": [
            {
                "name": "envoy.retry_host_predicates.previous_hosts",
                "typed_config": {"@type": _PREVIOUS_HOSTS},
            }
        ],
        "host_selection_retry_max_attempts": HOST_SELECTION_ATTEMPTS,
    }


def local_reply_mappers() -> list[dict[str, Any]]:
    """``local_reply_config.mappers`` from :data:`pointsman.stack.gateway.LOCAL_REPLIES`.

    There is no top-level ``body_format``: a local reply no mapper matches (the shim's immediate
    responses) keeps its body and content type.
    """
    out = []
    for reply in LOCAL_REPLIES:
        cel = ENVOY_MADE
        if reply.status is not None:
            cel += f" && response.code == {reply.status}"
        if reply.cel is not None:
            cel += f" && ({reply.cel})"
        filters: list[dict[str, Any]] = [
            {
                "extension_filter": {
                    "name": "envoy.access_loggers.extension_filters.cel",
                    "typed_config": {"@type": _CEL_FILTER, "expression": cel},
                }
            }
        ]
        if reply.flags:
            filters.append({"response_flag_filter": {"flags": list(reply.flags)}})
        mapper: dict[str, Any] = {
            "filter": filters[0] if len(filters) == 1 else {"and_filter": {"filters": filters}}
        }
        if reply.rewrite_status is not None:
            mapper["status_code"] = reply.rewrite_status
        out.append(
            {
                **mapper,
                "headers_to_add": [
                    {
                        "header": {"key": ERROR_HEADER, "value": reply.code},
                        "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
                    }
                ],
                "body_format_override": {
                    "json_format": {
                        "error": {
                            "message": reply.message,
                            "type": reply.type,
                            "param": None,
                            "code": reply.code,
                        }
                    }
                },
            }
        )
    return out


def report_headers(*, endpoint: bool = False) -> list[dict[str, Any]]:
    """``response_headers_to_add`` that copy the decision's headers onto the response.

    ``%REQ(name)%`` reads the routed request as the shim left it, so reporting needs no ext_proc
    message on the response path; an empty value (no decision, e.g. a non-LLM path) adds nothing.
    ``endpoint`` adds ``x-pointsman-endpoint`` (the replica's ip:port: off by default, it maps
    the fleet for an attacker). The request-side names are always stripped from the client's
    request (``early_header_mutation``), so a client cannot make the gateway echo them.
    """
    out = [
        {
            "header": {"key": name, "value": f"%REQ({name})%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "keep_empty_value": False,
        }
        for name in reported.REPORTED
    ]
    if not endpoint:
        return out
    out.append(
        {
            "header": {"key": reported.ENDPOINT, "value": "%UPSTREAM_REMOTE_ADDRESS%"},
            "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            "keep_empty_value": False,
        }
    )
    return out


def pool_cluster(name: str, endpoints: list[str], gateway: GatewayConfig) -> dict[str, Any]:
    """One pool: the picked endpoint if the pool lists it, else least-request; health-checked.

    ``healthy_panic_threshold: 0`` keeps Envoy from spreading traffic over failed endpoints when
    most of a pool is down (its default above 50% failed); the client then gets a 503 JSON error.
    override_host itself does not look at health: a picked endpoint is tried even if its health
    check failed, and the retry moves on.
    """
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
    cluster: dict[str, Any] = {
        "name": name,
        "type": "STRICT_DNS",
        "connect_timeout": "2s",
        "load_balancing_policy": override_host_policy(),
        # update_merge_window 0: a health change reaches the balancers at once (Envoy's default
        # batches them for 1 s, during which a dead endpoint still gets requests).
        "common_lb_config": {
            "healthy_panic_threshold": {"value": 0},
            "update_merge_window": "0s",
        },
        "circuit_breakers": {
            "thresholds": [
                {
                    "max_connections": 100000,
                    "max_pending_requests": 100000,
                    "max_requests": 100000,
                    "max_retries": 100000,
                }
            ]
        },
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
    }
    check = gateway.health_check
    if check.enabled:
        interval = _seconds(check.interval_ms)
        cluster["health_checks"] = [
            {
                "timeout": _seconds(check.timeout_ms),
                "interval": interval,
                # Envoy's default for a pool without traffic is 60 s: a dead replica would keep
                # its first fail-open requests for that long.
                "no_traffic_interval": interval,
                "unhealthy_threshold": check.unhealthy_threshold,
                "healthy_threshold": check.healthy_threshold,
                "http_health_check": {"path": check.path},
            }
        ]
    if gateway.eject_after_failures:
        # Passive: only connect failures, timeouts and resets count (local origin), never an
        # engine's own 5xx answer (a bad request can make a healthy engine answer 500).
        cluster["outlier_detection"] = {
            "split_external_local_origin_errors": True,
            "consecutive_local_origin_failure": gateway.eject_after_failures,
            "enforcing_consecutive_local_origin_failure": 100,
            "enforcing_consecutive_5xx": 0,
            "enforcing_consecutive_gateway_failure": 0,
            "enforcing_success_rate": 0,
            "enforcing_local_origin_success_rate": 0,
            "interval": "5s",
            "base_ejection_time": "5s",
            "max_ejection_time": "30s",
            "max_ejection_percent": 50,
        }
    return cluster


def override_host_policy() -> dict[str, Any]:
    """The endpoint-picker protocol as an Envoy load balancer (``load_balancing_policy``).

    The picked endpoints come from ``envoy.lb`` metadata only (a client cannot send metadata),
    the endpoint used is reported back as ``x-gateway-destination-endpoint-served``, and without
    a pick Envoy balances by least requests. The Istio overlay merges the same policy into its
    model Services' clusters.
    """
    return {
        "policies": [
            {
                "typed_extension_config": {
                    "name": "envoy.load_balancing_policies.override_host",
                    "typed_config": {
                        "@type": _OVERRIDE_HOST,
                        "override_host_sources": [
                            {"metadata": {"key": LB_NAMESPACE, "path": [{"key": DESTINATION}]}}
                        ],
                        # The protocol's served-endpoint report, read by the shim's response path
                        # (the endpoint a retry moved the request to).
                        "selected_host_key": {"key": LB_NAMESPACE, "path": [{"key": SERVED}]},
                        "fallback_policy": {
                            "policies": [
                                {
                                    "typed_extension_config": {
                                        "name": "envoy.load_balancing_policies.least_request",
                                        "typed_config": {"@type": _LEAST_REQUEST},
                                    }
                                }
                            ]
                        },
                    },
                }
            }
        ]
    }


def _seconds(ms: int) -> str:
    return f"{ms / 1000:.3f}s"


def render_yaml(options: EnvoyOptions) -> str:
    return yaml.safe_dump(render(options), sort_keys=False)

"""The rendered Envoy config: what the routing and the security of the gateway rest on."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from pointsman.stack.envoy import EnvoyOptions, ShimTls, render, render_yaml
from pointsman.stack.gateway import (
    API_ROUTES,
    ENVOY_MADE,
    LOCAL_REPLIES,
    ApiRoute,
    GatewayConfig,
)
from pointsman.stack.procs import binary
from pointsman.v1.headers import REPORTED


def options(**kw: Any) -> EnvoyOptions:
    base: dict[str, Any] = {
        "listen_port": 8080,
        "admin_port": 9901,
        "shim_host": "shim",
        "shim_port": 9002,
        "pools": {"b-model": ["10.0.0.2:8000"], "a-model": ["10.0.0.1:8000", "10.0.0.3:8000"]},
    }
    base.update(kw)
    return EnvoyOptions(**base)


def hcm(config: dict[str, Any]) -> dict[str, Any]:
    return config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"
    ]


def ext_proc(config: dict[str, Any]) -> dict[str, Any]:
    return next(
        f for f in hcm(config)["http_filters"] if f["name"] == "envoy.filters.http.ext_proc"
    )["typed_config"]


def routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    return list(hcm(config)["route_config"]["virtual_hosts"][0]["routes"])


def clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def test_routes_405s_then_pools_then_default_then_404() -> None:
    config = render(options(default_pool="b-model"))
    table = routes(config)
    n = len(API_ROUTES)
    assert [r["direct_response"]["status"] for r in table[:n]] == [405] * n
    by_model = {
        r["match"]["headers"][0]["string_match"]["exact"]: r["route"]["cluster"]
        for r in table[n:-2]
    }
    assert set(by_model) == {"a-model", "b-model"}
    assert table[-2]["name"] == "default-pool"
    assert table[-2]["route"]["cluster"] == by_model["b-model"]
    assert table[-1]["match"] == {"prefix": "/"}
    assert table[-1]["direct_response"] == {"status": 404}
    a = clusters(config)[by_model["a-model"]]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in a] == [8000, 8000]
    # no cluster connects to an address named at run time
    assert all(c["type"] != "ORIGINAL_DST" for c in config["static_resources"]["clusters"])


def test_routed_requests_match_only_api_paths() -> None:
    table = routes(render(options()))
    regex = re.compile(table[-2]["match"]["safe_regex"]["regex"])
    for route in table[len(API_ROUTES) : -1]:
        assert route["match"]["safe_regex"]["regex"] == regex.pattern
        assert "prefix" not in route["match"] and "path" not in route["match"]
    for path in (
        "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/responses",
        "/v1/responses/resp_1", "/v1/messages", "/v1/messages/count_tokens",
    ):  # fmt: skip
        assert regex.fullmatch(path)
    for path in (
        "/metrics", "/health", "/tokenize", "/v1/chat/completions/", "/v1//models",
        "/v1/models/../metrics", "/v1/chat%2Fcompletions", "/v1/embeddings", "/",
    ):  # fmt: skip
        assert not regex.fullmatch(path), path


@pytest.mark.parametrize("api_route", API_ROUTES, ids=lambda r: r.path)
def test_wrong_method_on_an_api_path_is_405_with_allow(api_route: ApiRoute) -> None:
    table = routes(render(options()))
    route = next(r for r in table if r.get("name") == f"method-not-allowed {api_route.path}")
    if api_route.templated:
        assert route["match"]["safe_regex"]["regex"] == api_route.regex()
    else:
        assert route["match"]["path"] == api_route.path
    method = route["match"]["headers"][0]
    assert method["name"] == ":method" and method["invert_match"] is True
    allowed = re.compile(method["string_match"]["safe_regex"]["regex"])
    assert all(allowed.fullmatch(m) for m in api_route.methods)
    assert not any(allowed.fullmatch(m) for m in ("HEAD", "OPTIONS", "TRACE", "PATCH", "X"))
    header = route["response_headers_to_add"][0]["header"]
    assert header == {"key": "allow", "value": ", ".join(api_route.methods)}


@pytest.mark.parametrize("response_path", ["observer", "inline"])
def test_answers_envoy_makes_itself_skip_every_ext_proc(response_path: str) -> None:
    config = render(options(response_path=response_path))
    filters = [f["name"] for f in hcm(config)["http_filters"]][:-1]
    for route in routes(config):
        if "direct_response" in route:
            per_filter = route["typed_per_filter_config"]
            assert set(per_filter) == set(filters)
            assert all(c["disabled"] is True for c in per_filter.values())
        else:
            assert "typed_per_filter_config" not in route


def test_extra_and_templated_api_routes() -> None:
    gateway = GatewayConfig.model_validate(
        {
            "extra_api_routes": [
                {"path": "/v1/embeddings"},
                {"path": "/v1/responses/{id}", "methods": ["GET", "DELETE"]},
                {"path": "/v1/models", "methods": ["GET", "POST"]},
            ]
        }
    )
    config = render(options(gateway=gateway))
    table = routes(config)
    regex = re.compile(table[-2]["match"]["safe_regex"]["regex"])
    assert regex.fullmatch("/v1/embeddings")
    assert regex.fullmatch("/v1/responses/resp_123")
    assert not regex.fullmatch("/v1/responses/a/b") and not regex.fullmatch("/v1/responses/")
    templated = next(r for r in table if r["name"] == "method-not-allowed /v1/responses/{id}")
    assert re.compile(templated["match"]["safe_regex"]["regex"]).fullmatch("/v1/responses/x")
    models = next(r for r in table if r["name"] == "method-not-allowed /v1/models")
    assert models["response_headers_to_add"][0]["header"]["value"] == "GET, POST"
    assert sum(r["name"] == "method-not-allowed /v1/models" for r in table) == 1


@pytest.mark.parametrize(
    "bad",
    [
        {"path": "v1/x"},
        {"path": "/v1/x/"},
        {"path": "/v1//x"},
        {"path": "/v1/x?y=1"},
        {"path": "/v1/.*"},
        {"path": "/v1/{id"},
        {"path": "/v1/x", "methods": []},
        {"path": "/v1/x", "methods": ["HEAD"]},
    ],
)
def test_bad_extra_api_routes_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        GatewayConfig.model_validate({"extra_api_routes": [bad]})


def test_pool_clusters_honour_the_pick_only_inside_the_pool() -> None:
    config = render(options())
    for name in ("pool_0", "pool_1"):
        cluster = clusters(config)[name]
        policy = cluster["load_balancing_policy"]["policies"][0]["typed_extension_config"]
        assert policy["name"] == "envoy.load_balancing_policies.override_host"
        override = policy["typed_config"]
        # the pick is read from metadata only: a client cannot send metadata
        assert override["override_host_sources"] == [
            {"metadata": {"key": "envoy.lb", "path": [{"key": "x-gateway-destination-endpoint"}]}}
        ]
        assert override["selected_host_key"]["path"] == [
            {"key": "x-gateway-destination-endpoint-served"}
        ]
        fallback = override["fallback_policy"]["policies"][0]["typed_extension_config"]
        assert fallback["name"] == "envoy.load_balancing_policies.least_request"
        assert cluster["common_lb_config"]["healthy_panic_threshold"] == {"value": 0}
        assert cluster["common_lb_config"]["update_merge_window"] == "0s"
        assert cluster["circuit_breakers"]["thresholds"][0]["max_retries"] >= 1000


def test_pools_are_health_checked_and_eject_failing_endpoints() -> None:
    cluster = clusters(render(options()))["pool_0"]
    check = cluster["health_checks"][0]
    assert check["http_health_check"] == {"path": "/health"}
    assert check["interval"] == check["no_traffic_interval"] == "5.000s"
    assert (check["unhealthy_threshold"], check["healthy_threshold"]) == (2, 1)
    outlier = cluster["outlier_detection"]
    assert outlier["split_external_local_origin_errors"] is True
    assert outlier["consecutive_local_origin_failure"] == 3
    assert outlier["enforcing_consecutive_5xx"] == 0  # an engine's own 500 never ejects it
    off = GatewayConfig.model_validate(
        {"health_check": {"enabled": False}, "eject_after_failures": 0}
    )
    cluster = clusters(render(options(gateway=off)))["pool_0"]
    assert "health_checks" not in cluster and "outlier_detection" not in cluster


def test_shim_cluster_limits_never_make_a_healthy_shim_fail_open() -> None:
    # Each request holds one or two ext_proc streams; at Envoy's default 1,024 concurrent
    # requests per cluster the next stream overflows and, with failure_mode_allow, its request
    # goes on unchecked (bench/common/envoy_stats.py).
    limits = clusters(render(options()))["pointsman_shim"]["circuit_breakers"]["thresholds"]
    assert len(limits) == 1
    for key in ("max_connections", "max_pending_requests", "max_requests"):
        assert limits[0][key] >= 100_000


@pytest.mark.parametrize("retries", [0, 1, 2])
def test_retries_on_transport_failures_only(retries: int) -> None:
    vhost = hcm(render(options(gateway=GatewayConfig(retries=retries))))["route_config"][
        "virtual_hosts"
    ][0]
    if retries == 0:
        assert "retry_policy" not in vhost
        return
    policy = vhost["retry_policy"]
    assert policy["num_retries"] == retries
    assert set(policy["retry_on"].split(",")) == {"connect-failure", "refused-stream", "reset"}
    assert policy["retry_host_predicate"][0]["name"] == (
        "envoy.retry_host_predicates.previous_hosts"
    )


def test_every_local_reply_becomes_openai_json_and_only_envoys_own() -> None:
    config = hcm(render(options()))["local_reply_config"]
    assert "body_format" not in config  # a reply no mapper matches keeps its body (the shim's)
    mappers = config["mappers"]
    assert len(mappers) == len(LOCAL_REPLIES)
    for mapper, reply in zip(mappers, LOCAL_REPLIES, strict=True):
        error = mapper["body_format_override"]["json_format"]["error"]
        assert error == {
            "message": reply.message,
            "type": reply.type,
            "param": None,
            "code": reply.code,
        }
        assert mapper["headers_to_add"][0]["header"] == {
            "key": "x-pointsman-error",
            "value": reply.code,
        }
        matcher = mapper["filter"]
        filters = matcher["and_filter"]["filters"] if "and_filter" in matcher else [matcher]
        cel = filters[0]["extension_filter"]["typed_config"]["expression"]
        assert cel.startswith(ENVOY_MADE)
        if reply.status is not None:
            assert f"response.code == {reply.status}" in cel
        if reply.flags:
            assert filters[1]["response_flag_filter"]["flags"] == list(reply.flags)
    statuses = {r.status for r in LOCAL_REPLIES} | {r.rewrite_status for r in LOCAL_REPLIES}
    assert {404, 405, 413, 431} <= statuses
    assert LOCAL_REPLIES[-1].cel == "response.code >= 500"  # the catch-all comes last


def test_client_routing_headers_removed_before_route_selection() -> None:
    early = hcm(render(options()))["early_header_mutation_extensions"][0]["typed_config"][
        "mutations"
    ]
    removed = {m["remove"] for m in early}
    assert {
        "x-gateway-destination-endpoint",
        "x-selected-model",
        "x-prefiller-host-port",
        # nor does it choose Envoy's retries or timeouts
        "x-envoy-retry-on",
        "x-envoy-max-retries",
        "x-envoy-upstream-rq-timeout-ms",
        "x-envoy-upstream-rq-per-try-timeout-ms",
    } <= removed


@pytest.mark.parametrize(
    ("body_mode", "trailers"), [("BUFFERED", "SKIP"), ("FULL_DUPLEX_STREAMED", "SEND")]
)
@pytest.mark.parametrize("fail_open", [True, False])
def test_ext_proc_modes(body_mode: str, trailers: str, fail_open: bool) -> None:
    f = ext_proc(render(options(body_mode=body_mode, failure_mode_allow=fail_open)))
    mode = f["processing_mode"]
    assert mode["request_header_mode"] == "SEND"
    assert mode["request_body_mode"] == body_mode
    assert mode["request_trailer_mode"] == trailers
    # The decision filter holds nothing on the response path: the observer reads it.
    assert mode["response_header_mode"] == "SKIP"
    assert mode["response_body_mode"] == "NONE"
    assert f["failure_mode_allow"] is fail_open
    assert f["allow_mode_override"] is True
    assert f["message_timeout"] == "2.000s"
    assert set(f["metadata_options"]["receiving_namespaces"]["untyped"]) >= {
        "pointsman",
        "envoy.lb",
    }


def test_observer_filter_never_holds_the_response() -> None:
    filters = hcm(render(options()))["http_filters"]
    names = [f["name"] for f in filters]
    assert names[-1] == "envoy.filters.http.router"
    observer = filters[names.index("pointsman.ext_proc.observe")]["typed_config"]
    assert names.index("pointsman.ext_proc.observe") > names.index("envoy.filters.http.ext_proc")
    assert observer["observability_mode"] is True
    assert observer["failure_mode_allow"] is True
    mode = observer["processing_mode"]
    assert (mode["request_header_mode"], mode["request_body_mode"]) == ("SEND", "NONE")
    assert (mode["response_header_mode"], mode["response_body_mode"]) == ("SEND", "STREAMED")
    assert observer["metadata_options"]["forwarding_namespaces"]["untyped"][0] == "pointsman"


def test_every_reported_header_is_copied_to_the_response_and_dropped_from_clients() -> None:
    rendered = hcm(render(options()))
    added = {
        a["header"]["key"]: a["header"]["value"]
        for a in rendered["route_config"]["virtual_hosts"][0]["response_headers_to_add"]
    }
    for name in REPORTED:
        assert added[name] == f"%REQ({name})%"
    assert "x-pointsman-endpoint" not in added  # the replica's address: off by default
    with_endpoint = hcm(render(options(report_endpoint=True)))["route_config"]
    added = {
        a["header"]["key"]: a["header"]["value"]
        for a in with_endpoint["virtual_hosts"][0]["response_headers_to_add"]
    }
    assert added["x-pointsman-endpoint"] == "%UPSTREAM_REMOTE_ADDRESS%"
    removed = {
        m["remove"]
        for m in rendered["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    }
    assert set(REPORTED) <= removed
    assert "x-pointsman-debug" not in removed and "x-pointsman-priority" not in removed


@pytest.mark.parametrize(
    "variant",
    [
        {"body_mode": "BUFFERED"},
        {"body_mode": "FULL_DUPLEX_STREAMED"},
        {"response_path": "inline"},
        {
            "gateway": GatewayConfig.model_validate(
                {
                    "retries": 0,
                    "health_check": {"enabled": False},
                    "eject_after_failures": 0,
                    "extra_api_routes": [{"path": "/v1/responses/{id}", "methods": ["GET"]}],
                }
            )
        },
        {"pools": {}},
    ],
)
def test_envoy_accepts_the_rendered_config(tmp_path: Path, variant: dict[str, Any]) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_yaml(options(shim_host="127.0.0.1", **variant)))
    result = subprocess.run(
        [binary("envoy"), "--mode", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load(path.read_text())


def test_inline_response_path_has_one_filter_that_sees_the_response() -> None:
    rendered = hcm(render(options(response_path="inline")))
    names = [f["name"] for f in rendered["http_filters"]]
    assert "pointsman.ext_proc.observe" not in names
    mode = ext_proc(render(options(response_path="inline")))["processing_mode"]
    assert (mode["response_header_mode"], mode["response_body_mode"]) == ("SEND", "STREAMED")


def test_every_gateway_key_is_documented_with_its_default() -> None:
    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### `gateway:`", 1)[1].split("\n### ", 1)[0]
    rows = {
        line.split("|")[1].strip().strip("`"): line.split("|")[2].strip().strip("`")
        for line in section.splitlines()
        if line.startswith("| `")
    }
    defaults = GatewayConfig().model_dump()
    flat = {k: v for k, v in defaults.items() if not isinstance(v, dict)}
    flat |= {f"health_check.{k}": v for k, v in defaults["health_check"].items()}
    for key, value in flat.items():
        assert key in rows, f"gateway.{key} is not in the README's gateway table"
        shown = "true" if value is True else "false" if value is False else str(value)
        assert rows[key] == shown, (key, rows[key], value)


def test_default_pool_must_be_a_pool() -> None:
    with pytest.raises(ValueError, match="default pool 'c-model'"):
        render(options(default_pool="c-model"))


def test_ext_proc_over_mutual_tls_to_the_shim() -> None:
    plain = render(options())["static_resources"]["clusters"]
    assert "transport_socket" not in next(c for c in plain if c["name"] == "pointsman_shim")
    tls = ShimTls("/tls/ca.crt", "/tls/envoy.crt", "/tls/envoy.key", sni="shim.example")
    clusters = render(options(shim_tls=tls))["static_resources"]["clusters"]
    socket = next(c for c in clusters if c["name"] == "pointsman_shim")["transport_socket"]
    context = socket["typed_config"]
    common = context["common_tls_context"]
    assert common["alpn_protocols"] == ["h2"]
    assert common["validation_context"]["trusted_ca"] == {"filename": "/tls/ca.crt"}
    assert common["tls_certificates"][0]["private_key"] == {"filename": "/tls/envoy.key"}
    assert context["sni"] == "shim.example"


def test_message_timeout_covers_the_shims_waits() -> None:
    """Envoy must not time out the shim while a request waits in the picker's flow control
    (and, before it, for the classifier)."""
    from pointsman.stack import message_timeout_ms

    assert message_timeout_ms({}) == 2000
    assert message_timeout_ms({"pick_timeout_ms": 200, "queue_wait_ms": 30_000}) == 31_200
    with_classifier = {
        "pick_timeout_ms": 200, "queue_wait_ms": 30_000,
        "classifier": {"enabled": True, "timeout_ms": 2000},
    }  # fmt: skip
    assert message_timeout_ms(with_classifier) == 33_200
    # A long prompt may make the shim wait up to max_timeout_ms for the classifier.
    with_classifier["classifier"] = {"enabled": True}
    assert message_timeout_ms(with_classifier) == 33_200
    with_classifier["classifier"] = {"enabled": True, "timeout_per_kchar_ms": 0}
    assert message_timeout_ms(with_classifier) == 31_350

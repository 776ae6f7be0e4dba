"""The rendered Envoy config: what the routing and the security of the gateway rest on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from pointsman.stack.envoy import EnvoyOptions, render, render_yaml
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


def test_routes_picked_endpoint_first_then_pools_then_default() -> None:
    config = render(options(default_pool="b-model"))
    routes = hcm(config)["route_config"]["virtual_hosts"][0]["routes"]
    assert routes[0]["match"]["headers"][0]["name"] == "x-gateway-destination-endpoint"
    assert routes[0]["route"]["cluster"] == "pointsman_original_dst"
    by_model = {
        r["match"]["headers"][0]["string_match"]["exact"]: r["route"]["cluster"]
        for r in routes[1:-1]
    }
    assert set(by_model) == {"a-model", "b-model"}
    assert routes[-1]["route"]["cluster"] == by_model["b-model"]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    a = clusters[by_model["a-model"]]["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["port_value"] for e in a] == [8000, 8000]
    odst = clusters["pointsman_original_dst"]
    assert odst["original_dst_lb_config"]["http_header_name"] == "x-gateway-destination-endpoint"


def test_client_routing_headers_removed_before_route_selection() -> None:
    early = hcm(render(options()))["early_header_mutation_extensions"][0]["typed_config"][
        "mutations"
    ]
    removed = {m["remove"] for m in early}
    assert {
        "x-gateway-destination-endpoint",
        "x-selected-model",
        "x-prefiller-host-port",
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
    assert added["x-pointsman-endpoint"] == "%UPSTREAM_REMOTE_ADDRESS%"
    removed = {
        m["remove"]
        for m in rendered["early_header_mutation_extensions"][0]["typed_config"]["mutations"]
    }
    assert set(REPORTED) <= removed
    assert "x-pointsman-debug" not in removed and "x-pointsman-priority" not in removed


def test_envoy_accepts_the_rendered_config(tmp_path: Path) -> None:
    for body_mode in ("BUFFERED", "FULL_DUPLEX_STREAMED"):
        path = tmp_path / f"{body_mode}.yaml"
        path.write_text(render_yaml(options(body_mode=body_mode, shim_host="127.0.0.1")))
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

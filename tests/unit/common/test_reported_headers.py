"""The gateway reports exactly the headers the services set: no decision header is lost."""

from __future__ import annotations

import pointsman_classifier.cache.core as cache_core
import pointsman_classifier.core as classifier_core
from pointsman.v1 import headers
from pointsman_shim.core import headers as shim_headers


def _constants(module: object) -> set[str]:
    return {v for k, v in vars(module).items() if k.startswith("H_") and isinstance(v, str)}


def test_every_classifier_header_is_reported() -> None:
    emitted = _constants(classifier_core) | _constants(cache_core)
    debug_request_header = "x-pointsman-debug"  # a client input, never a report
    assert emitted - {debug_request_header} <= set(headers.REPORTED)


def test_the_shims_report_headers_are_reported() -> None:
    for name in (
        shim_headers.SELECTED_MODEL,
        shim_headers.ROUTE,
        shim_headers.ROUTE_CLASSIFIER,
        shim_headers.PREFILLER,
    ):
        assert name in headers.REPORTED
    assert shim_headers.ENDPOINT == headers.ENDPOINT


def test_no_client_input_or_routing_header_is_reported() -> None:
    for name in shim_headers.CLIENT_INPUTS | {shim_headers.DESTINATION, shim_headers.TENANT}:
        assert name not in headers.REPORTED
    assert len(set(headers.REPORTED)) == len(headers.REPORTED)

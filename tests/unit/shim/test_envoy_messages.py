"""The ext_proc message helpers of :mod:`pointsman_shim.envoy` that replace the protobuf
library's own: they must build exactly what it builds."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import struct_pb2

from pointsman_shim import envoy


@pytest.mark.parametrize(
    "data",
    [
        {"request_id": "r1", "endpoints": ["10.0.0.1:8000"], "stream": False, "started": 1.5},
        {"endpoints": [], "nested": {}, "none": None, "count": 3, "yes": True, "no": False},
        {"mixed": [1, "a", None, True, [], {"z": [2.5]}], "deep": {"a": {"b": ["c"]}}},
        {"tuple": ("a", "b"), "unicode": "d\u00e9j\u00e0 \u2192"},
    ],
)
def test_metadata_struct_is_what_protobuf_update_builds(data: dict[str, Any]) -> None:
    expected = struct_pb2.Struct()
    expected.update(data)
    got = envoy.struct(data)
    assert got == expected
    assert got.SerializeToString(deterministic=True) == expected.SerializeToString(
        deterministic=True
    )
    response = envoy.request_body(metadata=data)
    assert response.dynamic_metadata == expected


def test_metadata_of_an_unknown_type_is_refused_as_protobuf_refuses_it() -> None:
    with pytest.raises(ValueError):
        struct_pb2.Struct().update({"x": object()})
    with pytest.raises(ValueError):
        envoy.struct({"x": object()})

"""Every generated nats-server config lets a request body the shim accepts travel in one message.

Issue 12: nats-server's default ``max_payload`` (1 MiB) is below ``shim.max_body_bytes`` (4 MiB);
a body in between raised in the shim and Envoy forwarded it unchecked. The shim now answers 413
for it (tests/integration/shim), and every config Pointsman generates raises the limit.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pointsman import natsauth
from pointsman.stack import credentials
from pointsman_shim.config import ShimConfig
from tests.deploy.helpers import ROOT, render

#: What a classify or pick message adds to the body it carries (fields, headers), generously.
_OVERHEAD = 64 * 1024


def _max_payload(conf: str) -> int:
    found = re.findall(r"^max_payload: (\d+)$", conf, re.M)
    assert len(found) == 1, "exactly one max_payload line, in bytes"
    return int(found[0])


def test_the_limit_is_above_the_largest_body() -> None:
    assert ShimConfig().max_body_bytes + _OVERHEAD <= natsauth.MAX_PAYLOAD


@pytest.mark.parametrize(
    "conf",
    [
        pytest.param(lambda: (ROOT / "deploy" / "compose" / "nats.conf").read_text(), id="compose"),
        pytest.param(
            lambda: next(
                d["data"]["nats.conf"]
                for d in render("base")
                if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "pointsman-nats"
            ),
            id="kubernetes",
        ),
        pytest.param(
            lambda: credentials.nats_server_conf(
                listen="127.0.0.1:4222", store_dir=Path("/tmp/js"), keys=None
            ),
            id="pointsman-up",
        ),
    ],
)
def test_every_generated_config_sets_it(conf: object) -> None:
    text = conf()  # type: ignore[operator]
    assert _max_payload(text) == natsauth.MAX_PAYLOAD

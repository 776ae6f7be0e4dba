"""The ``debug:`` section: whether anyone may see scores, debug headers and replica addresses.

Off by default: the picker's scores, the classifier's ``x-pointsman-debug-*`` headers (the
jailbreak score among them) and the replicas' addresses are an oracle for an attacker (tune a
prompt just below the jailbreak threshold, map the fleet). The shim, the picker and the
classifier each honour ``x-pointsman-debug`` only when ``enabled``; the shim also checks the
tenant and forwards the header to the services only for a tenant it allows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

HEADER = "x-pointsman-debug"
TENANT_HEADER = "x-tenant-id"
_TRUTHY = frozenset({"1", "true", "yes", "on"})


class DebugConfig(BaseModel):
    """Top-level ``debug:`` section, read by the shim, the picker, the classifier and the
    Envoy renderer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Honour ``x-pointsman-debug`` (picker scores, classifier debug headers).
    enabled: bool = False
    #: Only for these tenants: an ``x-tenant-id`` value, or ``sha256:<hex>`` of a request's
    #: ``authorization`` header (the semantic cache's tenant). Empty: every tenant.
    tenants: list[str] = Field(default_factory=list)
    #: Report the replica that served a response (``x-pointsman-endpoint``: its ip:port).
    report_endpoint: bool = False
    #: Report when ``model: auto`` went to another candidate than the classifier's first, and
    #: why (``x-pointsman-model-choice: second; reason=saturated``): off by default, the reason
    #: tells a client how loaded a pool is.
    report_model_choice: bool = False


def requested(headers: Mapping[str, str]) -> bool:
    return headers.get(HEADER, "").strip().lower() in _TRUTHY


def tenants_of(headers: Mapping[str, str]) -> set[str]:
    """The names a request's tenant goes by: its ``x-tenant-id`` and its authorization's hash."""
    out = set()
    tenant = headers.get(TENANT_HEADER)
    if tenant:
        out.add(tenant)
    auth = headers.get("authorization")
    if auth:
        out.add("sha256:" + hashlib.sha256(auth.encode()).hexdigest())
    return out


def allowed(config: DebugConfig, headers: Mapping[str, str]) -> bool:
    """The request asks for debug output and may have it."""
    if not config.enabled or not requested(headers):
        return False
    return not config.tenants or bool(tenants_of(headers) & set(config.tenants))

"""The nats-server ``authorization`` block, generated from the route declarations.

Every service identity (:data:`pointsman.v1.routes.IDENTITIES`) gets exactly the permissions its
routes declare (:attr:`~pointsman.v1.routes.Route.senders` publish, ``receivers`` subscribe and,
on a request-reply route, answer through ``allow_responses``), its own reply inbox, and the
JetStream API subjects of the buckets it writes or reads. Nothing else is allowed: nats-server
denies every subject an allow list does not name. So:

* only the shim publishes classify and pick requests; only classifiers subscribe to classify,
  only pickers to pick; nobody else can read a prompt;
* only collectors publish snapshots and write the metrics bucket; pickers read it;
* a reply reaches the shim only from the identity that got its request (``allow_responses``:
  one answer to a request received), on the shim's own inbox prefix (``_INBOX.shim.``), which no
  other identity may subscribe to or publish on.

The same block serves ``pointsman up`` (public keys written in), docker-compose and Kubernetes
(``$POINTSMAN_<IDENTITY>_NKEY`` variables, which nats-server resolves from its config or its
environment), so the permissions cannot drift from the routes: tests compare every deployed
copy with :func:`render_authorization`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pointsman.v1 import routes, subjects

#: Prefix of every identity's reply inboxes: ``_INBOX.<identity>.<id>``.
INBOX = "_INBOX"

#: ``max_payload`` of every generated nats-server config (``pointsman up``, compose, Kubernetes),
#: in bytes: above ``shim.max_body_bytes`` (4 MiB) plus the message's own fields, so a request
#: body the shim accepts always fits in one classify or pick message (nats-server's default,
#: 1 MiB, did not). The shim answers 413 when a server's limit is smaller.
MAX_PAYLOAD = 8 * 1024 * 1024


def inbox_prefix(identity: str) -> str:
    """The reply inbox prefix of an identity (nats-py's ``inbox_prefix``)."""
    return f"{INBOX}.{identity}"


def variable(identity: str) -> str:
    """The nats-server config variable that holds an identity's public NKey in deployments."""
    return f"POINTSMAN_{identity.upper()}_NKEY"


@dataclass(frozen=True, slots=True)
class Permissions:
    """What one identity may do on the bus."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    #: May answer the requests it receives (``allow_responses``: one reply each).
    responses: bool


def _bucket_subjects(bucket: str, *, write: bool) -> list[str]:
    """JetStream API subjects of one KV bucket: writers create it and put; readers get/watch."""
    stream = f"KV_{bucket}"
    read = [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
    ]
    if write:
        return [f"$KV.{bucket}.>", f"$JS.API.STREAM.CREATE.{stream}", *read]
    return [
        *read,
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def permissions(
    config: Mapping[str, Any] | None = None,
    *,
    declared: Iterable[routes.Route[Any, Any]] = routes.ALL,
    buckets: Iterable[routes.Bucket] = routes.BUCKETS,
) -> dict[str, Permissions]:
    """Each identity's permissions from the route and bucket declarations.

    ``config`` is the whole Pointsman config: the two subjects an operator may rename
    (``collector.sharding.subject``, ``collector.latest.bucket``) are taken from it.
    """
    collector = (config or {}).get("collector") or {}
    heartbeat = (collector.get("sharding") or {}).get("subject")
    bucket_name = (collector.get("latest") or {}).get("bucket")
    pub: dict[str, list[str]] = {i: [] for i in routes.IDENTITIES}
    sub: dict[str, list[str]] = {i: [inbox_prefix(i) + ".>"] for i in routes.IDENTITIES}
    answers: set[str] = set()
    for route in declared:
        subject = route.subject
        if heartbeat and route.subject == subjects.COLLECTOR_HEARTBEAT:
            subject = str(heartbeat)
        for identity in route.senders:
            pub[identity].append(subject)
        for identity in route.receivers:
            sub[identity].append(subject)
            if route.reply is not None:
                answers.add(identity)
    for bucket in buckets:
        name = bucket.name
        if bucket_name and name == subjects.METRICS_BUCKET:
            name = str(bucket_name)
        for identity in bucket.writers:
            pub[identity] += _bucket_subjects(name, write=True)
        for identity in bucket.readers:
            pub[identity] += _bucket_subjects(name, write=False)
    return {
        i: Permissions(tuple(dict.fromkeys(pub[i])), tuple(dict.fromkeys(sub[i])), i in answers)
        for i in routes.IDENTITIES
    }


def authorization(
    keys: Mapping[str, Iterable[str]], config: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The ``authorization`` block as data: one user per public NKey, with its identity's
    permissions. ``keys`` maps an identity to its public NKeys (``U...``; two during a
    rotation) or to ``$VARIABLE`` references."""
    perms = permissions(config)
    users = []
    for identity in routes.IDENTITIES:
        p = perms[identity]
        entry: dict[str, Any] = {
            "publish": {"allow": list(p.publish)},
            "subscribe": {"allow": list(p.subscribe)},
        }
        if p.responses:
            entry["allow_responses"] = True
        for key in keys.get(identity, ()):
            users.append({"nkey": key, "permissions": entry})
    return {"users": users}


def _value(value: Any, indent: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        if value.startswith("$") and value[1:].replace("_", "").isalnum():
            return value  # a variable reference: unquoted, as nats-server reads them
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        inner = indent + "  "
        return "[\n" + "".join(f"{inner}{_value(v, inner)}\n" for v in value) + indent + "]"
    if isinstance(value, dict):
        inner = indent + "  "
        body = "".join(f"{inner}{k}: {_value(v, inner)}\n" for k, v in value.items())
        return "{\n" + body + indent + "}"
    return str(value)


def render_conf(block: Mapping[str, Any]) -> str:
    """nats-server config text of top-level ``block`` entries (``authorization``, ``tls``...)."""
    return "".join(f"{k}: {_value(v, '')}\n" for k, v in block.items())


def render_authorization(config: Mapping[str, Any] | None = None) -> str:
    """The ``authorization`` block of the deployments: each identity's key is the variable
    :func:`variable` names (set in the environment, or defined in an included file)."""
    keys = {i: [f"${variable(i)}"] for i in routes.IDENTITIES}
    return render_conf({"authorization": authorization(keys, config)})

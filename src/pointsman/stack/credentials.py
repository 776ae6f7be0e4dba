"""Credentials a Pointsman deployment needs, generated where it starts: one NATS NKey per service
identity, the nats-server ``authorization`` that lists their public keys, a Redis password, and
(for ``pointsman up --nats-tls``) a throwaway CA with a server certificate.

Nothing here is a default secret: every run generates its own. Secret files are written with
mode 0600 (the directory 0700); the nats-server config holds only public keys.

``pointsman up`` calls :func:`generate` in its run directory. The deployments use the command:

    python -m pointsman.stack.credentials kubernetes [--namespace pointsman] > secrets.yaml
    python -m pointsman.stack.credentials compose --out DIR

``kubernetes`` prints the Secrets the manifests mount (one NKey seed per service, the public keys
for nats-server's environment, the Redis passwords and ACL file, a NATS TLS certificate from a
new CA unless ``--no-tls``); ``compose`` writes the same into the directories the compose
stack's ``credentials`` service shares with each container. docs/security.md says how to rotate
them.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import ipaddress
import os
import secrets
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pointsman import natsauth
from pointsman.v1.routes import IDENTITIES, PICKER, SHIM

#: The services that talk to Redis, each with its own ACL user (``--redis-users``).
REDIS_USERS: tuple[str, ...] = ("picker", "classifier", SHIM)
#: Key patterns and channels each Redis user may touch (``key_prefix`` defaults of the services).
REDIS_KEYS = {
    PICKER: ("~pointsman:picker:*", "&pointsman:picker:*"),
    "classifier": ("~pointsman:cache:*", "~pointsman:session:*", "&pointsman:cache:*"),
    SHIM: ("~pointsman:shim:*", "&pointsman:shim:*"),
}


@dataclass(frozen=True, slots=True)
class Identity:
    """One service's NATS identity: its seed file (secret) and public key (for the server)."""

    name: str
    seed_file: Path
    public_key: str


@dataclass(frozen=True, slots=True)
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path


def write_secret(path: Path, data: str | bytes) -> Path:
    """Write a file only its owner can read (0600), in a directory only its owner can enter."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)
    os.chmod(path, 0o600)  # an existing file keeps its mode through O_CREAT
    return path


def nkey_pair() -> tuple[str, str]:
    """A new user NKey: (seed ``SU...``, public key ``U...``)."""
    import nkeys

    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(seed).public_key.decode()
    return seed.decode(), public


def generate(directory: Path, identities: Iterable[str] = IDENTITIES) -> dict[str, Identity]:
    """One NKey per identity, its seed in ``<directory>/<identity>.seed`` (0600)."""
    out = {}
    for name in identities:
        seed, public = nkey_pair()
        out[name] = Identity(name, write_secret(directory / f"{name}.seed", seed + "\n"), public)
    return out


def password() -> str:
    """A random password (Redis): 32 bytes, URL-safe."""
    return secrets.token_urlsafe(32)


def redis_acl(passwords: dict[str, str]) -> str:
    """A Redis ACL file: the default user off, one user per service, each limited to its own
    keys and channels; passwords stored as SHA-256 only."""
    lines = ["user default off"]
    for user, secret in passwords.items():
        digest = hashlib.sha256(secret.encode()).hexdigest()
        keys = " ".join(REDIS_KEYS.get(user, ()))
        lines.append(f"user {user} on #{digest} resetchannels {keys} +@all -@dangerous +info")
    return "\n".join(lines) + "\n"


def redis_default_acl(secret: str) -> str:
    """A Redis ACL file for one local stack: the default user needs ``secret`` (stored as its
    SHA-256 only), with every command but the dangerous ones."""
    digest = hashlib.sha256(secret.encode()).hexdigest()
    return f"user default on #{digest} ~* &* +@all -@dangerous +info\n"


def throwaway_ca(directory: Path, hosts: Sequence[str], days: int = 30) -> TlsFiles:
    """A new CA and a server certificate for ``hosts`` (names or IPs) signed by it, written to
    ``ca.crt``, ``tls.crt`` and ``tls.key`` (0600). The CA's key is never written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pointsman throwaway CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = directory / "ca.crt"
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file = directory / "tls.crt"
    cert_file.write_bytes(cert.public_bytes(pem))
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return TlsFiles(ca_file, cert_file, write_secret(directory / "tls.key", key_pem))


def nats_server_conf(
    *,
    listen: str,
    store_dir: Path,
    keys: dict[str, list[str]] | None,
    config: dict[str, Any] | None = None,
    tls: TlsFiles | None = None,
) -> str:
    """A single nats-server's config: JetStream, ``max_payload``, the authorization (``keys``:
    identity -> public NKeys; ``None``: an open bus), TLS when given."""
    block: dict[str, Any] = {
        "listen": listen,
        "max_payload": natsauth.MAX_PAYLOAD,
        "jetstream": {"store_dir": str(store_dir)},
    }
    if keys is not None:
        block["authorization"] = natsauth.authorization(keys, config)
    if tls is not None:
        block["tls"] = {
            "cert_file": str(tls.cert_file),
            "key_file": str(tls.key_file),
            "ca_file": str(tls.ca_file),
        }
    return natsauth.render_conf(block)


# -- the deployments' secrets --------------------------------------------------------------------


def _secret(name: str, namespace: str, data: dict[str, str | bytes]) -> dict[str, Any]:
    encoded = {
        k: base64.b64encode(v.encode() if isinstance(v, str) else v).decode()
        for k, v in data.items()
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"app.kubernetes.io/part-of": "pointsman"},
        },
        "type": "Opaque",
        "data": encoded,
    }


def kubernetes_secrets(namespace: str, *, tls: bool = True) -> list[dict[str, Any]]:
    """The Secrets the Kubernetes manifests mount (see deploy/kubernetes/base)."""
    out = []
    users: dict[str, str] = {}
    for identity in IDENTITIES:
        seed, public = nkey_pair()
        users[natsauth.variable(identity)] = public
        out.append(_secret(f"pointsman-nats-{identity}", namespace, {"nkey.seed": seed + "\n"}))
    out.append(_secret("pointsman-nats-users", namespace, dict(users)))
    passwords = {user: password() for user in REDIS_USERS}
    out.append(_secret("pointsman-redis-acl", namespace, {"users.acl": redis_acl(passwords)}))
    for user, secret in passwords.items():
        out.append(
            _secret(f"pointsman-redis-{user}", namespace, {"username": user, "password": secret})
        )
    if tls:
        import tempfile

        hosts = [
            "pointsman-nats",
            f"pointsman-nats.{namespace}.svc",
            f"*.pointsman-nats-headless.{namespace}.svc",
            "*.pointsman-nats-headless",
        ]
        with tempfile.TemporaryDirectory() as tmp:
            files = throwaway_ca(Path(tmp), hosts, days=365)
            data: dict[str, str | bytes] = {
                "ca.crt": files.ca_file.read_bytes(),
                "tls.crt": files.cert_file.read_bytes(),
                "tls.key": files.key_file.read_bytes(),
            }
        out.append(_secret("pointsman-nats-tls", namespace, data))
    return out


def compose_credentials(out: Path) -> None:
    """What the compose stack's ``credentials`` service writes, one directory per volume:
    ``nats/users.conf`` (the public keys as config variables), ``<identity>/nkey.seed``, and
    ``redis/users.acl`` with ``<user>/redis-password``. Credentials already there are kept
    (every ``up`` runs it; a restarted nats-server must find the keys its clients hold): remove
    the volumes (``docker compose down -v``) to make new ones."""
    if (out / "nats" / "users.conf").exists():
        return
    lines = []
    for identity in IDENTITIES:
        seed, public = nkey_pair()
        write_secret(out / identity / "nkey.seed", seed + "\n")
        lines.append(f'{natsauth.variable(identity)}: "{public}"')
    (out / "nats").mkdir(parents=True, exist_ok=True)
    (out / "nats" / "users.conf").write_text("\n".join(lines) + "\n")
    passwords = {user: password() for user in REDIS_USERS}
    write_secret(out / "redis" / "users.acl", redis_acl(passwords))
    for user, secret in passwords.items():
        write_secret(out / user / "redis-password", secret + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m pointsman.stack.credentials",
        description="Generate a deployment's credentials (NATS NKeys, Redis passwords, TLS).",
    )
    sub = p.add_subparsers(dest="target", required=True)
    k = sub.add_parser("kubernetes", help="print the Secrets of deploy/kubernetes as YAML")
    k.add_argument("--namespace", default="pointsman")
    k.add_argument(
        "--no-tls", action="store_true", help="no NATS TLS Secret (cert-manager makes it)"
    )
    c = sub.add_parser("compose", help="write the compose stack's credential volumes")
    c.add_argument("--out", type=Path, required=True)
    c.add_argument(
        "--service-uid", type=int, default=None, help="owner of the services' files (10001)"
    )
    c.add_argument("--redis-uid", type=int, default=None, help="owner of redis/ (999)")
    args = p.parse_args(argv)
    if args.target == "kubernetes":
        docs = kubernetes_secrets(args.namespace, tls=not args.no_tls)
        sys.stdout.write(yaml.safe_dump_all(docs, sort_keys=False))
        return 0
    compose_credentials(args.out)
    for path in args.out.rglob("*"):
        owner = args.redis_uid if path.relative_to(args.out).parts[0] == "redis" else None
        if path.relative_to(args.out).parts[0] not in {"redis", "nats"}:
            owner = args.service_uid
        if owner is not None:
            os.chown(path, owner, owner)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A real nats-server with the authorization Pointsman generates, and its identities' seeds."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pointsman.bus import NatsConfig
from pointsman.stack import credentials
from tests.helpers import procs


@dataclass
class SecureNats:
    url: str
    identities: dict[str, credentials.Identity]
    tls: credentials.TlsFiles | None = None

    def config(self, identity: str | None) -> NatsConfig:
        """The ``nats:`` section a service of ``identity`` would have (``None``: no credential)."""
        section: dict[str, object] = {"url": self.url}
        if identity is not None:
            section["nkey_seed_file"] = str(self.identities[identity].seed_file)
        if self.tls is not None:
            section["tls"] = {"ca_file": str(self.tls.ca_file)}
        return NatsConfig.model_validate(section)

    def connect_options(self, identity: str | None) -> dict[str, object]:
        return self.config(identity).connect_options(identity)


@contextlib.contextmanager
def secure_nats(tls: bool = False) -> Iterator[SecureNats]:
    workdir = Path(tempfile.mkdtemp(prefix="pointsman-secure-nats-"))
    port = procs.free_port()
    identities = credentials.generate(workdir / "credentials")
    files = credentials.throwaway_ca(workdir / "tls", ["127.0.0.1"]) if tls else None
    conf = workdir / "nats.conf"
    conf.write_text(
        credentials.nats_server_conf(
            listen=f"127.0.0.1:{port}",
            store_dir=workdir / "js",
            keys={name: [i.public_key] for name, i in identities.items()},
            tls=files,
        )
    )
    proc = procs.spawn("nats-server", [procs.binary("nats-server"), "-c", str(conf)], workdir)
    try:
        procs.wait_until(lambda: procs.port_open(port), 15, "nats-server", proc)
        scheme = "tls" if tls else "nats"
        yield SecureNats(f"{scheme}://127.0.0.1:{port}", identities, files)
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.fixture(scope="package")
def secured() -> Iterator[SecureNats]:
    with secure_nats() as server:
        yield server

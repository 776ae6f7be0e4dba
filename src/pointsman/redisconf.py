"""The ``redis:`` section: how every Redis client of a Pointsman process authenticates and
encrypts (the picker's shared state, the classifier's semantic cache, any later one).

The URL stays with the feature that uses Redis (``picker.shared_state.redis_url``,
``classifier.cache.redis_url``); who the process is and how it proves it live here, once, so
each service's container sets its own: ``$POINTSMAN_REDIS_USERNAME`` and
``$POINTSMAN_REDIS_PASSWORD_FILE`` win over the keys. The password is read from a file (a
mounted Secret), never from the shared config file. Files are checked at start-up, naming the key.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

ENV = {"username": "POINTSMAN_REDIS_USERNAME", "password_file": "POINTSMAN_REDIS_PASSWORD_FILE"}


class RedisBacked(BaseModel):
    """The keys of every config section whose feature keeps its state in Redis (the
    classifier's cache and sessions, the shim's Responses state): where that Redis is, and how
    long the feature waits on it (:class:`pointsman.redisstore.RestingRedis`)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Deadline of one Redis call; a slower Redis counts as down.
    redis_timeout_ms: float = Field(default=50.0, gt=0)
    #: After a Redis failure, the feature skips Redis this long before it is tried again, so
    #: that requests do not each wait for the deadline.
    redis_retry_s: float = Field(default=1.0, ge=0)


class RedisTls(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: CA bundle that signed the server's certificate; set = TLS on (also for ``redis://`` URLs).
    ca_file: str | None = None
    #: Client certificate and key, for a server with ``tls-auth-clients yes``.
    cert_file: str | None = None
    key_file: str | None = None


class RedisSecurity(BaseModel):
    """Top-level ``redis:`` section."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ACL user (Redis 6+); none = the ``default`` user.
    username: str | None = None
    #: File holding the password (AUTH); none = no AUTH.
    password_file: str | None = None
    tls: RedisTls = Field(default_factory=RedisTls)

    def password(self) -> str | None:
        if self.password_file is None:
            return None
        return Path(self.password_file).read_text(encoding="utf-8").strip()

    def client(self, url: str, **options: Any) -> Any:
        """A ``redis.asyncio.Redis`` for ``url`` with this identity and TLS (``rediss://`` when
        TLS is on); ``options`` go to the client (timeouts)."""
        import redis.asyncio as aioredis

        if self.username is not None:
            options["username"] = self.username
        password = self.password()
        if password is not None:
            options["password"] = password
        if self.tls.ca_file is not None or url.startswith("rediss://"):
            url = "rediss://" + url.split("://", 1)[1]
            options["ssl_cert_reqs"] = "required"
            if self.tls.ca_file:
                options["ssl_ca_certs"] = self.tls.ca_file
            if self.tls.cert_file:
                options["ssl_certfile"] = self.tls.cert_file
                options["ssl_keyfile"] = self.tls.key_file
        return aioredis.Redis.from_url(url, **options)


def security(data: Mapping[str, Any]) -> RedisSecurity:
    """The ``redis:`` section of a whole config, with the environment applied; raises
    ``ConfigError`` on a file that cannot be read."""
    from pointsman import configfile

    cfg = configfile.section(dict(data), "redis", RedisSecurity)
    update = {key: os.environ[env] for key, env in ENV.items() if os.environ.get(env)}
    if update:
        cfg = cfg.model_copy(update=update)
    files = {
        f"redis.password_file (or ${ENV['password_file']})": cfg.password_file,
        "redis.tls.ca_file": cfg.tls.ca_file,
        "redis.tls.cert_file": cfg.tls.cert_file,
        "redis.tls.key_file": cfg.tls.key_file,
    }
    for key, path in files.items():
        if path is not None and not os.access(path, os.R_OK):
            raise configfile.ConfigError(f"{key}: cannot read {path}")
    return cfg

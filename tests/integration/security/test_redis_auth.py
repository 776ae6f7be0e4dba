"""Redis with the generated ACL: each service's user reaches only its own keys, with its password."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

from pointsman import configfile
from pointsman.redisconf import RedisSecurity, security
from pointsman.stack import credentials
from tests.helpers import procs
from tests.helpers.procs import redis_server_binary

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def acl_redis() -> Iterator[tuple[str, dict[str, Path]]]:
    workdir = Path(tempfile.mkdtemp(prefix="pointsman-redis-acl-"))
    passwords = {user: credentials.password() for user in credentials.REDIS_USERS}
    acl = credentials.write_secret(workdir / "users.acl", credentials.redis_acl(passwords))
    files = {
        user: credentials.write_secret(workdir / f"{user}.password", secret)
        for user, secret in passwords.items()
    }
    port = procs.free_port()
    argv = [redis_server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", ""]
    proc = procs.spawn("redis-acl", [*argv, "--aclfile", str(acl), "--dir", str(workdir)], workdir)
    try:
        procs.wait_until(lambda: procs.port_open(port), 15, "redis-server", proc)
        yield f"redis://127.0.0.1:{port}/0", files
    finally:
        proc.stop()
        shutil.rmtree(workdir, ignore_errors=True)


async def test_each_user_reaches_only_its_own_keys(
    acl_redis: tuple[str, dict[str, Path]],
) -> None:
    url, files = acl_redis
    picker = RedisSecurity(username="picker", password_file=str(files["picker"])).client(url)
    classifier = RedisSecurity(
        username="classifier", password_file=str(files["classifier"])
    ).client(url)
    try:
        await picker.set("pointsman:picker:prefix:x", b"1")
        await classifier.set("pointsman:cache:e:1", b"answer")
        with pytest.raises(NoPermissionError):
            await picker.get("pointsman:cache:e:1")  # the cached answers are the classifier's
        with pytest.raises(NoPermissionError):
            await classifier.publish("pointsman:picker:sync", b"forged")
        with pytest.raises(NoPermissionError):
            await picker.execute_command("FLUSHALL")
        assert await picker.publish("pointsman:picker:sync", b"ok") == 0
    finally:
        await picker.aclose()
        await classifier.aclose()


async def test_no_password_or_a_wrong_one_is_refused(
    acl_redis: tuple[str, dict[str, Path]], tmp_path: Path
) -> None:
    url, _ = acl_redis
    anonymous = RedisSecurity().client(url)
    wrong = tmp_path / "wrong"
    wrong.write_text("nope")
    guesser = RedisSecurity(username="picker", password_file=str(wrong)).client(url)
    try:
        with pytest.raises((AuthenticationError, ResponseError, NoPermissionError)):
            await anonymous.get("pointsman:picker:prefix:x")
        with pytest.raises((AuthenticationError, ResponseError)):
            await guesser.ping()
    finally:
        await anonymous.aclose()
        await guesser.aclose()


def test_the_section_names_an_unreadable_password_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("POINTSMAN_REDIS_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(configfile.ConfigError, match="POINTSMAN_REDIS_PASSWORD_FILE"):
        security({})
    monkeypatch.setenv("POINTSMAN_REDIS_USERNAME", "picker")
    monkeypatch.delenv("POINTSMAN_REDIS_PASSWORD_FILE")
    assert security({"redis": {"username": "x"}}).username == "picker"

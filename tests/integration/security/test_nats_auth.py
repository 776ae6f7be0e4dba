"""The generated NATS authorization on a real nats-server: who may connect, read and write what.

Every client here connects with a real identity's NKey seed the way a service does
(``NatsConfig.connect_options``), or with none; the permissions are the ones
:mod:`pointsman.natsauth` derives from the route declarations.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import nats.errors
import pytest
import yaml

from pointsman.stack import credentials
from pointsman.v1 import PickReply, PickRequest, PickStatus, routes
from pointsman.v1.classify import ClassifyRequest
from pointsman_shim.bus import Bus
from tests.helpers import procs
from tests.integration.security.conftest import SecureNats, secure_nats

pytestmark = pytest.mark.integration


async def connect(server: SecureNats, identity: str | None, **extra: Any) -> Any:
    """A raw nats-py client of ``identity``; its asynchronous errors land in ``client.errors``."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    options = {**server.connect_options(identity), "error_cb": on_error, **extra}
    nc = await nats.connect(**options)
    nc.errors = errors  # type: ignore[attr-defined]
    return nc


async def until(check: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.02)


def violations(nc: Any) -> list[str]:
    return [str(e) for e in nc.errors if "permissions violation" in str(e).lower()]


async def test_a_client_without_credentials_is_refused(secured: SecureNats) -> None:
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            secured.url, allow_reconnect=False, max_reconnect_attempts=0, connect_timeout=5
        )


async def test_an_unknown_nkey_is_refused(secured: SecureNats, tmp_path: Path) -> None:
    stranger = credentials.generate(tmp_path, ["stranger"])["stranger"]
    with pytest.raises(Exception, match=r"(?i)authorization"):
        await nats.connect(
            secured.url,
            nkeys_seed=str(stranger.seed_file),
            allow_reconnect=False,
            max_reconnect_attempts=0,
            connect_timeout=5,
        )


async def _published_reaches(
    server: SecureNats, subject: str, sender: str, receiver: str, payload: bytes = b"{}"
) -> tuple[bool, Any]:
    """Does a message ``sender`` publishes on ``subject`` reach ``receiver``'s subscription?"""
    rx = await connect(server, receiver)
    tx = await connect(server, sender)
    got: list[bytes] = []
    try:

        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        await rx.subscribe(subject, cb=on_msg)
        await rx.flush()
        await tx.publish(subject, payload)
        await tx.flush()
        await rx.flush()
        # Wait on an outcome, not a fixed time: the message arrives, or the server refuses the
        # publish (or the subscription); after a refusal the server has handled the PUB, so a
        # last round trip on the receiver lets anything it did deliver arrive first.
        # 60 s: the loop ends as soon as either happens, so only a broken check waits it out (10 s
        # was missed once by an allowed publish during a whole-suite run on a loaded 2-core VM).
        deadline = asyncio.get_running_loop().time() + 60.0
        while not (got or violations(tx) or violations(rx)):
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
        await rx.flush()
        return bool(got), tx
    finally:
        await rx.close()
        await tx.close()


async def test_the_picker_cannot_read_classify_requests(secured: SecureNats) -> None:
    picker = await connect(secured, routes.PICKER)
    shim = await connect(secured, routes.SHIM)
    got: list[bytes] = []
    try:

        async def on_msg(msg: Any) -> None:
            got.append(msg.data)

        await picker.subscribe(routes.CLASSIFY.subject, cb=on_msg)
        await picker.subscribe(">", cb=on_msg)
        await picker.flush()
        await until(lambda: len(violations(picker)) >= 2, "the server refuses both subscriptions")
        request = ClassifyRequest(request_id="r1", model="auto", prompt="4111 1111 1111 1111")
        await shim.publish(routes.CLASSIFY.subject, routes.CLASSIFY.encode(request))
        await shim.flush()
        await asyncio.sleep(0.3)
        assert got == []
        assert violations(shim) == []
    finally:
        await picker.close()
        await shim.close()


async def test_only_the_shim_sends_pick_requests(secured: SecureNats) -> None:
    """A pick request from the picker's (or the classifier's) identity never reaches a picker;
    the shim's does."""
    for sender in (routes.PICKER, routes.CLASSIFIER, routes.COLLECTOR):
        reached, tx = await _published_reaches(secured, routes.PICK.subject, sender, "picker")
        assert not reached, sender
        assert violations(tx), sender
    reached, tx = await _published_reaches(secured, routes.PICK.subject, "shim", "picker")
    assert reached and violations(tx) == []


async def test_only_collectors_publish_snapshots(secured: SecureNats) -> None:
    subject = "pointsman.v1.metrics.alpha"
    for sender in (routes.SHIM, routes.PICKER, routes.CLASSIFIER):
        reached, _ = await _published_reaches(secured, subject, sender, routes.SHIM)
        assert not reached, sender
    reached, _ = await _published_reaches(secured, subject, routes.COLLECTOR, routes.SHIM)
    assert reached


async def test_a_forged_pick_reply_never_reaches_the_shim(secured: SecureNats) -> None:
    """Another identity that learns the shim's reply subject can neither publish on it nor
    subscribe to the shim's inbox; the real picker's answer is the one the shim gets."""
    forgers = {
        name: await connect(secured, name)
        for name in (routes.CLASSIFIER, routes.COLLECTOR, routes.PICKER)
    }
    picker = await connect(secured, routes.PICKER)
    shim = Bus(secured.config(routes.SHIM))
    forged = PickReply(status=PickStatus.OK, endpoints=["10.66.6.6:8000"])
    real = PickReply(status=PickStatus.OK, endpoints=["127.0.0.1:8000"], picker="real")
    try:
        spies: list[bytes] = []
        for forger in forgers.values():

            async def spy(msg: Any) -> None:
                spies.append(msg.data)

            await forger.subscribe("_INBOX.shim.>", cb=spy)

        async def answer(msg: Any) -> None:
            # Every other identity tries to answer first, on the very reply subject.
            for forger in forgers.values():
                await forger.publish(msg.reply, routes.PICK.encode(forged))
                await forger.flush()
            await asyncio.sleep(0.2)
            await msg.respond(routes.PICK.encode(real))

        await picker.subscribe(routes.PICK.subject, queue=routes.PICK.queue, cb=answer)
        await picker.flush()
        assert await shim.start()
        reply = await shim.pick(PickRequest(request_id="r", model="alpha"), timeout=5)
        assert reply.endpoints == real.endpoints and reply.picker == "real"
        assert spies == []
        for name, forger in forgers.items():
            assert violations(forger), name
    finally:
        await shim.close()
        await picker.close()
        for forger in forgers.values():
            await forger.close()


async def test_the_metrics_bucket_is_written_by_collectors_and_read_by_pickers(
    secured: SecureNats,
) -> None:
    collector = await connect(secured, routes.COLLECTOR)
    picker = await connect(secured, routes.PICKER)
    shim = await connect(secured, routes.SHIM)
    bucket = routes.METRICS_BUCKET.name
    try:
        kv = await collector.jetstream().create_key_value(bucket=bucket, history=1)
        await kv.put("alpha.c1", b"snapshot")
        read = await picker.jetstream().key_value(bucket)
        assert (await read.get("alpha.c1")).value == b"snapshot"
        watcher = await read.watchall()
        entry = await watcher.updates(timeout=5)
        assert entry is not None and entry.key == "alpha.c1"
        await watcher.stop()
        with pytest.raises(Exception):  # noqa: B017  (the server's denial, as nats-py reports it)
            await (await shim.jetstream().key_value(bucket)).get("alpha.c1")
        with pytest.raises(Exception):  # noqa: B017
            await (await picker.jetstream().key_value(bucket)).put("alpha.c1", b"forged")
    finally:
        for nc in (collector, picker, shim):
            await nc.close()


async def test_nats_over_tls_with_a_throwaway_ca() -> None:
    with secure_nats(tls=True) as server:
        shim = Bus(server.config(routes.SHIM))
        picker = await connect(server, routes.PICKER)
        try:

            async def answer(msg: Any) -> None:
                await msg.respond(routes.PICK.encode(PickReply(status=PickStatus.OK)))

            await picker.subscribe(routes.PICK.subject, cb=answer)
            await picker.flush()
            assert await shim.start()
            reply = await shim.pick(PickRequest(request_id="r", model="m"), timeout=5)
            assert reply.status is PickStatus.OK
        finally:
            await shim.close()
            await picker.close()
        with pytest.raises(Exception):  # noqa: B017  a client that does not trust the CA
            await nats.connect(
                server.url,
                nkeys_seed=str(server.identities["picker"].seed_file),
                allow_reconnect=False,
                max_reconnect_attempts=0,
                connect_timeout=5,
            )


# -- a service with a missing or wrong credential ends, saying which -----------------------------


def _run_picker(tmp_path: Path, nats_section: dict[str, Any], env: dict[str, str]) -> Any:
    cfg = tmp_path / "pointsman.yaml"
    port = procs.free_port()
    cfg.write_text(
        yaml.safe_dump(
            {"nats": nats_section, "picker": {"http_host": "127.0.0.1", "http_port": port}}
        )
    )
    proc = procs.spawn(
        "picker",
        [sys.executable, "-m", "pointsman_picker", "--config", str(cfg)],
        tmp_path,
        env=env,
    )
    try:
        proc.popen.wait(60)
    finally:
        proc.stop()
    return proc.popen.returncode, proc.tail()


@pytest.mark.parametrize("case", ["missing", "not-a-seed", "unknown", "none"])
def test_a_service_with_a_bad_credential_exits_naming_it(
    secured: SecureNats, tmp_path: Path, case: str
) -> None:
    env = {"NATS_NKEY_SEED_FILE": ""}
    seed = tmp_path / "picker.seed"
    if case == "missing":
        env["NATS_NKEY_SEED_FILE"] = str(seed)
    elif case == "not-a-seed":
        seed.write_text("hunter2\n")
        env["NATS_NKEY_SEED_FILE"] = str(seed)
    elif case == "unknown":
        env["NATS_NKEY_SEED_FILE"] = str(credentials.generate(tmp_path, ["x"])["x"].seed_file)
    code, output = _run_picker(tmp_path, {"url": secured.url}, env)
    assert code == 2, output
    assert "Traceback" not in output
    if case == "none":
        assert "no credential" in output and "NATS_NKEY_SEED_FILE" in output, output
    else:
        assert "nats.nkey_seed_file" in output and "NATS_NKEY_SEED_FILE" in output, output
        assert (str(seed) if case != "unknown" else ".seed") in output, output

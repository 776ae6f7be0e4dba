"""The picker's bus handlers behind their FastStream subscribers, on the in-memory broker.

The subscribers are the app's own (``PickerApp`` declares them on the shared ``ServiceBus`` from
the routes of ``pointsman.v1.routes``); ``TestNatsBroker`` delivers the messages without a
server. The real-server tests are in tests/integration/picker.
"""

from __future__ import annotations

from faststream.nats import TestNatsBroker
from prometheus_client import generate_latest

from pointsman.bus import NatsConfig
from pointsman.v1 import (
    CompletionEvent,
    ModelsRequest,
    PickRequest,
    PickStatus,
    routes,
    subjects,
)
from pointsman_picker.app import PickerApp
from pointsman_picker.config import PickerConfig
from tests.helpers.snapshots import snapshot


def picker_app() -> PickerApp:
    app = PickerApp(PickerConfig(replica_id="t1"), NatsConfig())
    # The app joins the pick queue group after its first snapshot; here at once.
    app.bus.subscriber(routes.PICK)(app.handlers.pick)
    app.bus.subscriber(routes.MODELS)(app.handlers.models)
    return app


async def test_snapshot_pick_models_and_completion() -> None:
    app = picker_app()
    async with TestNatsBroker(app.bus.broker) as broker:
        snap = snapshot("m", **{"a-1": 4, "b-2": 0})
        await broker.publish(routes.SNAPSHOTS.encode(snap), subjects.metrics("m"))

        req = PickRequest(request_id="r1", model="m")
        msg = await broker.request(routes.PICK.encode(req), routes.PICK.subject)
        reply = routes.PICK.decode_reply(msg.body)
        assert reply.status is PickStatus.OK
        assert (reply.endpoints[0], reply.picker) == ("b:2", "t1")
        assert len(app.scheduler.in_flight) == 1

        msg = await broker.request(routes.MODELS.encode(ModelsRequest()), routes.MODELS.subject)
        assert [p.name for p in routes.MODELS.decode_reply(msg.body).pools] == ["m"]

        done = CompletionEvent(
            request_id="r1", model="m", endpoint="b:2", status_code=200, stream=False
        )
        await broker.publish(routes.COMPLETIONS.encode(done), routes.COMPLETIONS.subject)
        assert len(app.scheduler.in_flight) == 0


async def test_bad_messages_are_answered_or_counted_never_raised() -> None:
    app = picker_app()
    async with TestNatsBroker(app.bus.broker) as broker:
        msg = await broker.request(b"{not json", routes.PICK.subject)
        reply = routes.PICK.decode_reply(msg.body)
        assert reply.status is PickStatus.NO_ENDPOINTS
        assert reply.reason is not None and reply.reason.startswith("invalid pick request")

        await broker.publish(b'{"pool": 1}', subjects.metrics("m"))
        await broker.publish(b"", routes.COMPLETIONS.subject)
        # an empty body is an empty ModelsRequest, as the shim may send it
        msg = await broker.request(b"", routes.MODELS.subject)
        assert routes.MODELS.decode_reply(msg.body).pools == []
    text = generate_latest(app.telemetry.registry).decode()
    for subject in (routes.PICK.subject, routes.SNAPSHOTS.subject, routes.COMPLETIONS.subject):
        assert f'pointsman_picker_bad_messages_total{{subject="{subject}"}} 1.0' in text
    assert routes.MODELS.subject not in text

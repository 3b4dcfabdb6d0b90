"""An Intake that does not announce (the one of an intake process, whose relay announces
what it commits for it) stores the same message and publishes nothing of its own."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from zonemta.conf import config_from_dict
from zonemta.engine.bus import Event, EventBus
from zonemta.engine.ids import QueueIdGenerator
from zonemta.engine.intake.reception import Envelope, Intake
from zonemta.engine.intake.routing import Router
from zonemta.store import MessageRecord
from zonemta.store.sqlite import open_sqlite_store

BODY = b"line of body\r\n" * 50


@pytest.mark.parametrize("announces", [True, False])
async def test_announcing_is_all_that_changes(tmp_path: Path, announces: bool) -> None:
    events: list[Event] = []
    stored: list[tuple[MessageRecord, bytes | None, int]] = []
    queued: list[set[str]] = []
    bus = EventBus()
    bus.add_listener(events.append)
    async with open_sqlite_store(tmp_path / "q") as store:
        intake = Intake(
            store,
            Router(config_from_dict({})),
            bus,
            ids=QueueIdGenerator(time.time),
            clock=time.time,
            on_stored=lambda record, small, count: stored.append((record, small, count)),
            on_queued=lambda zones: queued.append(set(zones)),
            announces=announces,
        )
        reception = intake.begin(Envelope("s@origin.test", ("r@dest.test",), "feeder"))
        await reception.feed(b"Subject: hi\r\n\r\n" + BODY)
        queue_id = await reception.commit()
        record = await store.get_message(queue_id)
        assert record is not None and record.headers == b"Subject: hi\r\n"
        assert b"".join([chunk async for chunk in store.read_body(queue_id)]) == BODY
    if announces:
        assert [e.type for e in events] == ["message.queued"]
        assert [(r.id, small, n) for r, small, n in stored] == [(queue_id, BODY, 1)]
        assert len(queued) == 1
    else:
        assert (events, stored, queued) == ([], [], [])
        assert reception._small is None  # no copy of the body kept for nobody

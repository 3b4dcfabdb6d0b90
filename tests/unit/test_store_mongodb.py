"""The MongoDB queue backend against a real MongoDB-wire server (SecantusDB, or the MongoDB
of ``ZONEMTA_TEST_MONGODB_URI``): the store contract unchanged, plus what only this backend
has (GridFS bodies, several instances on one database, garbage collection by reachability,
outages, configuration)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import gridfs
import pytest
import trio
from pymongo import MongoClient

from tests.store_contract import ZONE, StoreContract, big_body, body_of, put, rcpts, record
from tests.support.mongo import MongoEndpoint, mongo_endpoint, secantus_server
from zonemta.app import make_store
from zonemta.conf import ConfigError, QueueBackend, config_from_dict
from zonemta.store import FixedRoute, MessageMeta, StoreError
from zonemta.store.mongodb import MongoStore, open_mongo_store
from zonemta.store.mongodb import gc as mongo_gc
from zonemta.store.mongodb.client import client_options
from zonemta.store.mongodb.schema import CHUNKS, DELIVERIES, FILES, MESSAGES, body_owner
from zonemta.store.sqlite import SqliteStore

CHUNK = 16 * 1024
FAST = {"serverSelectionTimeoutMS": 1000, "timeoutMS": 1000}


@pytest.fixture(scope="module")
def mongo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MongoEndpoint]:
    with mongo_endpoint(tmp_path_factory.mktemp("mongo")) as endpoint:
        yield endpoint


@pytest.fixture
def database(mongo: MongoEndpoint) -> Iterator[str]:
    with mongo.fresh_database() as name:
        yield name


class TestMongoContract(StoreContract):
    @pytest.fixture
    async def store(self, mongo: MongoEndpoint, database: str) -> AsyncIterator[MongoStore]:
        async with open_mongo_store(
            mongo.uri, database, instance_id="test", chunk_size=CHUNK
        ) as store:
            yield store


@pytest.fixture
async def store(mongo: MongoEndpoint, database: str) -> AsyncIterator[MongoStore]:
    async with open_mongo_store(mongo.uri, database, instance_id="a", chunk_size=CHUNK) as store:
        yield store


class Raw:
    """Direct pymongo access to the test database, to look at what the store wrote."""

    def __init__(self, uri: str, database: str) -> None:
        self.client: MongoClient[dict[str, Any]] = MongoClient(uri)
        self.db = self.client[database]

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def raw(mongo: MongoEndpoint, database: str) -> Iterator[Raw]:
    raw = Raw(mongo.uri, database)
    try:
        yield raw
    finally:
        raw.close()


# -- GridFS bodies ------------------------------------------------------------------------


async def test_bodies_are_standard_gridfs_files(store: MongoStore, raw: Raw) -> None:
    body = big_body(100_000)
    await put(store, "m1", body=body, piece=3000)
    [message] = raw.db[MESSAGES].find({"_id": "m1"})
    bucket = gridfs.GridFSBucket(raw.db, bucket_name="bodies")
    stream = bucket.open_download_stream(message["body_id"])
    assert stream.read() == body
    assert stream.chunk_size == CHUNK
    assert body_owner(message["body_id"]) == "a"
    assert raw.db[CHUNKS].count_documents({"files_id": message["body_id"]}) == 7


# -- message meta ---------------------------------------------------------------------------


async def test_meta_is_a_flat_document_and_old_ones_load(store: MongoStore, raw: Raw) -> None:
    await put(store, "m1", meta=MessageMeta(interface="feeder", routes={1: FixedRoute(mx="m")}))
    [message] = raw.db[MESSAGES].find({"_id": "m1"})
    assert message["meta"]["interface"] == "feeder"
    assert message["meta"]["routes"] == {"1": {"mx": "m"}}
    # What an earlier release wrote (no dkim_bh, no routes), with a key from a later one.
    old = {"interface": "api", "client_address": "", "helo": "", "transtype": "HTTP"}
    old |= {"body_8bit": False, "smtputf8": False, "user": None, "later": [1]}
    raw.db[MESSAGES].update_one({"_id": "m1"}, {"$set": {"meta": old}})
    stored = await store.get_message("m1")
    assert stored is not None
    assert (stored.meta.transtype, stored.meta.dkim_bh) == ("HTTP", "")
    assert stored.meta.extra == {"later": [1]}
    raw.db[MESSAGES].update_one({"_id": "m1"}, {"$set": {"meta.body_8bit": "yes"}})
    with pytest.raises(StoreError, match=r"meta of m1 .*@ meta\.body_8bit"):
        await store.get_message("m1")


async def test_body_is_streamed_to_the_database_while_received(store: MongoStore, raw: Raw) -> None:
    writer = store.new_body("streamed")
    for _ in range(10):
        await writer.write(b"y" * 5000)
    # Three full chunks are already stored; only the rest waits in memory.
    assert raw.db[CHUNKS].count_documents({}) == 3
    [files] = raw.db[FILES].find({})
    assert files["metadata"]["complete"] is False
    await store.commit_message(
        record("streamed", body_size=50_000), writer, rcpts(("a@b.example", ZONE, 1.0))
    )
    [files] = raw.db[FILES].find({})
    assert (files["length"], files["metadata"]["complete"]) == (50_000, True)
    assert await body_of(store, "streamed") == b"y" * 50_000


# -- several instances on one database ----------------------------------------------------


async def test_two_instances_share_the_queue(mongo: MongoEndpoint, database: str) -> None:
    async with (
        open_mongo_store(mongo.uri, database, instance_id="a", chunk_size=CHUNK) as a,
        open_mongo_store(mongo.uri, database, instance_id="b", chunk_size=CHUNK) as b,
    ):
        for n in range(6):
            store = a if n % 2 else b
            await put(store, f"m{n}", rcpts(*[(f"r{i}@d{i}.example", ZONE, 1.0) for i in range(3)]))
        got: dict[str, list[str]] = {"a": [], "b": []}

        async def leaser(store: MongoStore) -> None:
            while batch := await store.lease(
                ZONE, owner=store.instance_id, now=10.0, lease_until=100.0, limit=2
            ):
                got[store.instance_id].extend(str(d.key) for d in batch)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(leaser, a)
            nursery.start_soon(leaser, b)
        keys = got["a"] + got["b"]
        assert len(keys) == len(set(keys)) == 18
        # a dies holding its leases; b renews its own. Once a's expire, b takes them over.
        own = [d.key for d in await b.list_deliveries(ZONE, deferred=False, now=10.0)]
        await b.renew(own, owner="b", lease_until=300.0)
        assert await b.lease(ZONE, owner="b", now=99.0, lease_until=200.0, limit=50) == []
        taken = await b.lease(ZONE, owner="b", now=101.0, lease_until=200.0, limit=50)
        assert sorted(str(d.key) for d in taken) == sorted(got["a"])


# -- garbage collection by reachability ---------------------------------------------------


async def test_gc_spares_bodies_another_live_instance_is_receiving(
    mongo: MongoEndpoint, database: str, raw: Raw
) -> None:
    async with (
        open_mongo_store(mongo.uri, database, instance_id="a", chunk_size=CHUNK) as a,
        open_mongo_store(mongo.uri, database, instance_id="b", chunk_size=CHUNK) as b,
    ):
        writer = a.new_body("slow")
        await writer.write(big_body(40_000))
        assert await b.remove_orphans() == 0  # a is alive and receiving it
        assert raw.db[CHUNKS].count_documents({}) == 2
        await writer.write(b"tail\r\n")
        await a.commit_message(
            record("slow", body_size=40_006), writer, rcpts(("x@y.example", ZONE, 1.0))
        )
        assert await b.remove_orphans() == 0
        assert await body_of(b, "slow") == big_body(40_000) + b"tail\r\n"


async def test_gc_collects_what_a_dead_instance_left(
    mongo: MongoEndpoint, database: str, raw: Raw
) -> None:
    async with open_mongo_store(mongo.uri, database, instance_id="b", chunk_size=CHUNK) as b:
        # Instance "a" crashes while receiving a body: its writer is never committed or
        # aborted, and its heartbeat runs out.
        crashed = MongoStore(mongo.uri, database, instance_id="a", chunk_size=CHUNK)
        await crashed.open()
        writer = crashed.new_body("lost")
        await writer.write(big_body(40_000))
        await put(crashed, "kept")
        raw.db["instances"].update_one({"_id": "a"}, {"$set": {"alive_until": 0.0}})
        assert await b.remove_orphans() == 1
        assert raw.db[FILES].count_documents({}) == 1  # the committed body of "kept"
        assert await body_of(b, "kept") == b"Hello\r\n"
        crashed._closed = True  # the process "died": no sign-off
        await crashed._runner.aclose()


async def test_gc_on_restart_collects_own_crashed_receptions(
    mongo: MongoEndpoint, database: str, raw: Raw
) -> None:
    first = MongoStore(mongo.uri, database, instance_id="a", chunk_size=CHUNK)
    await first.open()
    writer = first.new_body("lost")
    await writer.write(big_body(40_000))
    await first._runner.aclose()  # crashed: heartbeat still current
    async with open_mongo_store(mongo.uri, database, instance_id="a", chunk_size=CHUNK) as again:
        assert await again.remove_orphans() == 1
    assert raw.db[CHUNKS].count_documents({}) == 0


async def test_gc_finishes_a_commit_that_stopped_after_its_commit_point(
    store: MongoStore, raw: Raw
) -> None:
    await put(store, "m", rcpts(("a@x.example", ZONE, 5.0), ("b@x.example", ZONE, 6.0)))
    await put(store, "n")
    [message] = raw.db[MESSAGES].find({"_id": "m"})
    # As if the process died between the message document and the release of its
    # deliveries; and another reception died before its message document.
    raw.db[DELIVERIES].update_many(
        {"message_id": "m"}, [{"$set": {"held_due": "$due", "held_by": message["body_id"]}}]
    )
    raw.db[DELIVERIES].update_many({"message_id": "m"}, {"$unset": {"due": ""}})
    raw.db[DELIVERIES].update_many({"message_id": "n"}, {"$set": {"held_by": "a/n/dead"}})
    raw.db[DELIVERIES].update_many({"message_id": "n"}, {"$unset": {"due": ""}})
    raw.db[MESSAGES].delete_one({"_id": "n"})
    assert await store.deliveries_of("m") == []
    assert await store.lease(ZONE, owner="a", now=100.0, lease_until=200.0, limit=9) == []
    assert await store.remove_orphans() == 1  # the body of "n"
    assert raw.db[FILES].count_documents({}) == 1
    leased = await store.lease(ZONE, owner="a", now=100.0, lease_until=200.0, limit=9)
    assert [(d.message_id, d.seq, d.next_attempt) for d in leased] == [("m", 0, 5.0), ("m", 1, 6.0)]
    assert raw.db[DELIVERIES].count_documents({"message_id": "n"}) == 0


# -- outages ------------------------------------------------------------------------------


async def test_unreachable_database_is_a_store_error() -> None:
    with socket.socket() as bound:  # a port held, with nothing listening: refused
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        store = MongoStore(f"mongodb://127.0.0.1:{port}/", "x", options=FAST)
        with trio.fail_after(30), pytest.raises(StoreError):
            await store.open()
        await store.aclose()


async def test_database_outage_fails_calls_and_they_work_again_after(tmp_path: Path) -> None:
    with secantus_server(tmp_path / "db") as server:
        async with open_mongo_store(
            server.uri, "q", instance_id="a", chunk_size=CHUNK, options=FAST
        ) as store:
            await put(store, "before")
            writer = store.new_body("during")
            await writer.write(b"x" * (CHUNK + 100))  # one chunk stored, the rest in memory
            await trio.to_thread.run_sync(server.kill)
            with pytest.raises(StoreError):
                await store.lease(ZONE, owner="a", now=200.0, lease_until=300.0, limit=5)
            with trio.fail_after(5), pytest.raises(StoreError):  # one timeout, not two
                await store.commit_message(
                    record("during", body_size=CHUNK + 100),
                    writer,
                    rcpts(("a@b.example", ZONE, 1.0)),
                )
            await trio.to_thread.run_sync(server.start)
            [d] = await store.lease(ZONE, owner="a", now=200.0, lease_until=300.0, limit=5)
            assert d.message_id == "before"
            assert await store.get_message("during") is None
            # The chunk stored before the outage was left to garbage collection, which the
            # store's service runs by itself once the database is back (or we do now).
            await store.remove_orphans()
            raw = Raw(server.uri, "q")
            try:
                assert [f["filename"] for f in raw.db[FILES].find({})] == ["before"]
                assert raw.db[CHUNKS].count_documents({}) == 1
            finally:
                raw.close()
            await put(store, "after")
            assert await body_of(store, "after") == b"Hello\r\n"


# -- configuration ------------------------------------------------------------------------


def test_config_selects_the_mongodb_backend(tmp_path: Path) -> None:
    config = config_from_dict(
        {
            "queue": {
                "backend": "mongodb",
                "mongodb_uri": "mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=100",
                "database": "relay",
                "instance_id": "mta-2",
            }
        }
    )
    assert config.queue.backend is QueueBackend.MONGODB
    store = make_store(config)
    assert isinstance(store, MongoStore)
    assert (store.database, store.instance_id) == ("relay", "mta-2")
    assert isinstance(make_store(config_from_dict({"queue": {"path": str(tmp_path)}})), SqliteStore)


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        ({"backend": "mongodb"}, "'mongodb_uri' is required"),
        ({"mongodb_uri": "http://db.example/"}, "'mongodb_uri' must be"),
        ({"database": "a.b"}, "'database' must be a MongoDB database name"),
        ({"database": ""}, "'database' must be a MongoDB database name"),
    ],
)
def test_config_errors_name_the_key(queue: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"queue": queue})


def test_client_options_leave_the_uris_own_settings_alone() -> None:
    options = client_options("mongodb://h/", "full", {})
    assert options["w"] == "majority" and options["journal"] is True
    assert options["serverSelectionTimeoutMS"] == 5000
    given = client_options("mongodb://h/?w=2&serverSelectionTimeoutMS=100", "normal", {"x": 1})
    assert "w" not in given and "journal" not in given
    assert "serverSelectionTimeoutMS" not in given
    assert given["x"] == 1


def test_gc_liveness_rules() -> None:
    assert body_owner("a/m/1") == "a"
    assert body_owner("a") is None
    assert body_owner(123) is None
    assert mongo_gc.ALIVE_SECONDS > 2 * mongo_gc.HEARTBEAT_SECONDS

"""The MongoDB queue backend: several relays (distinct ``instance_id``) share one database.

Bodies live in GridFS (bucket ``bodies``), one document per delivery, leases claimed with
``find_one_and_update`` and expiring by themselves, garbage collected by reachability. See
:mod:`zonemta.store.mongodb.schema` for the documents and :mod:`zonemta.store.mongodb.gc`
for the collection rules.

Typical use::

    async with open_mongo_store("mongodb://127.0.0.1:27017/", "zonemta") as store:
        ...
"""

from zonemta.store.mongodb.body import MongoBodyWriter
from zonemta.store.mongodb.store import MongoStore, open_mongo_store

__all__ = ["MongoBodyWriter", "MongoStore", "open_mongo_store"]

"""Queue storage: the contract (:mod:`zonemta.store.base`), the records it takes and returns
(:mod:`zonemta.store.records`, :mod:`zonemta.store.meta`), its errors
(:mod:`zonemta.store.errors`) and its backends."""

from zonemta.store.base import BodyWriter, Store
from zonemta.store.errors import LeaseLost, StoreError, StoreFull
from zonemta.store.meta import FixedRoute, MessageMeta
from zonemta.store.records import (
    BlacklistEntry,
    Delivery,
    DeliveryKey,
    MessageRecord,
    NewDelivery,
    RowState,
    SuppressionEntry,
    Suspension,
    ZoneCounts,
)

__all__ = [
    "BlacklistEntry",
    "BodyWriter",
    "Delivery",
    "DeliveryKey",
    "FixedRoute",
    "LeaseLost",
    "MessageMeta",
    "MessageRecord",
    "NewDelivery",
    "RowState",
    "Store",
    "StoreError",
    "StoreFull",
    "SuppressionEntry",
    "Suspension",
    "ZoneCounts",
]

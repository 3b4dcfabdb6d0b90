"""Queue storage: the contract (:mod:`zonemta.store.base`) and its backends."""

from zonemta.store.base import (
    BlacklistEntry,
    BodyWriter,
    Delivery,
    DeliveryKey,
    LeaseLost,
    MessageRecord,
    NewDelivery,
    RowState,
    Store,
    StoreError,
    StoreFull,
    SuppressionEntry,
    Suspension,
    ZoneCounts,
)

__all__ = [
    "BlacklistEntry",
    "BodyWriter",
    "Delivery",
    "DeliveryKey",
    "LeaseLost",
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

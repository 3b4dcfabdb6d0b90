"""The store's errors: what every backend raises, and what callers answer with."""

from __future__ import annotations

__all__ = ["LeaseLost", "StoreError", "StoreFull"]


class StoreError(Exception):
    """The store could not do what was asked (I/O error, database unreachable, ...).

    Callers answer submitters with a temporary failure and retry later.
    """


class StoreFull(StoreError):
    """The store has no room for more (disk full, or the configured size limit reached).

    What is already stored stays readable and deliverable; submitters get a temporary
    failure (SMTP ``452 4.3.1``) until deliveries free space."""


class LeaseLost(StoreError):
    """The delivery is no longer leased by this owner (expired, taken over, or removed)."""

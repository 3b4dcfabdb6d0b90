"""Exception groups from trio's nurseries, unwrapped."""

from __future__ import annotations

__all__ = ["first_leaf"]


def first_leaf(exc: BaseException) -> BaseException:
    """The first exception of a (nested) group, or ``exc`` itself if it is not one."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc

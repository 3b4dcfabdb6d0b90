"""An ``enum.Enum`` hashed by identity, for the members the state tables look up.

An Enum member is a singleton compared by identity, but ``Enum.__hash__`` is Python code
that hashes the member's name: the transition tables of the SMTP and delivery state
machines call it a hundred times per message. ``object.__hash__`` agrees with the identity
comparison and costs nothing. (Only for plain Enums: a ``str`` or ``int`` mix-in compares
equal to its value and must hash like it.)
"""

from __future__ import annotations

import enum

__all__ = ["IdentityEnum"]


class IdentityEnum(enum.Enum):
    """A plain Enum whose members hash by identity."""

    __hash__ = object.__hash__

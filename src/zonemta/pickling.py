"""Faster pickling for the frozen attrs records that cross the relay's process pipe.

attrs gives a slotted class ``__getstate__``/``__setstate__`` methods that build and read a
dict of every field by name, in Python, for each object pickled: for the frames and records
sent once or more per message (a commit from an intake process, an attempt to a delivery
process and its outcomes), that was a few percent of the relay's CPU. With
:func:`pickle_by_fields`, an object pickles as its class and the tuple of its field values,
and unpickles by calling the class with them: half the bytes and about 40% less time.

Only for classes whose fields are all positional ``__init__`` arguments in field order, and
whose converters (if any) accept their own output; :func:`pickle_by_fields` checks the first.

Enum members pickle as ``(cls, (value,))`` by default: unpickling one calls the class, which
is two Python calls (``EnumType.__call__``, ``Enum.__new__``) per member, and a frame carries
several (a row's state, a trigger, a category). With :func:`pickle_members_by_name` a member
pickles as the global it is (``Trigger.DELIVERED``), which unpickling finds without a Python
call; the pickler finds that name through a dict (a C call).

A class or member named in a pickle costs the pickler an import and a lookup to check the
name, and the unpickler an import and a lookup to find it: about 1.5 µs each way, and a
frame names several (the frame, its records, their enums). :func:`register_extension_codes`
gives each of them an extension code (``copyreg.add_extension``): the pickle holds a
number, which the unpickler looks up in a dict. Both ends must register the same codes: they
do it when they import the frames' module (the same installation on both ends).
"""

from __future__ import annotations

import copyreg
import enum
import operator
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import attrs

__all__ = ["pickle_by_fields", "pickle_members_by_name", "register_extension_codes"]

T = TypeVar("T")


def pickle_by_fields(cls: type[T]) -> type[T]:
    """Class decorator (put it above ``@attrs.frozen``): pickle as ``(cls, field values)``."""
    fields = attrs.fields(cls)  # type: ignore[arg-type]
    for field in fields:
        if not field.init or field.kw_only or field.alias != field.name:
            raise TypeError(f"{cls.__name__}.{field.name} is not a positional init argument")
    names = [field.name for field in fields]
    values: Callable[[Any], tuple[Any, ...]]
    if not names:
        values = lambda obj: ()  # noqa: E731
    elif len(names) == 1:
        (name,) = names
        values = lambda obj: (getattr(obj, name),)  # noqa: E731
    else:
        values = operator.attrgetter(*names)

    def __reduce__(self: T) -> tuple[type[T], tuple[Any, ...]]:
        return cls, values(self)

    cls.__reduce__ = __reduce__  # type: ignore[assignment,method-assign]
    return cls


def pickle_members_by_name(*classes: type[enum.Enum]) -> None:
    """Pickle the members of these enums as references to their globals (the qualified name
    ``Class.MEMBER`` in the class's module), for every pickler of this process. A pickle
    made without this loads the same member, and so does one made with it."""
    for cls in classes:
        names = {member: f"{cls.__qualname__}.{member.name}" for member in cls}
        copyreg.pickle(cls, names.__getitem__)


def register_extension_codes(
    first: int, named: Iterable[type | enum.Enum | Callable[..., Any]]
) -> list[int]:
    """Give each class or function (by ``module``, ``qualname``) and enum member (by its
    class's module and ``Class.MEMBER``; register its class with
    :func:`pickle_members_by_name`) the next extension code from ``first``, in order;
    returns the codes. The same list in the same order gives the same codes; registering
    them again changes nothing."""
    codes = []
    for code, obj in enumerate(named, start=first):
        if isinstance(obj, enum.Enum):
            cls = type(obj)
            module, name = cls.__module__, f"{cls.__qualname__}.{obj.name}"
        else:
            module, name = obj.__module__, obj.__qualname__
        copyreg.add_extension(module, name, code)
        codes.append(code)
    return codes

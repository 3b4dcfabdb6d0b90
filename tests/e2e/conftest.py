from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.mx import TestMx


@pytest.fixture
def mx() -> Iterator[TestMx]:
    with TestMx() as server:
        yield server

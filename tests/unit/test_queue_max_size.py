"""``[queue] max_size``: the sqlite queue's size limit reaches the store."""

from __future__ import annotations

from pathlib import Path

import pytest

from zonemta.app import make_store
from zonemta.conf import ConfigError, config_from_dict
from zonemta.store.sqlite import SqliteStore


def test_the_limit_reaches_the_sqlite_store(tmp_path: Path) -> None:
    config = config_from_dict({"queue": {"path": str(tmp_path), "max_size": "2MB"}})
    store = make_store(config)
    assert isinstance(store, SqliteStore) and store.max_size == 2 * 1024 * 1024
    unlimited = make_store(config_from_dict({"queue": {"path": str(tmp_path)}}))
    assert isinstance(unlimited, SqliteStore) and unlimited.max_size == 0


@pytest.mark.parametrize(
    ("table", "says"),
    [
        ({"max_size": "100KB"}, "'max_size' must be 0 (no limit) or at least 1MB: 102400"),
        ({"max_size": "lots"}, "config.queue.max_size"),
        (
            {"max_size": "5MB", "backend": "mongodb", "mongodb_uri": "mongodb://127.0.0.1"},
            "'max_size' applies to the sqlite queue only",
        ),
    ],
)
def test_bad_limits_are_refused_by_name(table: dict[str, str], says: str) -> None:
    with pytest.raises(ConfigError) as raised:
        config_from_dict({"queue": table})
    assert says in str(raised.value)

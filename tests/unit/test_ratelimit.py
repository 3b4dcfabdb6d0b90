from __future__ import annotations

import pytest
import trio
import trio.testing

from zonemta.conf.rates import Rate, parse_rate
from zonemta.engine.delivery.ratelimit import Throttle, TokenBucket


@pytest.mark.parametrize(
    ("text", "rate"),
    [
        ("600/hour", Rate(600, 3600)),
        ("10 messages/minute", Rate(10, 60)),
        ("1 message/second", Rate(1, 1)),
        ("5/s", Rate(5, 1)),
        ("100/2h", Rate(100, 7200)),
        ("3 msgs / minutes", Rate(3, 60)),
    ],
)
def test_parse_rate(text: str, rate: Rate) -> None:
    assert parse_rate(text) == rate


@pytest.mark.parametrize("text", ["", "ten/hour", "5/fortnight", "0/hour", "5 per hour", "5/0h"])
def test_bad_rates(text: str) -> None:
    with pytest.raises(ValueError, match="bad rate"):
        parse_rate(text)


def test_rate_text_round_trips() -> None:
    for text in ("600/hour", "10/minute", "5/second", "2/day"):
        assert str(parse_rate(text)) == text


async def test_bucket_allows_a_burst_then_the_rate(autojump_clock: trio.testing.MockClock) -> None:
    bucket = TokenBucket(parse_rate("6/minute"))
    start = trio.current_time()
    times = []
    for _ in range(9):
        await bucket.take()
        times.append(trio.current_time() - start)
    assert times[:6] == [0.0] * 6
    assert times[6:] == pytest.approx([10.0, 20.0, 30.0])


async def test_bucket_available_at_does_not_consume(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(parse_rate("1/minute"))
    assert bucket.try_take()
    assert not bucket.try_take()
    assert bucket.available_at() == pytest.approx(trio.current_time() + 60)
    await trio.sleep(60)
    assert bucket.try_take()


async def test_a_token_given_back_is_available_again_but_never_beyond_the_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    bucket = TokenBucket(parse_rate("2/minute"))
    await bucket.take()
    await bucket.take()
    assert bucket.available_at() == pytest.approx(trio.current_time() + 30)
    bucket.give_back()
    assert bucket.available_at() == trio.current_time()
    bucket.give_back()
    bucket.give_back()  # already full: the burst stays 2
    assert bucket.try_take() and bucket.try_take() and not bucket.try_take()


async def test_throttle_spaces_messages(autojump_clock: trio.testing.MockClock) -> None:
    throttle = Throttle(parse_rate("10 messages/minute"))
    start = trio.current_time()
    stamps = []
    for _ in range(4):
        await throttle.wait()
        stamps.append(trio.current_time() - start)
    assert stamps == pytest.approx([0, 6, 12, 18])

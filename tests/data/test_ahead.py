"""``hetdiff.data.ahead.map_ahead``: results in order, each fn(item), never more than ``ahead``
items submitted beyond the one returned, and an error raised in its item's turn."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from hetdiff.data.ahead import map_ahead


@pytest.mark.parametrize("ahead", [0, 1, 5])
def test_results_come_in_order_and_work_stays_within_ahead(ahead) -> None:
    started: list[int] = []
    lock = threading.Lock()

    def square(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    consumed = 0
    with ThreadPoolExecutor(3) as pool:
        for item, result in map_ahead(square, iter(range(30)), pool, ahead):
            assert (item, result) == (consumed, consumed * consumed)
            consumed += 1
            assert len(started) <= consumed + ahead  # submitted: those returned + ahead
    assert sorted(started) == list(range(30))
    assert list(map_ahead(square, range(4), None, 2)) == [(0, 0), (1, 1), (2, 4), (3, 9)]


def test_an_error_is_raised_in_its_turn() -> None:
    def fail_at_seven(i: int) -> int:
        if i == 7:
            raise ValueError("seven")
        return i

    seen = []
    with ThreadPoolExecutor(2) as pool, pytest.raises(ValueError, match="seven"):
        for item, _ in map_ahead(fail_at_seven, range(20), pool, 10):
            seen.append(item)
    assert seen == list(range(7))

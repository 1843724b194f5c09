"""An ordered map that works ahead in a thread pool: images are decoded while the caller
encodes the ones before them (``hetdiff features``).

Pillow's decoders and resizers and numpy's copies release the GIL, so threads decode in
parallel. Results come back in the items' order, each exactly ``fn(item)``: the output never
depends on the pool. An exception of ``fn`` (a corrupt image) is raised in that item's turn,
after every result before it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def map_ahead(
    fn: Callable[[Item], Result], items: Iterable[Item], pool: Executor | None, ahead: int
) -> Iterator[tuple[Item, Result]]:
    """``(item, fn(item))`` for each item, in order. With ``pool``, up to ``ahead`` items are
    submitted beyond the one being returned; without, ``fn`` runs inline."""
    if pool is None:
        for item in items:
            yield item, fn(item)
        return
    pending: deque[tuple[Item, Future[Result]]] = deque()
    for item in items:
        pending.append((item, pool.submit(fn, item)))
        if len(pending) > ahead:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()

"""Loading the next inputs while the model works on the current one.

A bulk job (a FiftyOne dataset, a Label Studio project) reads, downloads and decodes each image
and then runs the model on it. Done one after the other, the model waits for every read: on a
GPU, where a whole image takes tens of milliseconds, that wait can be as long as the work. Here
a background thread loads the next item while the caller works on the current one. Decoding
(Pillow, OpenCV) and network reads release the GIL, so the two really overlap.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

Item = TypeVar("Item")
Loaded = TypeVar("Loaded")


def prefetch(
    items: Iterable[Item], load: Callable[[Item], Loaded], ahead: int = 1
) -> Iterator[tuple[Item, "Future[Loaded]"]]:
    """Yields (item, future of load(item)) in the order of `items`, with load running in one
    background thread for up to `ahead` items beyond the one the caller holds.

    `future.result()` returns what load returned, or raises what it raised, so one item's
    failure stays with that item. Items are taken from `items` in the caller's thread (a
    database cursor is never touched from the background thread); only `load` runs there. At
    most `ahead + 1` loaded results are held at once. Closing the iterator (a `break` in a
    `with contextlib.closing(...)` block, or garbage collection) cancels the loads not started
    and waits for the one running.
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1, got {ahead}")
    source = iter(items)
    pending: deque[tuple[Item, Future]] = deque()
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="samkit-prefetch")
    try:
        for item in source:
            pending.append((item, executor.submit(load, item)))
            if len(pending) > ahead:
                yield pending.popleft()
        while pending:
            yield pending.popleft()
    finally:
        executor.shutdown(wait=True, cancel_futures=True)

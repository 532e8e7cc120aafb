"""samkit.prefetch: the next item loads in the background while the caller works on this one.

No timers: overlap is shown by the caller waiting (with a generous timeout) for an event that
only a background load of the next item sets; loaded one after the other, the wait would run
out and the test fail.
"""

from __future__ import annotations

import contextlib
import threading

import pytest

from samkit.utils.prefetch import prefetch

WAIT_S = 20


def test_results_in_order_and_a_failure_stays_with_its_item():
    def load(n):
        if n == 2:
            raise ValueError("item 2 is corrupt")
        return n * 10

    seen = []
    for item, future in prefetch(range(5), load):
        try:
            seen.append((item, future.result()))
        except ValueError as exc:
            seen.append((item, str(exc)))
    assert seen == [(0, 0), (1, 10), (2, "item 2 is corrupt"), (3, 30), (4, 40)]


@pytest.mark.parametrize("ahead", [1, 3])
def test_the_next_items_load_while_the_caller_holds_this_one(ahead):
    started = [threading.Event() for _ in range(8)]
    threads = set()

    def load(n):
        threads.add(threading.current_thread().name)
        started[n].set()
        return n

    for item, future in prefetch(range(8), load, ahead=ahead):
        assert future.result() == item
        # the caller has not asked for anything more, yet the following loads are under way
        for later in range(item + 1, min(item + ahead, 7) + 1):
            assert started[later].wait(WAIT_S), f"item {later} was not loading while the caller held item {item}"
    assert threads and all(name.startswith("samkit-prefetch") for name in threads)


@pytest.mark.parametrize("ahead", [1, 2])
def test_items_are_taken_lazily_in_the_callers_thread(ahead):
    caller = threading.get_ident()
    taken = []

    def items():
        for n in range(10):
            assert threading.get_ident() == caller  # e.g. a database cursor stays in its thread
            taken.append(n)
            yield n

    for item, future in prefetch(items(), lambda n: n, ahead=ahead):
        future.result()
        # at most `ahead` items beyond the one held: memory stays bounded for any dataset size
        assert len(taken) <= item + 1 + ahead
    assert taken == list(range(10))


def test_closing_early_cancels_the_loads_not_started():
    release = threading.Event()
    loaded = []

    def load(n):
        release.wait(WAIT_S)
        loaded.append(n)
        return n

    with contextlib.closing(prefetch(range(100), load, ahead=4)) as items:
        for item, _ in items:
            # load 0 is still running, items 1-4 are queued; the load is let go a little after
            # closing has begun (a sequencing aid, not a measurement)
            threading.Timer(2.0, release.set).start()
            break
    assert item == 0
    # closing cancelled the queued loads and waited for the running one
    assert loaded == [0]
    assert not any(t.name.startswith("samkit-prefetch") for t in threading.enumerate())


def test_ahead_must_be_positive():
    with pytest.raises(ValueError, match="ahead must be at least 1"):
        next(prefetch([1], lambda n: n, ahead=0))

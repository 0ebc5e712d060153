"""Decode ahead in background threads, in order, with bounded memory.

Image decoding (zlib/LZW TIFF, PNG, JPEG) releases the GIL, so a couple of threads
hide I/O and decode time behind detection without another process.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

from fracscope.types import ReadFailure

T = TypeVar("T")
R = TypeVar("R")

_END = object()


def _failure(item: Any, exc: BaseException) -> ReadFailure:
    return ReadFailure(str(item), f"{type(exc).__name__}: {exc}")


def prefetch(
    iterable: Iterable[T],
    load: Callable[[T], R] | None = None,
    n_threads: int = 2,
    depth: int = 4,
) -> Iterator[R | T | ReadFailure]:
    """Yield ``load(item)`` for each item, computed ahead in threads, in input order.

    Parameters
    ----------
    iterable : iterable
        Items (e.g. file paths), or ready values when `load` is None.
    load : callable, optional
        Decoder applied to each item in a worker thread. An exception becomes a
        ``ReadFailure(str(item), message)`` in the item's place. When None, the
        iterable itself is consumed by one background thread (useful for a generator
        such as `iter_images`); an exception there yields one `ReadFailure` and ends.
    n_threads : int
        Worker threads (with `load`).
    depth : int
        At most this many results are decoded and waiting: memory stays bounded.

    Yields
    ------
    results in the order of `iterable`.
    """
    if depth < 1:
        raise ValueError("depth must be >= 1")
    if load is None:
        yield from _background(iterable, depth)
        return
    items = iter(iterable)
    pending: deque[tuple[Any, Future]] = deque()
    with ThreadPoolExecutor(max_workers=max(1, n_threads), thread_name_prefix="fracscope-prefetch") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(load, item)))
                if len(pending) >= depth:
                    yield _result(*pending.popleft())
            while pending:
                yield _result(*pending.popleft())
        finally:
            # Early stop by the consumer: drop what has not started yet.
            for _, fut in pending:
                fut.cancel()


def _result(item: Any, fut: Future) -> Any:
    try:
        return fut.result()
    except Exception as exc:  # noqa: BLE001 - a bad item must not stop the stream
        return _failure(item, exc)


def _background(iterable: Iterable[T], depth: int) -> Iterator[T | ReadFailure]:
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: Any) -> bool:
        # Block while the queue is full, but give up once the consumer has stopped.
        while not stop.is_set():
            try:
                q.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for value in iterable:
                if not put(value):
                    return
        except Exception as exc:  # noqa: BLE001
            put(_failure(getattr(iterable, "__name__", "iterable"), exc))
        put(_END)

    thread = threading.Thread(target=produce, name="fracscope-prefetch", daemon=True)
    thread.start()
    try:
        while (value := q.get()) is not _END:
            yield value
    finally:
        stop.set()
        thread.join(timeout=1.0)

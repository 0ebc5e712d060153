"""Child processes that die with their parent, whatever killed it.

A worker blocked on its task pipe never sees its parent go (it holds the pipe's other end
itself), so after a SIGKILL or an OOM kill of the main process it would live on, holding its
memory. `die_with_parent` is the initializer of every worker pool: on Linux the kernel kills the
worker when the parent ends (``PR_SET_PDEATHSIG``); elsewhere, and as a second guard, a daemon
thread polls the parent pid. Children started inside `sigint_ignored` leave Ctrl-C to the parent.
`ordered_map` / `generator_pool` are the one way the data generators (synthetic fields, crops, sections) fan
work out to processes with both guards.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
#: How often the fallback looks at the parent pid.
POLL_S = 1.0


def die_with_parent(parent_pid: int, use_prctl: bool = True) -> None:
    """End this process as soon as `parent_pid` is no longer its parent.

    Call it first thing in a child (a pool's ``initializer``) with the parent's ``os.getpid()``.
    On Linux the signal fires when the *thread* that started the child ends: start pools from the
    thread that uses them (as `fracscope.locate.locate_ahead` does).
    """
    if use_prctl and sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl took effect: then it never fires.
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="die-with-parent", daemon=True).start()


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(POLL_S)
    os._exit(1)  # no cleanup: the parent that would receive results is gone


@contextlib.contextmanager
def sigint_ignored() -> Iterator[None]:
    """Children started inside the block hold Ctrl-C back from their start on; the parent defers it.

    Ctrl-C reaches the terminal's whole process group; a worker still importing would print its
    own traceback. SIGINT is *blocked* (not ignored) in the block: a child inherits the blocked
    mask until its initializer ignores SIGINT and unblocks it (`release_sigint_in_child`).
    The parent's other threads (decode, writer, onnxruntime) still take the signal, and Python
    runs its handler in the main thread at once: a KeyboardInterrupt raised inside
    ``Process.start()``, just after the fork, left a child that never got its start-up data (an
    EOFError traceback) and a pool that did not know it. So the handler only notes the Ctrl-C
    inside the block, and it is raised as soon as the block ends (ignoring it lost such a
    Ctrl-C, and the run went on). Off the main thread it does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGINT)
    caught: list[int] = []
    if callable(handler):  # a Python handler (KeyboardInterrupt): run it after the block
        signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)  # one pending here is noted on this line
        if callable(handler):
            signal.signal(signal.SIGINT, handler)
    if caught:
        handler(signal.SIGINT, None)


def release_sigint_in_child() -> None:
    """In a worker started inside `sigint_ignored`: ignore Ctrl-C (the parent handles it), then unblock it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _init_generator(parent_pid: int) -> None:
    die_with_parent(parent_pid)
    release_sigint_in_child()


@contextlib.contextmanager
def generator_pool(workers: int) -> Iterator[Any]:
    """A fork `multiprocessing` pool of `workers` processes that die with this one and leave Ctrl-C to it.

    Fork, because the children only run numpy/scipy (no onnxruntime or torch threads to inherit).
    Leaving the block terminates the pool, also on Ctrl-C (a KeyboardInterrupt in the parent only).
    """
    import multiprocessing as mp

    with sigint_ignored():  # the pool forks its workers here
        pool = mp.get_context("fork").Pool(workers, initializer=_init_generator, initargs=(os.getpid(),))
    with pool:
        yield pool


def ordered_map(func: Callable[[Any], Any], items: Iterable[Any], workers: int | None = 1) -> Iterator[Any]:
    """`func` over `items`, results in order: here for `workers` <= 1, else in a `generator_pool`
    (None: one process per core, never more than there are items)."""
    items = list(items)
    workers = min(len(items), os.cpu_count() or 1) if workers is None else int(workers)
    if workers <= 1:
        yield from map(func, items)
        return
    with generator_pool(workers) as pool:
        yield from pool.imap(func, items)

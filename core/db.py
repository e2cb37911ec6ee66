"""Running synchronous database units from async code, on a bounded pool of threads.

Transactions are not available in async code, so every transactional unit is one sync
function. ``db_run`` runs it on a small dedicated pool (bounding the number of database
connections that streaming turns hold), closes connections that went stale or broke,
and never ties a long-lived generation to a request's thread.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from django.conf import settings
from django.db import DatabaseError, connections

P = ParamSpec("P")
R = TypeVar("R")

#: Weight of the newest unit in the running mean of a unit's time on its thread.
_EWMA_WEIGHT = 0.1


class DbPool:
    """A fixed set of threads running database units, the urgent ones first.

    A ``ThreadPoolExecutor`` runs its work first come, first served: at saturation the
    end of a turn (its last transaction) waited behind the starts of every turn that
    arrived before it (a burst of 500 turns on SQLite's one thread: seconds). Here two
    queues: :func:`db_run_urgent`'s units (a turn's end, the checkpoint) are taken before
    any plain :func:`db_run` unit. Written here rather than taken from a library: the
    standard executors have no priorities, and this is 60 lines.

    It also keeps a running mean of a unit's time on its thread (waits for the GIL and
    the database included), for :meth:`wait_estimate`.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._cond = threading.Condition()
        self._urgent: deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = deque()
        self._normal: deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] = deque()
        self._stopping = False
        self._mean_unit = 0.0
        self._threads = [
            threading.Thread(target=self._work, name=f"db-unit_{i}", daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    def submit(
        self, call: Callable[[], R], *, urgent: bool = False
    ) -> concurrent.futures.Future[R]:
        """Queue ``call``; its future."""
        future: concurrent.futures.Future[R] = concurrent.futures.Future()
        with self._cond:
            if self._stopping:
                raise RuntimeError("the database pool is closed")
            (self._urgent if urgent else self._normal).append((future, call))
            self._cond.notify()
        return future

    @property
    def queued(self) -> int:
        """Units waiting for a thread."""
        return len(self._urgent) + len(self._normal)

    def wait_estimate(self) -> float:
        """Seconds a unit queued now would wait for a thread (queue length times the mean
        unit time, over the threads)."""
        return self.queued * self._mean_unit / self.workers

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._urgent and not self._normal and not self._stopping:
                    self._cond.wait()
                if self._urgent:
                    future, call = self._urgent.popleft()
                elif self._normal:
                    future, call = self._normal.popleft()
                else:
                    return  # stopping, and nothing left
            if not future.set_running_or_notify_cancel():
                continue
            started = time.perf_counter()
            try:
                result = call()
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)
            took = time.perf_counter() - started
            self._mean_unit += (took - self._mean_unit) * _EWMA_WEIGHT

    def shutdown(self) -> None:
        """Run what is queued, then stop the threads and wait for them."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join()


_pool: DbPool | None = None
_pool_lock = threading.Lock()


def _get_pool() -> DbPool:
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = DbPool(getattr(settings, "DB_THREADS", 8))
    return _pool


def db_wait_estimate() -> float:
    """Seconds a database unit started now would wait for a thread (0 before the first)."""
    return _pool.wait_estimate() if _pool is not None else 0.0


def db_queued() -> int:
    """Database units waiting for a thread now."""
    return _pool.queued if _pool is not None else 0


def _refresh_connections() -> None:
    """Keep a pool thread's connection between units (these threads live as long as the
    process), unless it broke; with ``CONN_MAX_AGE`` set (PostgreSQL), also renew it when
    it is that old and health-check it before use."""
    for conn in connections.all(initialized_only=True):
        if conn.settings_dict["CONN_MAX_AGE"] == 0:
            if conn.connection is not None and conn.errors_occurred and not conn.is_usable():
                conn.close()
        else:
            conn.close_if_unusable_or_obsolete()


def _run_unit(func: Callable[..., R], args: tuple, kwargs: dict) -> R:
    """One unit on a pool thread: fresh connections first, a broken one closed after."""
    _refresh_connections()
    try:
        return func(*args, **kwargs)
    except DatabaseError:
        # A broken connection must not poison the next unit on this thread.
        for conn in connections.all(initialized_only=True):
            if conn.connection is not None and not conn.is_usable():
                conn.close()
        raise


async def db_run(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """Run ``func(*args, **kwargs)`` on the database pool and return its result.

    The caller's context variables go along (as with ``sync_to_async``); a plain
    executor hop costs about half of ``sync_to_async``'s CPU per call (135 against
    245 µs, both threads), and every turn makes two calls. The units never call back into
    async code, which is all ``sync_to_async`` adds here.
    """
    return await _submit(False, func, args, kwargs)


async def db_run_urgent(func: Callable[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R:
    """:func:`db_run`, ahead of every plain unit waiting (a turn's end, the checkpoint:
    work that finishes what was started must not queue behind what starts more)."""
    return await _submit(True, func, args, kwargs)


async def _submit(urgent: bool, func: Callable[..., R], args: tuple, kwargs: dict) -> R:
    context = contextvars.copy_context()
    future = _get_pool().submit(
        functools.partial(context.run, _run_unit, func, args, kwargs), urgent=urgent
    )
    return await asyncio.wrap_future(future)


def db_pool_close() -> None:
    """Close every pool thread's database connections and stop the pool.

    One unit per thread, held at a barrier so that each lands on a different thread.
    """
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is None:
        return
    barrier = threading.Barrier(pool.workers)

    def close_here() -> None:
        connections.close_all()
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=5)

    for _ in range(pool.workers):
        pool.submit(close_here)
    pool.shutdown()

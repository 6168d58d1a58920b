"""Group commit: items that arrive while a write is in progress share the next one.

There is no timer. Under light load each item gets its own write at once;
under heavy load the batch grows to whatever arrived during the previous
write, so a burst costs one transaction and one fsync per batch rather than
per item. Writes run on one dedicated thread: the event loop never blocks on
disk, and SQLite sees a single writer per batcher.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class GroupCommit(Generic[T, R]):
    """``await submit(item)`` returns ``write(batch)[i]`` for the item's place in its batch.

    If ``write`` raises, every item of that batch gets the exception.
    """

    def __init__(self, write: Callable[[list[T]], list[R]], name: str) -> None:
        self._write = write
        self._pending: list[tuple[T, asyncio.Future[R]]] = []
        self._writer: asyncio.Task[None] | None = None
        self._executor = ThreadPoolExecutor(1, thread_name_prefix=name)
        self._after: list[Callable[[list[T]], None]] = []
        self._failed: list[Callable[[list[T]], None]] = []
        self.closed = False
        self.batches = 0

    def after_commit(self, callback: Callable[[list[T]], None]) -> None:
        self._after.append(callback)

    def on_failure(self, callback: Callable[[list[T]], None]) -> None:
        """Call ``callback`` with each batch whose write raised (nothing was committed)."""
        self._failed.append(callback)

    async def submit(self, item: T) -> R:
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._pending.append((item, fut))
        if self._writer is None:
            self._writer = asyncio.create_task(self._drain())
        return await asyncio.shield(fut)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                items = [item for item, _ in batch]
                try:
                    results = await loop.run_in_executor(self._executor, self._write, items)
                except Exception as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc)
                    for callback in self._failed:
                        callback(items)
                    continue
                self.batches += 1
                for (_, fut), result in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(result)
                for callback in self._after:
                    callback(items)
        finally:
            self._writer = None

    async def aclose(self) -> None:
        """Let the write in flight (and what waits for it) finish; stop the thread."""
        self.closed = True
        if self._writer is not None:
            await asyncio.shield(self._writer)
        self._executor.shutdown(wait=True)

"""Adaptive (dynamic) batching: concurrent requests for one graph run as one ONNX Runtime call.

A request queues its rows and waits. One task per batcher takes everything queued, up to
`max_batch` rows, runs it on its own thread and hands each request its rows of every named
output. While a batch runs, new requests queue for the next one, so batches grow with load and
a lone request waits for nothing (Triton's dynamic batcher with max_queue_delay 0). `wait_ms`
optionally holds a batch open for more rows; `max_batch=1` turns batching off.

A batch expected to take less than `inline_ms` (its rows times the batcher's running average of
CPU seconds a row) runs on the event loop instead: for a small model, handing a batch to the
thread and its answer back (two wake-ups, the GIL passed twice) cost more than the run itself.
Longer batches keep the loop free for other requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

Outputs = dict[str, np.ndarray]


@dataclass
class Pending:
    rows: object  # feeds {input name: array} or a list of texts: `rows_of` counts them
    count: int
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


def join_feeds(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray] | None:
    """Feeds of several requests as one batch, or None when their trailing shapes differ."""
    first = parts[0]
    if any(part[name].shape[1:] != first[name].shape[1:] for part in parts[1:] for name in first):
        return None
    return {name: np.concatenate([part[name] for part in parts]) for name in first}


def feed_rows(feeds: dict[str, np.ndarray]) -> int:
    return len(next(iter(feeds.values())))


def chain(parts: list[list]) -> list:
    return [row for part in parts for row in part]


class Batcher:
    """`await batcher(rows)` -> {output name: that request's rows}. `run(rows)` runs one batch
    and returns every named output with one row per input row; `join` makes one batch of the
    rows of several requests (None: they cannot share a batch, each runs alone); `rows_of`
    counts a request's rows. `on_batch(queue_seconds, rows)` is told of every batch run."""

    def __init__(
        self,
        name: str,
        run: Callable[[object], Outputs],
        max_batch: int,
        wait_ms: float = 0.0,
        join: Callable[[list], object | None] = join_feeds,
        rows_of: Callable[[object], int] = feed_rows,
        on_queued: Callable[[float], None] | None = None,
        inline_ms: float = 0.0,
    ):
        self.name, self.run, self.join, self.rows_of = name, run, join, rows_of
        self.max_batch, self.wait_s, self.inline_s = max_batch, wait_ms / 1000, inline_ms / 1000
        self.row_seconds: float | None = None  # running average of CPU seconds a row; None: no batch ran yet
        self.on_queued = on_queued
        self.queue: asyncio.Queue[Pending | None] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self.task: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.closed = False

    async def __call__(self, rows) -> Outputs:
        loop = asyncio.get_running_loop()
        if self.closed:  # a request routed here just before the version was retired
            return await loop.run_in_executor(None, self.run, rows)
        if self.task is None or self.task.done():
            self.queue, self.loop = asyncio.Queue(), loop
            self.task = loop.create_task(self._serve(), name=f"batcher-{self.name}")
        pending = Pending(rows, self.rows_of(rows), loop.create_future())
        self.queue.put_nowait(pending)
        return await pending.future

    def close(self) -> None:
        """Finish what is queued, then stop (callable from any thread)."""
        self.closed = True
        if self.loop is not None and self.queue is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.queue.put_nowait, None)
        else:
            self.executor.shutdown(wait=False)

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        carried: Pending | None = None
        while True:
            first = carried or await self.queue.get()
            if first is None:  # closed, and nothing queued before the close is left
                self.executor.shutdown(wait=False)
                return
            batch, carried = [first], None
            size = first.count
            deadline = first.queued_at + self.wait_s
            while size < self.max_batch:
                if not self.queue.empty():
                    item = self.queue.get_nowait()
                elif self.wait_s and time.perf_counter() < deadline:
                    try:
                        item = await asyncio.wait_for(self.queue.get(), deadline - time.perf_counter())
                    except TimeoutError:
                        break
                else:
                    break
                if item is None:
                    self.queue.put_nowait(None)  # stop after this batch
                    break
                if size + item.count > self.max_batch:
                    carried = item  # first in the next batch, so a big request is never starved
                    break
                batch.append(item)
                size += item.count
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            if self.on_queued is not None:
                started = time.perf_counter()
                for p in batch:
                    self.on_queued(started - p.queued_at)
            await self._run_batch(loop, batch)

    async def _run_batch(self, loop, batch: list[Pending]) -> None:
        joined = self.join([p.rows for p in batch]) if len(batch) > 1 else batch[0].rows
        if joined is None:
            for p in batch:
                await self._run_batch(loop, [p])
            return
        rows = sum(p.count for p in batch)
        try:
            if self.inline_s and self.row_seconds is not None and rows * self.row_seconds <= self.inline_s:
                outputs = self.timed_run(joined, rows)
            else:
                outputs = await loop.run_in_executor(self.executor, self.timed_run, joined, rows)
        except Exception as e:
            if len(batch) > 1:  # one request's bad rows must not fail the others: each alone
                for p in batch:
                    await self._run_batch(loop, [p])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(e)
            return
        start = 0
        for p in batch:
            if not p.future.done():
                p.future.set_result({name: array[start : start + p.count] for name, array in outputs.items()})
            start += p.count

    def timed_run(self, joined, rows: int) -> Outputs:
        started = time.thread_time()
        outputs = self.run(joined)
        per_row = (time.thread_time() - started) / max(rows, 1)
        self.row_seconds = per_row if self.row_seconds is None else 0.8 * self.row_seconds + 0.2 * per_row
        return outputs

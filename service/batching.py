"""Adaptive (dynamic) batching: concurrent requests for one model run as one ONNX Runtime call.

A request queues its rows and waits. One task per model takes everything queued, up to
`max_batch` rows, runs it on its own thread and hands each request its slice of the output.
While a batch runs, new requests queue for the next one, so batches grow with load and a
lone request waits for nothing (Triton's dynamic batcher with max_queue_delay 0). `wait_ms`
optionally holds a batch open for more rows; `max_batch=1` turns batching off.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Pending:
    rows: Sequence
    future: asyncio.Future
    queued_at: float = field(default_factory=time.perf_counter)


class Batcher:
    """`await batcher(rows)` -> the output rows for those rows. `run(rows)` runs one batch and
    returns an array with one row per input row; `join` combines the rows of several requests
    (arrays are concatenated; lists of texts need `join=chain`)."""

    def __init__(
        self,
        name: str,
        run: Callable[[Sequence], np.ndarray],
        max_batch: int,
        wait_ms: float = 0.0,
        join: Callable[[list[Sequence]], Sequence] = np.concatenate,
    ):
        self.name, self.run, self.join = name, run, join
        self.max_batch, self.wait_s = max_batch, wait_ms / 1000
        self.queue: asyncio.Queue[Pending] | None = None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"batch-{name}")
        self.task: asyncio.Task | None = None

    async def __call__(self, rows: Sequence):
        if self.task is None or self.task.done():
            self.queue = asyncio.Queue()
            self.task = asyncio.get_running_loop().create_task(self._serve(), name=f"batcher-{self.name}")
        pending = Pending(rows, asyncio.get_running_loop().create_future())
        await self.queue.put(pending)
        return await pending.future

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        carried: Pending | None = None
        while True:
            batch = [carried or await self.queue.get()]
            carried = None
            size = len(batch[0].rows)
            deadline = batch[0].queued_at + self.wait_s
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
                if size + len(item.rows) > self.max_batch:
                    carried = item  # first in the next batch, so a big request is never starved
                    break
                batch.append(item)
                size += len(item.rows)
            batch = [p for p in batch if not p.future.cancelled()]
            if not batch:
                continue
            try:
                outputs = await loop.run_in_executor(self.executor, self._run_joined, [p.rows for p in batch])
            except Exception as e:  # the error belongs to the requests, not to the batching task
                for p in batch:
                    if not p.future.done():
                        p.future.set_exception(e)
                continue
            for p, output in zip(batch, outputs):
                if not p.future.done():
                    p.future.set_result(output)

    def _run_joined(self, parts: list[Sequence]) -> list[np.ndarray]:
        if len(parts) == 1:
            return [self.run(parts[0])]
        return np.split(self.run(self.join(parts)), np.cumsum([len(part) for part in parts])[:-1])


def chain(parts: list[list]) -> list:
    return [row for part in parts for row in part]

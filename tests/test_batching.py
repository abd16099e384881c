"""service/batching.py on its own: rows come back to the request that sent them, batches respect
their limit, a failing request fails alone, cancelled and closed batchers behave, and short
batches run on the event loop once their cost is known."""

import asyncio
import os
import threading
import time

import numpy as np
import pytest

from service.batching import Batcher, chain
from service.tasks import default_inline_batch_ms


class Recorder:
    """A `run` that doubles its rows, remembers each batch's size, and fails on a negative row."""

    def __init__(self):
        self.batches = []

    def __call__(self, feeds):
        x = feeds["x"]
        self.batches.append(len(x))
        if (x < 0).any():
            raise ValueError("negative row")
        return {"double": x * 2, "sum": x.sum(axis=1, keepdims=True)}


def feeds(*rows):
    return {"x": np.array(rows, dtype=np.float32).reshape(len(rows), -1)}


async def gather(batcher, requests):
    return await asyncio.gather(*(batcher(r) for r in requests), return_exceptions=True)


def test_every_request_gets_its_own_rows_of_every_output():
    run = Recorder()
    batcher = Batcher("t", run, max_batch=64)
    requests = [feeds(*[[i * 10 + j, -0.0] for j in range(1 + i % 3)]) for i in range(20)]
    answers = asyncio.run(gather(batcher, requests))
    for request, answer in zip(requests, answers):
        np.testing.assert_array_equal(answer["double"], request["x"] * 2)
        np.testing.assert_array_equal(answer["sum"], request["x"].sum(axis=1, keepdims=True))
    assert sum(run.batches) == sum(len(r["x"]) for r in requests)
    assert len(run.batches) < len(requests), "concurrent requests never shared a batch"


def test_a_batch_never_passes_its_limit_and_a_big_request_is_carried_over():
    run = Recorder()
    batcher = Batcher("t", run, max_batch=4)
    requests = [feeds([1, 1]), feeds([2, 2], [2, 2], [2, 2]), feeds([3, 3], [3, 3]), feeds([4, 4])]
    answers = asyncio.run(gather(batcher, requests))
    assert all(size <= 4 for size in run.batches), run.batches
    assert run.batches[:2] == [4, 3], "the request that did not fit must start the next batch"
    np.testing.assert_array_equal(answers[2]["double"], [[6, 6], [6, 6]])


def test_a_limit_of_one_runs_every_row_alone():
    run = Recorder()
    batcher = Batcher("t", run, max_batch=1)
    asyncio.run(gather(batcher, [feeds([i, i]) for i in range(5)]))
    assert run.batches == [1] * 5


def test_a_failing_request_fails_alone():
    run = Recorder()
    batcher = Batcher("t", run, max_batch=64)
    answers = asyncio.run(gather(batcher, [feeds([1, 1]), feeds([-1, 1]), feeds([2, 2])]))
    assert isinstance(answers[1], ValueError)
    np.testing.assert_array_equal(answers[0]["double"], [[2, 2]])
    np.testing.assert_array_equal(answers[2]["double"], [[4, 4]])


def test_requests_whose_shapes_differ_run_apart():
    run = Recorder()
    batcher = Batcher("t", run, max_batch=64)
    answers = asyncio.run(gather(batcher, [feeds([1, 1]), feeds([1, 2, 3]), feeds([4, 4])]))
    np.testing.assert_array_equal(answers[1]["sum"], [[6]])
    assert sum(run.batches) == 3


def test_a_cancelled_request_is_dropped_and_the_others_answered():
    started = []

    def slow(feeds):
        started.append(len(feeds["x"]))
        import time

        time.sleep(0.05)
        return {"y": feeds["x"]}

    async def scenario():
        batcher = Batcher("t", slow, max_batch=64)
        first = asyncio.ensure_future(batcher(feeds([1])))
        await asyncio.sleep(0.01)  # the first batch runs; these two queue
        cancelled = asyncio.ensure_future(batcher(feeds([2])))
        kept = asyncio.ensure_future(batcher(feeds([3])))
        await asyncio.sleep(0)
        cancelled.cancel()
        return await first, await kept

    first, kept = asyncio.run(scenario())
    assert first["y"].tolist() == [[1]] and kept["y"].tolist() == [[3]]
    assert started == [1, 1], "the cancelled request's row ran"


def test_texts_join_as_lists_and_a_closed_batcher_still_answers():
    def lengths(texts):
        return {"n": np.array([[len(t)] for t in texts])}

    async def scenario():
        batcher = Batcher("t", lengths, max_batch=64, join=chain, rows_of=len)
        both = await asyncio.gather(batcher(["a", "bb"]), batcher(["ccc"]))
        batcher.close()
        late = await batcher(["dddd"])
        return both, late

    (first, second), late = asyncio.run(scenario())
    assert first["n"].tolist() == [[1], [2]] and second["n"].tolist() == [[3]] and late["n"].tolist() == [[4]]


def test_queue_time_is_reported_for_every_request():
    waited = []
    batcher = Batcher("t", Recorder(), max_batch=64, on_queued=waited.append)
    asyncio.run(gather(batcher, [feeds([i, i]) for i in range(6)]))
    assert len(waited) == 6 and all(w >= 0 for w in waited)


@pytest.mark.parametrize("wait_ms", [0, 300])
def test_holding_a_batch_open_collects_later_rows(wait_ms):
    run = Recorder()

    async def scenario():
        batcher = Batcher("t", run, max_batch=64, wait_ms=wait_ms)
        first = asyncio.ensure_future(batcher(feeds([1, 1])))
        await asyncio.sleep(0.02)  # within the 300 ms a batch may wait, long after one that does not
        second = asyncio.ensure_future(batcher(feeds([2, 2])))
        return await first, await second

    asyncio.run(scenario())
    assert run.batches == ([2] if wait_ms else [1, 1])


class ThreadRecorder(Recorder):
    """A Recorder that also notes the thread each batch ran on, and spins `spin_s` of CPU."""

    def __init__(self, spin_s: float = 0.0):
        super().__init__()
        self.threads, self.spin_s = [], spin_s

    def __call__(self, feeds):
        self.threads.append(threading.current_thread())
        started = time.thread_time()
        while time.thread_time() - started < self.spin_s:
            pass
        return super().__call__(feeds)


def one_after_another(batcher, count):
    async def scenario():
        return [await batcher(feeds([i, i])) for i in range(count)]

    return asyncio.run(scenario())


def test_a_short_batch_runs_on_the_event_loop_once_its_cost_is_known():
    run = ThreadRecorder()
    batcher = Batcher("t", run, max_batch=64, inline_ms=50)
    answers = one_after_another(batcher, 3)
    assert run.threads[0] is not threading.main_thread(), "the first batch has no cost yet: it runs on the batch thread"
    assert run.threads[1:] == [threading.main_thread()] * 2
    assert 0 < batcher.row_seconds < 0.05
    np.testing.assert_array_equal(answers[2]["double"], [[4, 4]])


@pytest.mark.parametrize("inline_ms", [0, 1])
def test_a_batch_longer_than_the_bound_runs_on_the_batch_thread(inline_ms):
    run = ThreadRecorder(spin_s=0.005)
    batcher = Batcher("t", run, max_batch=64, inline_ms=inline_ms)
    one_after_another(batcher, 3)
    assert threading.main_thread() not in run.threads
    assert batcher.row_seconds >= 0.005


def test_short_batches_run_inline_only_when_the_workers_fill_the_cores(monkeypatch):
    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("MODELSERVE_WORKERS", str(cores))
    assert default_inline_batch_ms() == 1.0
    if cores > 1:
        monkeypatch.setenv("MODELSERVE_WORKERS", str(cores - 1))
        assert default_inline_batch_ms() == 0.0

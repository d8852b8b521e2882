"""Dynamic batching: concurrent small `/predict` requests scored in one onnxruntime call.

Each request is parsed, validated and encoded on its own, so its unseen and clipped counts stay
its own; then it waits in the batcher's queue. One task drains the queue in arrival order: it
takes the first waiting request and those behind it, up to `max_rows` rows in all, waiting at
most `wait_seconds` from the first one's arrival for more to come; concatenates their rows; runs
the graph once, in the worker-thread pool, while the event loop parses and encodes the next
requests (a request alone is scored on the loop, as without batching: a thread hop costs more
than its call); and hands each request its own rows of every output. A request for another
model (a reload came in between) or for other outputs (explanations) ends a batch and starts the
next, so nothing is reordered or mixed. When a merged call fails, its requests are run again one
by one, so an error reaches only the request that causes it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from weakref import WeakKeyDictionary

import anyio.to_thread
import numpy as np
from prometheus_client import CollectorRegistry, Histogram

from service.errors import NotReady
from service.metrics import ServiceMetrics
from service.runtime import Batch, ServedModel
from service.schemas import PredictRequest

REQUEST_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
Outputs = dict[str, np.ndarray]
_HISTOGRAMS: WeakKeyDictionary[CollectorRegistry, Histogram] = WeakKeyDictionary()


@dataclass
class _Waiting:
    """One request's encoded rows, waiting for a call."""

    model: ServedModel
    batch: Batch
    outputs: list[str]
    arrived: float
    answer: asyncio.Future[Outputs] = field(repr=False)

    def joins(self, first: _Waiting) -> bool:
        return self.model is first.model and self.outputs == first.outputs


class Batcher:
    """Gathers the encoded rows of concurrent requests into one onnxruntime call."""

    def __init__(
        self, max_rows: int, wait_seconds: float, metrics: ServiceMetrics | None = None
    ) -> None:
        self.max_rows = max_rows
        self.wait_seconds = wait_seconds
        self._waiting: deque[_Waiting] = deque()
        self._scoring: list[_Waiting] = []
        self._arrived: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._merged = _requests_per_call(metrics.registry) if metrics is not None else None

    async def predict(self, model: ServedModel, request: PredictRequest) -> dict[str, Any]:
        """The `/predict` answer, as `ServedModel.predict` gives it, scored in a shared call."""
        batch = model.encode(request)
        out = await self.run(model, batch, model.outputs(request))
        return model.answer(request, batch, out)

    async def run(self, model: ServedModel, batch: Batch, outputs: list[str]) -> Outputs:
        """The graph's `outputs` for the rows of `batch`, as `ServedModel.run` gives them."""
        if self._closed:
            raise NotReady("the server is shutting down")
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done() or self._task.get_loop() is not loop:
            self._arrived = asyncio.Event()
            self._task = loop.create_task(self._drain(), name="batcher")
        assert self._arrived is not None
        answer: asyncio.Future[Outputs] = loop.create_future()
        self._waiting.append(_Waiting(model, batch, outputs, time.monotonic(), answer))
        self._arrived.set()
        return await answer

    async def close(self) -> None:
        """Stop the drain; requests still waiting (none once the server has finished its
        requests) are answered 503 `not_ready`."""
        self._closed = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        _fail([*self._scoring, *self._waiting], NotReady("the server is shutting down"))
        self._waiting.clear()

    async def _drain(self) -> None:
        assert self._arrived is not None
        while True:
            while not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
            await self._gather(self._waiting[0])
            self._scoring = self._take()
            try:
                await self._score(self._scoring)
            except Exception as error:  # answered, so that no request waits for ever
                _fail(self._scoring, error)
            self._scoring = []

    async def _gather(self, first: _Waiting) -> None:
        """Wait, until `wait_seconds` after the first request arrived, for rows to fill a call."""
        assert self._arrived is not None
        deadline = first.arrived + self.wait_seconds
        while self._rows_ready(first) < self.max_rows and time.monotonic() < deadline:
            self._arrived.clear()
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    await self._arrived.wait()
            except TimeoutError:
                return

    def _rows_ready(self, first: _Waiting) -> int:
        rows = 0
        for waiting in self._waiting:
            if not waiting.joins(first):
                return self.max_rows  # the batch can grow no more: do not wait
            rows += len(waiting.batch)
        return rows

    def _take(self) -> list[_Waiting]:
        """The first waiting requests that fit in one call, in arrival order; those whose caller
        has gone are dropped."""
        taken: list[_Waiting] = []
        rows = 0
        while self._waiting:
            waiting = self._waiting[0]
            if taken and (not waiting.joins(taken[0]) or rows + len(waiting.batch) > self.max_rows):
                break
            self._waiting.popleft()
            if waiting.answer.done():
                continue
            taken.append(waiting)
            rows += len(waiting.batch)
        return taken

    async def _score(self, taken: list[_Waiting]) -> None:
        if not taken:
            return
        first = taken[0]
        if self._merged is not None:
            self._merged.observe(len(taken))
        if len(taken) == 1:  # as without batching: a small call is cheaper than a thread hop
            _settle(first)
            return
        merged = _concatenate([w.batch for w in taken])
        try:
            out = await anyio.to_thread.run_sync(first.model.run, merged, first.outputs)
        except Exception:
            for waiting in taken:
                _settle(waiting)
            return
        start = 0
        for waiting in taken:
            stop = start + len(waiting.batch)
            if not waiting.answer.done():
                waiting.answer.set_result({name: rows[start:stop] for name, rows in out.items()})
            start = stop


def _requests_per_call(registry: CollectorRegistry) -> Histogram:
    """The registry's `afm_batch_requests`, registered once however many apps share it."""
    histogram = _HISTOGRAMS.get(registry)
    if histogram is None:
        histogram = _HISTOGRAMS[registry] = Histogram(
            "afm_batch_requests",
            "Requests scored together per inference call of the dynamic batcher.",
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
    return histogram


def _fail(requests: list[_Waiting], error: Exception) -> None:
    for waiting in requests:
        if not waiting.answer.done():
            waiting.answer.set_exception(error)


def _settle(waiting: _Waiting) -> None:
    """Score one request alone, on the loop, and hand it its outputs or its error."""
    try:
        out = waiting.model.run(waiting.batch, waiting.outputs)
    except Exception as error:
        if not waiting.answer.done():
            waiting.answer.set_exception(error)
        return
    if not waiting.answer.done():
        waiting.answer.set_result(out)


def _concatenate(batches: list[Batch]) -> Batch:
    """One batch of the rows of `batches`, in order, with their unseen and clipped counts summed
    (for the metrics `ServedModel.run` keeps)."""
    return Batch(
        np.concatenate([b.index for b in batches]),
        np.concatenate([b.value for b in batches]),
        _summed([b.unseen for b in batches]),
        _summed([b.clipped for b in batches]),
        (),
        {},
    )


def _summed(counts: list[Mapping[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for each in counts:
        for name, count in each.items():
            total[name] = total.get(name, 0) + count
    return total

"""The admission gate on its own: places, the queue, deadlines and their counts."""

from __future__ import annotations

import asyncio
import threading

import pytest

from service.admission import Admission
from service.errors import Overloaded
from service.metrics import ServiceMetrics
from service.settings import Settings, usable_cores


def count(metrics: ServiceMetrics, result: str) -> float:
    value = metrics.registry.get_sample_value("afm_admission_total", {"result": result})
    return value or 0.0


def test_a_request_beyond_the_places_and_the_queue_is_refused_at_once() -> None:
    metrics = ServiceMetrics()
    gate = Admission(max_in_flight=1, max_queued=0, deadline_seconds=60, metrics=metrics)

    async def run() -> None:
        async with gate.admit():
            assert gate.in_flight == 1
            with pytest.raises(Overloaded, match="at capacity"):
                async with gate.admit():
                    pass
        async with gate.admit():
            assert gate.in_flight == 1

    asyncio.run(run())
    assert gate.in_flight == gate.queued == 0
    assert (count(metrics, "admitted"), count(metrics, "rejected")) == (2, 1)


def test_a_queued_request_gets_the_place_that_frees_up() -> None:
    metrics = ServiceMetrics()
    gate = Admission(max_in_flight=1, max_queued=1, deadline_seconds=60, metrics=metrics)
    order: list[str] = []

    async def hold(name: str, release: asyncio.Event) -> None:
        async with gate.admit():
            order.append(name)
            await release.wait()

    async def run() -> None:
        release = asyncio.Event()
        first = asyncio.create_task(hold("first", release))
        await asyncio.sleep(0)
        second = asyncio.create_task(hold("second", release))
        await asyncio.sleep(0)
        assert (gate.in_flight, gate.queued) == (1, 1)
        assert metrics.registry.get_sample_value("afm_requests_queued") == 1
        assert metrics.registry.get_sample_value("afm_requests_in_flight") == 1
        release.set()
        await asyncio.gather(first, second)

    asyncio.run(run())
    assert order == ["first", "second"]
    assert (count(metrics, "admitted"), count(metrics, "rejected")) == (2, 0)


def test_a_request_still_queued_at_its_deadline_is_dropped() -> None:
    metrics = ServiceMetrics()
    gate = Admission(max_in_flight=1, max_queued=4, deadline_seconds=0.05, metrics=metrics)

    async def run() -> None:
        async with gate.admit():
            with pytest.raises(Overloaded, match="deadline"):
                async with gate.admit():
                    raise AssertionError("a request past its deadline must not run")
            assert gate.queued == 0

    asyncio.run(run())
    assert (count(metrics, "admitted"), count(metrics, "expired")) == (1, 1)


def test_a_ticket_past_its_deadline_refuses_the_work() -> None:
    metrics = ServiceMetrics()
    gate = Admission(max_in_flight=1, max_queued=0, deadline_seconds=0.01, metrics=metrics)

    async def run() -> None:
        async with gate.admit() as ticket:
            ticket.check()
            await asyncio.sleep(0.05)
            with pytest.raises(Overloaded):
                ticket.check()

    asyncio.run(run())
    assert count(metrics, "expired") == 1


def test_requests_beyond_the_worker_threads_wait_without_a_thread() -> None:
    gate = Admission(
        max_in_flight=8, max_queued=0, deadline_seconds=60, metrics=ServiceMetrics(),
        worker_threads=2,
    )  # fmt: skip
    lock, release = threading.Lock(), threading.Event()
    running, most = 0, 0

    def score() -> None:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        release.wait(timeout=10)
        with lock:
            running -= 1

    async def run() -> None:
        async def one() -> None:
            async with gate.admit() as ticket:
                await ticket.in_thread(score)

        calls = [asyncio.create_task(one()) for _ in range(6)]
        for _ in range(200):  # until two threads run; a third would have started by then too
            await asyncio.sleep(0.01)
            if running == 2:
                break
        await asyncio.sleep(0.1)
        assert (running, gate.in_flight) == (2, 6)
        release.set()
        await asyncio.gather(*calls)

    asyncio.run(run())
    assert most == 2


def test_the_default_thread_bound_is_a_worker_processes_share_of_the_cores() -> None:
    cores = usable_cores()
    assert Settings(workers=1, intra_op_threads=1).inference_thread_limit() == cores
    assert Settings(workers=cores, intra_op_threads=1).inference_thread_limit() == 1
    assert Settings(workers=1, intra_op_threads=cores + 1).inference_thread_limit() == 1
    assert Settings(workers=4, inference_threads=3).inference_thread_limit() == 3

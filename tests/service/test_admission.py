"""The admission gate on its own: places, the queue, deadlines and their counts."""

from __future__ import annotations

import asyncio
import sys
import threading

import pytest

from service import admission
from service.admission import Admission
from service.errors import Overloaded
from service.metrics import ServiceMetrics
from service.settings import Settings, usable_cores
from service.workers import build_server


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


class Clock:
    """`time.monotonic` for the gate, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(admission, "monotonic", fake)
    return fake


def test_a_request_whose_expected_wait_is_over_the_budget_is_refused_at_once(clock: Clock) -> None:
    metrics = ServiceMetrics()
    gate = Admission(
        max_in_flight=8, max_queued=8, deadline_seconds=60, metrics=metrics,
        wait_budget_seconds=0.05,
    )  # fmt: skip

    async def run() -> None:
        assert gate.expected_wait() == 0.0
        async with gate.admit() as ticket:  # computed in 40 ms: the time per request
            ticket.check()
            clock.now += 0.04
        assert gate.seconds_per_request == pytest.approx(0.04)
        async with gate.admit():  # one ahead: 40 ms expected, within 50 ms
            assert gate.expected_wait() == pytest.approx(0.04)
            async with gate.admit():  # two ahead: 80 ms expected
                with pytest.raises(Overloaded, match="at capacity") as refusal:
                    async with gate.admit():
                        raise AssertionError("a request over the wait budget must not run")
                assert "expected wait over 50 ms" in str(refusal.value.body())

    asyncio.run(run())
    assert gate.in_flight == gate.queued == 0
    assert (count(metrics, "admitted"), count(metrics, "rejected")) == (3, 1)


def test_the_time_per_request_follows_completions_not_waits_for_bodies(clock: Clock) -> None:
    gate = Admission(max_in_flight=8, max_queued=8, deadline_seconds=60, metrics=ServiceMetrics())

    async def run() -> None:
        async with gate.admit():
            clock.now += 5.0  # a body that never arrives: no measure of the work
        assert gate.seconds_per_request == 0.0
        async with gate.admit() as first, gate.admit() as second:
            first.check()
            second.check()
            clock.now += 0.02  # the second completes 20 ms after both were ready
        # the first completes at the same instant: it counts from the completion before it
        assert gate.seconds_per_request == pytest.approx(0.02 * (1 - admission.SMOOTHING))
        async with gate.admit() as third:
            clock.now += 1.0  # idle: not counted
            third.check()
            clock.now += 0.02
        expected = 0.02 * (1 - admission.SMOOTHING)
        expected += admission.SMOOTHING * (0.02 - expected)
        assert gate.seconds_per_request == pytest.approx(expected)

    asyncio.run(run())


def test_without_a_wait_budget_only_the_counts_bound_the_queue() -> None:
    gate = Admission(max_in_flight=1, max_queued=1, deadline_seconds=60, metrics=ServiceMetrics())
    gate.seconds_per_request = 10.0

    async def run() -> None:
        async with gate.admit():
            assert gate.expected_wait() == 10.0
            waiting = asyncio.create_task(gate.enter())
            await asyncio.sleep(0)
            assert gate.queued == 1
        gate.leave(await waiting)

    asyncio.run(run())


def test_a_server_sets_the_gil_switch_interval_it_is_given() -> None:
    before = sys.getswitchinterval()
    try:
        build_server(Settings(gil_switch_interval_ms=0.5, workers=1))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)

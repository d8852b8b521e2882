"""Admission control: a bounded wait for inference requests, a bounded number in flight and
queued, each with a deadline, and a bounded number of them scored at once in worker threads.

A request is refused at once (503 `overloaded`) when the requests ahead of it (in flight and
queued) would keep it waiting longer than `wait_budget_seconds`: its wait is estimated as their
number times the measured time per request, the time between recent completions while requests
were ready to compute. That bound follows the size of the requests and the speed of the machine:
a few large requests fill it, many small ones do not. Past that, a request takes a place when one
is free, waits for one while fewer than `max_queued` wait, and is refused at once otherwise. A
request still waiting at its deadline, or whose deadline passed while its body arrived, is
refused instead of computed. The gate is an ASGI middleware, so a refusal costs no routing and
no body; the probes, `/model` and `/metrics` never pass through it. Requests scored in a worker
thread take one of `worker_threads` more: the others wait without a thread, so that they do not
take the CPU and the GIL from the event loop, which answers the probes and the refusals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass
from time import monotonic
from typing import TypeVar

import anyio
import anyio.to_thread
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Overloaded
from service.metrics import ServiceMetrics
from service.responses import OrjsonResponse

GATED = (("POST", "/predict"), ("GET", "/explain"))
TICKET = "afm.ticket"
SMOOTHING = 0.1
"""Weight of the newest completion in the running mean of the time per request."""
T = TypeVar("T")


@dataclass
class Ticket:
    """A place held by one request, until `deadline` (a `monotonic()` instant)."""

    deadline: float
    gate: Admission
    ready: float | None = None
    """When its body had arrived and it could be computed (None: not yet, or never)."""

    def check(self) -> None:
        """Refuse the request (503) when its deadline has passed, before it is computed; else
        mark it ready to compute."""
        now = monotonic()
        if now > self.deadline:
            raise self.gate.expired()
        self.ready = now

    async def in_thread(self, call: Callable[[], T]) -> T:
        """`call()` in a worker thread, once one of the gate's `worker_threads` is free."""
        return await self.gate.in_thread(call)


class Admission:
    """The gate in front of inference; a counter and a semaphore on the event loop."""

    def __init__(
        self,
        max_in_flight: int,
        max_queued: int,
        deadline_seconds: float,
        metrics: ServiceMetrics,
        worker_threads: int = 1,
        wait_budget_seconds: float = 0.0,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.deadline_seconds = deadline_seconds
        self.metrics = metrics
        self.worker_threads = worker_threads
        self.wait_budget_seconds = wait_budget_seconds
        self.in_flight = 0
        self.queued = 0
        self.seconds_per_request = 0.0
        """Running mean of the time between completions of requests ready to compute."""
        self._last_done = 0.0
        self._places: asyncio.Semaphore | None = None
        self._threads: anyio.CapacityLimiter | None = None
        metrics.watch_admission(lambda: self.in_flight, lambda: self.queued)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Ticket]:
        """Hold a place for the block; Overloaded when none is free in time."""
        ticket = await self.enter()
        try:
            yield ticket
        finally:
            self.leave(ticket)

    async def enter(self) -> Ticket:
        """Take a place, waiting for one if the queue has room; Overloaded when none is free in
        time. Every ticket returned is given back with `leave()`."""
        if self.wait_budget_seconds and self.expected_wait() > self.wait_budget_seconds:
            raise self._refused(f"expected wait over {self.wait_budget_seconds * 1e3:g} ms")
        ticket = Ticket(monotonic() + self.deadline_seconds, self)
        places = self._places
        if places is None:
            places = self._places = asyncio.Semaphore(self.max_in_flight)
        if places.locked():
            await self._wait(places, ticket)
        else:
            await places.acquire()
        self.in_flight += 1
        self.metrics.admission.labels("admitted").inc()
        return ticket

    async def in_thread(self, call: Callable[[], T]) -> T:
        """`call()` in a worker thread, at most `worker_threads` at once; the rest wait here."""
        threads = self._threads
        if threads is None:
            threads = self._threads = anyio.CapacityLimiter(self.worker_threads)
        return await anyio.to_thread.run_sync(call, limiter=threads)

    def expected_wait(self) -> float:
        """Seconds a request arriving now is expected to wait for the requests ahead of it."""
        return (self.in_flight + self.queued) * self.seconds_per_request

    def leave(self, ticket: Ticket) -> None:
        """Give back `ticket`'s place; a request that was computed also updates the time per
        request (from when it was ready, or from the completion before when that came later)."""
        self.in_flight -= 1
        assert self._places is not None
        self._places.release()
        if ticket.ready is not None:
            now = monotonic()
            took = now - max(ticket.ready, self._last_done)
            if self._last_done:
                self.seconds_per_request += SMOOTHING * (took - self.seconds_per_request)
            else:
                self.seconds_per_request = took
            self._last_done = now

    async def _wait(self, places: asyncio.Semaphore, ticket: Ticket) -> None:
        if self.queued >= self.max_queued:
            raise self._refused(f"{self.max_in_flight} in flight and {self.max_queued} queued")
        self.queued += 1
        try:
            await asyncio.wait_for(places.acquire(), ticket.deadline - monotonic())
        except TimeoutError:
            raise self.expired() from None
        finally:
            self.queued -= 1

    def _refused(self, why: str) -> Overloaded:
        self.metrics.admission.labels("rejected").inc()
        return Overloaded("the server is at capacity; try again", [("request", why)])

    def expired(self) -> Overloaded:
        """The refusal of a request whose deadline passed before it was computed, counted."""
        self.metrics.admission.labels("expired").inc()
        return Overloaded(
            "the request waited past its deadline and was not computed; try again",
            [("request", f"waited more than {self.deadline_seconds:g} s")],
        )


@dataclass(frozen=True)
class _GatedRoute:
    path: str


class AdmissionGate:
    """ASGI middleware: a gated request holds a place while the app handles it, its ticket in
    `scope["afm.ticket"]`; a refused one is answered here, before routing or reading its body."""

    def __init__(
        self, app: ASGIApp, admission: Admission, gated: Collection[tuple[str, str]] = GATED
    ) -> None:
        self.app = app
        self.admission = admission
        self.routes = {key: _GatedRoute(key[1]) for key in gated}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get((scope.get("method", ""), scope.get("path", "")))
        if route is None:
            await self.app(scope, receive, send)
            return
        try:
            ticket = await self.admission.enter()
        except Overloaded as refusal:
            scope["route"] = route
            response = OrjsonResponse(refusal.body(), 503, headers={"Retry-After": "1"})
            await response(scope, receive, send)
            return
        scope[TICKET] = ticket
        try:
            await self.app(scope, receive, send)
        finally:
            self.admission.leave(ticket)

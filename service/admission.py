"""Admission control: a bounded number of inference requests in flight and queued, each with a
deadline.

A request takes a place when one is free, waits for one while fewer than `max_queued` wait, and
is refused at once (503 `overloaded`) otherwise. A request still waiting at its deadline, or
whose deadline passed while its body arrived, is refused instead of computed. The probes and
`/metrics` never pass through here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from service.errors import Overloaded
from service.metrics import ServiceMetrics


@dataclass
class Ticket:
    """A place held by one request, until `deadline` (a `time.monotonic()` instant)."""

    deadline: float
    gate: Admission

    def check(self) -> None:
        """Refuse the request (503) when its deadline has passed, before it is computed."""
        if time.monotonic() > self.deadline:
            raise self.gate.expired()


class Admission:
    """The gate in front of inference; a counter and a semaphore on the event loop."""

    def __init__(
        self,
        max_in_flight: int,
        max_queued: int,
        deadline_seconds: float,
        metrics: ServiceMetrics,
    ) -> None:
        self.max_in_flight = max_in_flight
        self.max_queued = max_queued
        self.deadline_seconds = deadline_seconds
        self.metrics = metrics
        self.in_flight = 0
        self.queued = 0
        self._places: asyncio.Semaphore | None = None
        metrics.watch_admission(lambda: self.in_flight, lambda: self.queued)

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[Ticket]:
        """Hold a place for the block; Overloaded when none is free in time."""
        ticket = Ticket(time.monotonic() + self.deadline_seconds, self)
        places = self._places
        if places is None:
            places = self._places = asyncio.Semaphore(self.max_in_flight)
        if places.locked():
            await self._wait(places, ticket)
        else:
            await places.acquire()
        self.in_flight += 1
        self.metrics.admission.labels("admitted").inc()
        try:
            yield ticket
        finally:
            self.in_flight -= 1
            places.release()

    async def _wait(self, places: asyncio.Semaphore, ticket: Ticket) -> None:
        if self.queued >= self.max_queued:
            self.metrics.admission.labels("rejected").inc()
            raise Overloaded(
                "the server is at capacity; try again",
                [("request", f"{self.max_in_flight} in flight and {self.max_queued} queued")],
            )
        self.queued += 1
        try:
            await asyncio.wait_for(places.acquire(), ticket.deadline - time.monotonic())
        except TimeoutError:
            raise self.expired() from None
        finally:
            self.queued -= 1

    def expired(self) -> Overloaded:
        """The refusal of a request whose deadline passed before it was computed, counted."""
        self.metrics.admission.labels("expired").inc()
        return Overloaded(
            "the request waited past its deadline and was not computed; try again",
            [("request", f"waited more than {self.deadline_seconds:g} s")],
        )

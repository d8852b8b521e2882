"""Graceful shutdown: on SIGTERM, drain first, then stop.

Draining, `/readyz` answers 503 and every response carries `Connection: close`, so that load
balancers stop sending and keep-alive clients reconnect elsewhere, while requests are still
served. After `drain_seconds` the listener closes and every request already read is finished.
SIGINT (Ctrl-C), or a second SIGTERM, skips what is left of the drain; a second SIGINT stops at
once.
"""

from __future__ import annotations

import logging
import signal
import time
from types import FrameType

import uvicorn

from service.metrics import ServiceMetrics

log = logging.getLogger("service.api")


class Drain:
    """Whether the server is draining before shutdown; read by `/readyz` and the middleware."""

    def __init__(self) -> None:
        self.draining = False
        self.until = 0.0

    def start(self, seconds: float) -> None:
        self.draining = True
        self.until = time.monotonic() + seconds


class DrainingServer(uvicorn.Server):
    """uvicorn's server, draining for `seconds` on SIGTERM before its shutdown; exits 0."""

    def __init__(
        self, config: uvicorn.Config, drain: Drain, seconds: float, metrics: ServiceMetrics
    ) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_seconds = seconds
        self.metrics = metrics
        self.announced = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig == signal.SIGTERM and not self.drain.draining and not self.should_exit:
            self.drain.start(self.drain_seconds)
        elif self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and not self.announced:
            self.announced = True
            self.metrics.draining.set(1)
            log.info("draining", extra={"seconds": self.drain_seconds})
        if self.drain.draining and time.monotonic() >= self.drain.until:
            self.should_exit = True
        return await super().on_tick(counter)

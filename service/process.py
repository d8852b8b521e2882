"""Run a server as a child process on a free local port and wait until its `/readyz` answers 200.

The end-to-end tests and the serving benchmark start `python -m service` (and the benchmark its
peer) this way.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def service_command(port: int, *options: str) -> list[str]:
    """`python -m service` on the loopback interface at `port`, with more command-line options."""
    return [sys.executable, "-m", "service", "--host", HOST, "--port", str(port), *options]


@dataclass
class ServerProcess:
    """A server running as a child process, its output (stdout and stderr) in `log`."""

    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def stop(self, timeout: float = 15.0) -> None:
        """Interrupt the process (SIGINT: the service stops without draining) and wait for it;
        kill it if it has not exited by `timeout`."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def start(
    command: Sequence[str],
    port: int,
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60.0,
    wait_for: str = "/readyz",
) -> ServerProcess:
    """Start `command` (a server listening on `port`) and return once `wait_for` (`/readyz`, or
    `/healthz` for a server not expected ready yet) answers 200.

    RuntimeError, with the log, when the process exits first or is not ready within `timeout`
    seconds; it is stopped then.
    """
    with open(log, "wb") as out:
        process = subprocess.Popen(
            list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT
        )
    server = ServerProcess(process, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}), {log}:\n{_tail(log)}")
        try:
            if httpx.get(f"{server.url}{wait_for}", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    raise RuntimeError(f"the server was not ready after {timeout:g} s, {log}:\n{_tail(log)}")


def _tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])

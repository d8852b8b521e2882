"""The server-process helper shared by the end-to-end tests and the serving benchmark."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from service.process import free_port, service_command, start


def test_a_server_that_exits_before_ready_is_reported_with_its_log(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; print('no model here'); sys.exit(3)"]
    with pytest.raises(RuntimeError, match=r"exited \(3\)(.|\n)*no model here"):
        start(command, free_port(), tmp_path / "server.log", timeout=30)


def test_a_server_never_ready_is_stopped_after_the_timeout(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import time; time.sleep(60)"]
    with pytest.raises(RuntimeError, match=r"not ready after 0\.5 s"):
        start(command, free_port(), tmp_path / "server.log", timeout=0.5)


def test_the_service_command_listens_on_the_loopback_port() -> None:
    command = service_command(8123, "--models-dir", "models")
    assert command[1:] == [
        "-m", "service", "--host", "127.0.0.1", "--port", "8123", "--models-dir", "models",
    ]  # fmt: skip

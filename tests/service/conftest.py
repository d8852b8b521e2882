"""Fixtures for the service tests: bundles copied from the session's tiny AFM, and a real server
process (`python -m service`) on a free port, started where `import torch` fails."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from service.client import AFMClient
from service.process import ServerProcess, free_port, service_command, start
from training import bundle as bundles

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "test-key"
CONTEXT: dict[str, str | float] = {
    "user": "0",
    "daytime": "morning",
    "weekday": "sunday",
    "isweekend": "weekend",
    "homework": "home",
    "cost": "free",
    "weather": "weather0",
    "country": "country0",
    "city": "0",
    "price": 1.5,
}
SERVER_ENV = {
    "AFM_API_KEYS": API_KEY,
    "AFM_REPLICA": "replica-test",
    "AFM_MAX_CANDIDATES": "300",
    "AFM_MAX_BODY_BYTES": str(256 * 1024),
    "AFM_THREADPOOL_MIN_ROWS": "50",
    # One process unless a test asks for more: per-process counts and start-up time stay simple;
    # tests/service/test_workers.py and test_drain.py start several workers on purpose.
    "AFM_WORKERS": "1",
}


@dataclass
class Server:
    """A running service process."""

    running: ServerProcess
    models_dir: Path

    @property
    def url(self) -> str:
        return self.running.url

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.running.process

    @property
    def log(self) -> Path:
        return self.running.log

    def client(self, **options: Any) -> AFMClient:
        return AFMClient(self.url, **options)

    def logs(self) -> list[dict[str, Any]]:
        lines = self.log.read_text(errors="replace").splitlines()
        return [json.loads(line) for line in lines if line.startswith("{")]


def torch_blocker(folder: Path) -> Path:
    """A folder that, first on PYTHONPATH, makes `import torch` fail."""
    package = folder / "torch"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text(
        'raise ImportError("torch is blocked: the service must not import it")\n'
    )
    return folder


def blocked_torch_env(folder: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AFM_")}
    paths = [str(torch_blocker(folder)), str(ROOT), env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    env.update(extra)
    return env


def copy_models(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def publish_copy(models_dir: Path, name: str, version: int) -> Path:
    """Publish the newest bundle of `name` again as `version` (a valid new bundle)."""
    source = bundles.resolve(models_dir, name)
    target = models_dir / name / str(version)
    shutil.copytree(source, target)
    manifest = json.loads((target / "bundle.json").read_text())
    manifest["version"] = version
    (target / "bundle.json").write_text(json.dumps(manifest))
    return target


def start_server(
    models_dir: Path, workdir: Path, *options: str, wait_for: str = "/readyz", **env: str
) -> Server:
    """`python -m service` on `models_dir`, returned once `wait_for` answers 200."""
    port = free_port()
    running = start(
        service_command(port, "--models-dir", str(models_dir), *options),
        port,
        workdir / f"server-{port}.log",
        env=blocked_torch_env(workdir / "shim", **{**SERVER_ENV, **env}),
        cwd=ROOT,
        wait_for=wait_for,
    )
    return Server(running, models_dir)


def stop_server(server: Server) -> None:
    server.running.stop()


@contextlib.contextmanager
def serving_a_copy(models_dir: Path, workdir: Path) -> Iterator[Server]:
    """A service process on a private copy of the models, stopped however the block ends."""
    running = start_server(copy_models(models_dir, workdir / "models"), workdir)
    try:
        yield running
    finally:
        stop_server(running)


@pytest.fixture(scope="session")
def server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One service process for the tests that leave its model alone."""
    with serving_a_copy(models_dir, tmp_path_factory.mktemp("server")) as running:
        yield running


@pytest.fixture()
def servers() -> Iterator[list[Server]]:
    """Servers a test starts, stopped however it ends."""
    started: list[Server] = []
    yield started
    for server in started:
        stop_server(server)


@pytest.fixture()
def client(server: Server) -> Iterator[AFMClient]:
    with server.client(api_key=API_KEY) as afm:
        yield afm


@pytest.fixture(scope="session")
def served_bundle(tiny_bundle: Path) -> bundles.Bundle:
    return bundles.read(tiny_bundle)


def candidate_items(bundle: bundles.Bundle, n: int) -> list[str]:
    """n distinct known items, in an order that is not the vocabulary's."""
    items = list(bundle.encoder.categorical("item").vocabulary)[:n]
    return items[1::2] + items[0::2]

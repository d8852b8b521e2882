"""Several worker processes on one port (`--workers N`), under uvicorn's own supervisor.

The supervisor binds N sockets to the port (SO_REUSEPORT: the kernel spreads new connections over
them), makes a run directory and starts N workers; each builds its own app, runtime and
onnxruntime session, as a single process does, and accepts on its own socket (a replacement
worker takes over the socket of the one it replaces).
They share nothing but the models directory and the run directory:

    <run>/metrics/            PROMETHEUS_MULTIPROC_DIR: every worker's metrics, summed by `/metrics`
    <run>/reload.json         the last reload: generation, model name and version
    <run>/workers/<pid>.json  what each worker applied: generation, model, refusal

`/readyz` answers 200 once every one of the N workers has a model: each writes its state file
before it accepts connections, and again whenever the model it serves changes.

A reload answered by one worker loads the bundle there, writes its name and version (resolved:
never "newest") with the next generation to `reload.json`, and answers once every other live
worker has applied it: each polls the file's change time and loads that version. A worker the
supervisor starts later (to replace one that died) starts on the last reload's version.

SIGTERM to the supervisor reaches every worker, and each drains as a single process does
(`service.drain`); SIGINT reaches every worker as SIGINT (stop without draining). The supervisor
removes the run directory when its workers have exited.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import uvicorn
from prometheus_client import multiprocess
from uvicorn.supervisors.multiprocess import Multiprocess, Process

from service.api import create_app
from service.drain import DrainingServer
from service.errors import ServiceError
from service.logging_config import configure_logging
from service.metrics import MULTIPROCESS_DIR
from service.protocol import limited_protocol
from service.runtime import ModelRuntime, ServedModel
from service.settings import Settings

log = logging.getLogger("service.workers")

POLL_SECONDS = 0.1
RELOAD_WAIT_SECONDS = 120.0
GRACEFUL_SHUTDOWN_SECONDS = 10
PR_SET_PDEATHSIG = 1
HEALTHCHECK_SECONDS = 30
"""How long a worker may take to answer the supervisor's ping before it is replaced: a worker
starting on a busy machine takes seconds to import its libraries before it can answer."""


def build_server(settings: Settings, group: WorkerGroup | None = None) -> uvicorn.Server:
    """The app and its draining uvicorn server, as one process (or one worker) runs them."""
    configure_logging(settings.log_level)
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1e3)
    app = create_app(settings, workers=group)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=limited_protocol(
            settings.max_header_bytes, settings.header_timeout_seconds, app.state.metrics
        ),
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    return DrainingServer(config, app.state.drain, settings.drain_seconds, app.state.metrics)


class WorkerGroup:
    """One worker's view of the run directory: follows reloads, announces its own, and tells
    whether all `size` workers are ready."""

    def __init__(self, run_dir: Path, size: int) -> None:
        self.run_dir = run_dir
        self.size = size
        self.target = run_dir / "reload.json"
        self.states = run_dir / "workers"
        self.pid = os.getpid()
        self.applied = 0
        self._seen: int | None = None
        self._written: dict[str, Any] | None = None
        self._write_state(None, None)

    def not_ready(self) -> str | None:
        """Why the group is not ready (a worker without a model, or not started yet), or None."""
        states = [
            state
            for path in self.states.glob("*.json")
            if _alive(int(path.stem)) and (state := _read_json(path)) is not None
        ]
        ready = sum(state.get("model") is not None for state in states)
        if ready < self.size:
            return f"{ready} of {self.size} workers have a model loaded and warmed"
        return None

    def follow(self, runtime: ModelRuntime, stop: threading.Event) -> None:
        """Start on the last reload's version if there was one, else as a single process starts;
        then load each reload that another worker announces, until `stop` is set."""
        target = self._read_target()
        if target is not None:
            self._apply(runtime, target)
        else:
            self._write_state(runtime, None)
        if not runtime.ready:
            threading.Thread(
                target=runtime.load_at_start, args=(stop,), name="load", daemon=True
            ).start()
        while not stop.wait(POLL_SECONDS):
            target = self._read_target_if_changed()
            if target is not None and target["generation"] > self.applied:
                self._apply(runtime, target)
            elif runtime.ready and self._written and self._written["model"] != runtime.model.ref:
                self._write_state(runtime, self._written["error"])

    def announce(self, served: ServedModel) -> list[str]:
        """Tell the other workers to load what this one has just loaded; return once each live
        worker has (or `RELOAD_WAIT_SECONDS` have passed), with the problems of those that did not."""
        with self._locked():
            current = self._read_target()
            generation = (current["generation"] if current else 0) + 1
            self.applied = generation
            _write_json(
                self.target,
                {"generation": generation, "name": served.name, "version": served.version},
            )
        self._write_state(None, None, served)
        deadline = time.monotonic() + RELOAD_WAIT_SECONDS
        while True:
            pending, refused = self._behind(generation)
            if not pending:
                return refused
            if time.monotonic() >= deadline:
                return [*refused, *(f"worker {pid} has not applied it yet" for pid in pending)]
            time.sleep(POLL_SECONDS / 2)

    def _behind(self, generation: int) -> tuple[list[int], list[str]]:
        """The live workers that have not applied `generation`, and those that refused it."""
        pending, refused = [], []
        for path in self.states.glob("*.json"):
            state = _read_json(path)
            pid = int(path.stem)
            if state is None or pid == self.pid or not _alive(pid):
                continue
            if state["generation"] < generation:
                pending.append(pid)
            elif state["generation"] == generation and state.get("error"):
                refused.append(f"worker {pid}: {state['error']}")
        return pending, refused

    def _apply(self, runtime: ModelRuntime, target: dict[str, Any]) -> None:
        error = None
        try:
            runtime.load(target["name"], target["version"])
        except ServiceError as refused:
            error = refused.message
            log.error("reload not applied", extra={"reason": error, "target": target})
        self.applied = max(self.applied, target["generation"])
        self._write_state(runtime, error)

    def _write_state(
        self, runtime: ModelRuntime | None, error: str | None, served: ServedModel | None = None
    ) -> None:
        if served is None and runtime is not None and runtime.ready:
            served = runtime.model
        state = {
            "generation": self.applied,
            "model": served.ref if served is not None else None,
            "error": error,
        }
        self.states.mkdir(parents=True, exist_ok=True)
        _write_json(self.states / f"{self.pid}.json", state)
        self._written = state

    def _read_target(self) -> dict[str, Any] | None:
        return _read_json(self.target)

    def _read_target_if_changed(self) -> dict[str, Any] | None:
        try:
            changed = self.target.stat().st_mtime_ns
        except FileNotFoundError:
            return None
        if changed == self._seen:
            return None
        self._seen = changed
        return self._read_target()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.run_dir / "reload.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)


class Worker(Process):
    """A worker process of uvicorn's supervisor that runs this service's server."""

    def __init__(
        self, config: uvicorn.Config, sockets: list[socket.socket], settings: Settings, run: Path
    ) -> None:
        self.settings = settings
        self.run_dir = run
        self.supervisor = os.getpid()
        super().__init__(config, sockets)

    def target(self, sockets: list[socket.socket] | None = None) -> None:  # pragma: no cover
        _terminate_with_parent(self.supervisor)
        group = WorkerGroup(self.run_dir, self.settings.workers)
        self._server = build_server(self.settings, group)
        super().target(sockets)


class Supervisor(Multiprocess):
    """uvicorn's multiprocess supervisor, starting `Worker`s; it replaces a worker that dies.
    SIGINT is passed on to the workers as SIGINT; SIGHUP, SIGTTIN and SIGTTOU (restart, add or
    remove a worker) are ignored: the number of workers is a setting."""

    def __init__(self, settings: Settings, listening: list[socket.socket], run: Path) -> None:
        config = uvicorn.Config(
            "service.api:create_app",
            workers=settings.workers,
            timeout_worker_healthcheck=HEALTHCHECK_SECONDS,
            log_config=None,
            access_log=False,
        )
        super().__init__(config, sockets=listening)
        self.settings = settings
        self.run_dir = run

    def new_worker(self, index: int) -> Worker:
        """Start the worker that accepts on socket `index`."""
        worker = Worker(self.config, [self.sockets[index]], self.settings, self.run_dir)
        worker.start()
        return worker

    def init_processes(self) -> None:
        self.processes.extend(self.new_worker(index) for index in range(self.processes_num))

    def keep_subprocess_alive(self) -> None:
        for index, worker in enumerate(self.processes):
            if self.should_exit.is_set():
                return
            if worker.is_alive(timeout=self.config.timeout_worker_healthcheck):
                continue
            worker.kill()
            worker.join()
            self.forget(worker)
            if worker.exitcode == uvicorn.config.STARTUP_FAILURE:
                log.error("a worker failed to start; stopping", extra={"pid": worker.pid})
                self.should_exit.set()
                return
            log.warning("a worker died; starting another", extra={"pid": worker.pid})
            self.processes[index] = self.new_worker(index)

    def forget(self, worker: Process) -> None:
        """Drop a worker that has exited from the shared metrics and reload bookkeeping."""
        if worker.pid is not None:
            multiprocess.mark_process_dead(worker.pid, str(self.run_dir / "metrics"))  # type: ignore[no-untyped-call]
            (self.run_dir / "workers" / f"{worker.pid}.json").unlink(missing_ok=True)

    def handle_int(self) -> None:
        for worker in self.processes:
            if worker.pid is not None and worker.exitcode is None:
                os.kill(worker.pid, signal.SIGINT)
        super().handle_int()

    def handle_hup(self) -> None:
        log.info("SIGHUP ignored: POST /admin/reload loads a new bundle in every worker")

    def handle_ttin(self) -> None:
        log.info("SIGTTIN ignored: the number of workers is AFM_WORKERS")

    def handle_ttou(self) -> None:
        log.info("SIGTTOU ignored: the number of workers is AFM_WORKERS")


def serve_workers(settings: Settings, listening: list[socket.socket]) -> None:
    """Run `settings.workers` workers, one on each bound socket, until SIGTERM or SIGINT, in a
    run directory (under TMPDIR) made for this start and removed at its end."""
    run = Path(tempfile.mkdtemp(prefix="afm-service-"))
    (run / "metrics").mkdir()
    (run / "workers").mkdir()
    os.environ[MULTIPROCESS_DIR] = str(run / "metrics")
    try:
        supervisor = Supervisor(settings, listening, run)
        supervisor.run()
    finally:
        os.environ.pop(MULTIPROCESS_DIR, None)
        shutil.rmtree(run, ignore_errors=True)


def _terminate_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM (a drain) when the supervisor dies, so that a
    supervisor killed outright leaves no worker serving on its own (Linux; elsewhere nothing)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write atomically: readers see the old content or the new, never half of it."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(data))
    os.replace(partial, path)

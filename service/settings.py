"""Service settings, read once from the environment (prefix `AFM_`) and the command line."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error", "critical"]
MODEL_NAME = re.compile(r"[A-Za-z0-9._-]+")
MAX_MODEL_NAME_LENGTH = 128


def name_problem(name: str) -> str | None:
    """Why `name` cannot name a folder of the models directory, or None when it can."""
    if len(name) > MAX_MODEL_NAME_LENGTH:
        return f"longer than {MAX_MODEL_NAME_LENGTH} characters"
    if not MODEL_NAME.fullmatch(name) or name in (".", ".."):
        return "a model name is letters, digits, '.', '_' and '-', and not '.' or '..'"
    return None


def usable_cores() -> int:
    """The CPUs this process may run on (its affinity, as `taskset` or a container sets it)."""
    return len(os.sched_getaffinity(0))


def _model_name(name: str) -> str:
    if (problem := name_problem(name)) is not None:
        raise ValueError(problem)
    return name


ModelName = Annotated[str, AfterValidator(_model_name)]
"""A model's folder name in the models directory: `[A-Za-z0-9._-]+`, bounded, not `.` or `..`."""


class Settings(BaseSettings):
    """Everything the service can be told; `AFM_<FIELD>` in the environment sets a field."""

    model_config = SettingsConfigDict(
        env_prefix="AFM_", use_attribute_docstrings=True, extra="ignore", frozen=True
    )

    models_dir: Path = Path("models")
    """Directory holding bundles as `<name>/<version>/` (DESIGN.md, contract 1)."""

    model_name: ModelName | None = None
    """Model to serve; by default the only one in `models_dir` (with several, one must be named)."""

    model_version: Annotated[int, Field(ge=1)] | None = None
    """Version to serve at start; by default the newest published version."""

    load_retry_seconds: Annotated[float, Field(gt=0)] = 5.0
    """Seconds between start-up attempts while no version of the model verifies."""

    host: str = "127.0.0.1"
    """Interface to listen on (`0.0.0.0` inside a container)."""

    port: Annotated[int, Field(ge=0, le=65535)] = 8000
    """TCP port to listen on."""

    intra_op_threads: Annotated[int, Field(ge=0)] = 1
    """onnxruntime intra-op threads per inference (0: one per core); scale out with replicas."""

    workers: Annotated[int, Field(ge=1, default_factory=usable_cores)]
    """Worker processes serving the one port, each with its own onnxruntime session (default: the
    cores this process may use, also when set empty); 1 serves from this process alone."""

    max_candidates: Annotated[int, Field(ge=1)] = 1000
    """Most rows (instances or candidates) one request may ask to score; more is a 413."""

    max_body_bytes: Annotated[int, Field(ge=1024)] = 1 << 20
    """Largest request body, checked on Content-Length and on the bytes read; more is a 413."""

    max_value_length: Annotated[int, Field(ge=1)] = 1024
    """Longest string accepted for a categorical value; longer is a 422."""

    default_top_k: Annotated[int, Field(ge=1)] = 5
    """Pairs per row in `/predict` explanations when the request gives no `top_k`."""

    threadpool_min_rows: Annotated[int, Field(ge=0)] = 128
    """Requests of at least this many rows are scored in a worker thread, off the event loop;
    smaller ones on the loop (or, with `batching`, merged in one call), where the hand-off to a
    thread would cost more than it frees and scoring holds the loop a few milliseconds at most."""

    inference_threads: Annotated[int, Field(ge=0)] = 0
    """Most of those requests scored at once in worker threads of one worker process; the rest
    wait without a thread (0: the usable cores shared among `workers`, divided by
    `intra_op_threads`, at least 1)."""

    gil_switch_interval_ms: Annotated[float, Field(gt=0, le=100)] = 1.0
    """How long a thread scoring in Python may hold the GIL while the event loop waits for it
    (`sys.setswitchinterval`; Python's own default is 5): the loop answers refusals and probes
    between its turns."""

    batching: bool = True
    """Score concurrent `/predict` requests of fewer rows than `threadpool_min_rows` together, in
    one onnxruntime call in a worker thread (dynamic batching)."""

    batch_max_rows: Annotated[int, Field(ge=1)] = 256
    """Most rows one batched call scores, all its requests together."""

    batch_wait_ms: Annotated[float, Field(ge=0, le=1000)] = 0.0
    """Longest a request waits for others to join its batched call, from its arrival; at 0 a
    call takes the requests already waiting, which under load are those that arrived during the
    call before."""

    value_cache_entries: Annotated[int, Field(ge=0)] = 1 << 16
    """Most context values kept encoded across requests, all fields together (0: none)."""

    value_cache_bytes: Annotated[int, Field(ge=0)] = 32 << 20
    """Most bytes those values may take, counted as each value's size plus 256 for its entry."""

    split_cache_entries: Annotated[int, Field(ge=0)] = 64
    """Most ways of splitting the fields between context and candidates kept across requests."""

    max_expected_wait_ms: Annotated[float, Field(ge=0)] = 0.0
    """Longest a `/predict` or `/explain` request may expect to wait for the requests ahead of it
    (in flight and queued, each counted at the measured time per recent request); a request that
    would wait longer is a 503 `overloaded` at once, with `Retry-After` (0: no such bound, only
    `max_in_flight` and `max_queued`). About three times the service time of the largest
    requests keeps the latency of admitted requests under overload near their latency at half
    load; off by default, as a closed loop of more clients than that (a load test, a drain check
    behind a proxy) is then refused rather than queued."""

    max_in_flight: Annotated[int, Field(ge=1)] = 32
    """Most `/predict` and `/explain` requests handled at once; more wait in the queue."""

    max_queued: Annotated[int, Field(ge=0)] = 128
    """Most of those requests waiting for a place; beyond it a request is a 503 `overloaded` at
    once, with `Retry-After`."""

    request_deadline_seconds: Annotated[float, Field(gt=0)] = 5.0
    """Seconds from a request reaching its route after which, still waiting for a place or only
    then done reading its body, it is answered 503 `overloaded` instead of computed."""

    drain_seconds: Annotated[float, Field(ge=0)] = 5.0
    """On SIGTERM: seconds to keep serving, `/readyz` answering 503, before the listener closes."""

    max_header_bytes: Annotated[int, Field(ge=1024)] = 64 << 10
    """Largest request line and headers together; more is a 431 and the connection closes."""

    header_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a connection may take to send a request's line and headers; then a 408."""

    body_timeout_seconds: Annotated[float, Field(gt=0)] = 10.0
    """Seconds a request may take to send its body once its headers are in; then a 408."""

    auth_failure_delay_seconds: Annotated[float, Field(ge=0)] = 0.5
    """Seconds an admin request with a wrong `X-API-Key` waits before its 401."""

    api_keys: Annotated[list[SecretStr], NoDecode] = []
    """Keys accepted in the `X-API-Key` header of admin routes, comma-separated; none: disabled."""

    log_level: LogLevel = "info"
    """Level of the JSON logs written to stderr."""

    access_log: bool = True
    """Log one JSON line per request (method, route, status, duration, request id)."""

    replica: str = Field(default_factory=socket.gethostname)
    """Name of this replica, sent in the `X-Served-By` header of every response (default: host)."""

    @field_validator("workers", mode="before")
    @classmethod
    def _cores_when_empty(cls, value: object) -> object:
        return usable_cores() if value == "" else value

    def inference_thread_limit(self) -> int:
        """`inference_threads`, or when 0 a worker process's share of the usable cores per
        inference's threads: more threads than that only take the CPU and the GIL from the event
        loop."""
        if self.inference_threads:
            return self.inference_threads
        return max(1, usable_cores() // (self.workers * max(1, self.intra_op_threads)))

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            return [key.strip() for key in value.split(",") if key.strip()]
        return value

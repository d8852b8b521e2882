"""Command line: `python -m service --host H --port P [--models-dir D] [--model-name N]
[--workers N]`."""

from __future__ import annotations

import argparse
import socket
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from pydantic_settings import SettingsError

from service.logging_config import configure_logging
from service.settings import Settings
from service.workers import build_server, serve_workers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Serve an AFM bundle over HTTP. Options override AFM_* environment variables.",
    )
    parser.add_argument("--host", help="interface to listen on (AFM_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="TCP port (AFM_PORT, default 8000)")
    parser.add_argument(
        "--models-dir", type=Path, help="directory of <name>/<version>/ bundles (AFM_MODELS_DIR)"
    )
    parser.add_argument(
        "--model-name", help="model to serve (AFM_MODEL_NAME, default: the only one)"
    )
    parser.add_argument(
        "--model-version", type=int, help="version to serve (AFM_MODEL_VERSION, default: newest)"
    )
    parser.add_argument(
        "--threads", type=int, dest="intra_op_threads", help="onnxruntime intra-op threads"
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="worker processes on the one port (AFM_WORKERS, default: the cores this process "
        "may use; 1: no supervisor)",
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level (AFM_LOG_LEVEL, default info)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    try:
        settings = Settings(**overrides)
    except ValidationError as error:
        options = {a.dest: a.option_strings[0] for a in parser._actions if a.option_strings}
        for problem in error.errors(include_url=False):
            print(f"{parser.prog}: {_setting_problem(problem, options)}", file=sys.stderr)
        raise SystemExit(2) from None
    except SettingsError as error:
        print(f"{parser.prog}: invalid settings: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    try:
        listening = bind_all(settings.host, settings.port, settings.workers)
    except OSError as error:
        reason = error.strerror or str(error)
        print(
            f"{parser.prog}: cannot listen on {settings.host}:{settings.port}: {reason}",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
    if settings.workers == 1:
        build_server(settings).run(sockets=listening)
    else:
        configure_logging(settings.log_level)
        serve_workers(settings, listening)


def bind(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to host:port, before any model loads; OSError when it is taken."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    listening = socket.socket(family, socket.SOCK_STREAM)
    try:
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        listening.bind((host, port))
    except OSError:
        listening.close()
        raise
    return listening


def bind_all(host: str, port: int, workers: int) -> list[socket.socket]:
    """One socket for a single process; for several workers, one socket each on the same port
    (SO_REUSEPORT), so that the kernel spreads new connections over the workers instead of the
    first worker to wake taking every connection waiting to be accepted."""
    if workers == 1:
        return [bind(host, port)]
    first = bind(host, port, reuse_port=True)
    sockets = [first]
    try:
        for _ in range(workers - 1):
            sockets.append(bind(host, first.getsockname()[1], reuse_port=True))
    except OSError:
        for bound in sockets:
            bound.close()
        raise
    return sockets


def _setting_problem(problem: Mapping[str, Any], options: Mapping[str, str]) -> str:
    """One line naming the setting (its variable, and its option when it has one)."""
    field = str(problem["loc"][0]) if problem.get("loc") else "settings"
    name = f"AFM_{field.upper()}"
    if field in options:
        name += f" / {options[field]}"
    return f"invalid setting {name}: {problem['msg']} (got {problem.get('input')!r})"


if __name__ == "__main__":
    main()

"""Command line: `python -m service --host H --port P [--models-dir D] [--model-name N]`."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import uvicorn

from service.api import create_app
from service.logging_config import configure_logging
from service.settings import Settings


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
        "--model-name", help="model to serve (AFM_MODEL_NAME, default: the only or newest)"
    )
    parser.add_argument(
        "--model-version", type=int, help="version to serve (AFM_MODEL_VERSION, default: newest)"
    )
    parser.add_argument(
        "--threads", type=int, dest="intra_op_threads", help="onnxruntime intra-op threads"
    )
    parser.add_argument(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="log level (AFM_LOG_LEVEL, default info)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=10,
    )


if __name__ == "__main__":
    main()

"""Virtual environments of their own for the benchmarks' peers (`benchmarks/.envs/<name>`, ignored
by git), so that a peer's dependencies stay out of the project's."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

ENVS = Path(__file__).resolve().parents[2] / "benchmarks" / ".envs"
# Local wheels first (the CPU torch wheel on these machines), then the configured indexes.
WHEELS = Path(os.environ.get("WHEELS_DIR", "/opt/wheels"))


def python_of(name: str) -> Path:
    return ENVS / name / "bin" / "python"


def ensure_env(name: str, packages: Sequence[str]) -> Path:
    """The interpreter of the environment `name`, with `packages` installed on first use (and again
    whenever the list changes)."""
    folder, python = ENVS / name, python_of(name)
    marker = folder / ".installed"
    if marker.exists() and marker.read_text() == " ".join(packages):
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(folder)], check=True)
    links = ["--find-links", str(WHEELS)] if WHEELS.is_dir() else []
    subprocess.run([str(python), "-m", "pip", "install", "-q", *links, *packages], check=True)
    marker.write_text(" ".join(packages))
    return python

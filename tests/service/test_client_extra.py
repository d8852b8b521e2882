"""The client a backend installs: `pip install 'afm[client]'` (the project's wheel and the client
extra's one requirement, httpx) in a fresh venv: `service.client` imports and calls the real
server, and none of the service's own libraries is there to be imported."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from service.client import AFMClient
from tests.service.conftest import CONTEXT, ROOT, Server, candidate_items
from training import bundle as bundles

SOURCES = ("pyproject.toml", "README.md", "LICENSE", "service", "training")
NOT_THERE = ("fastapi", "starlette", "pydantic", "pydantic_settings", "numpy", "onnxruntime",
             "orjson", "prometheus_client", "uvicorn", "torch")  # fmt: skip
SCRIPT = """
import importlib.util, json, sys
import service.client
from service.client import AFMClient, AFMError

url, rows = sys.argv[1], json.loads(sys.argv[2])
with AFMClient(url, timeout=5.0, retries=1, backoff=0.05) as afm:
    ready = afm.ready()
    scores = [afm.predict(rows)["scores"] for _ in range(3)]
    try:
        afm.predict([{"user": "0"}])
        refused = None
    except AFMError as error:
        refused = [error.status_code, error.fields]
    connections = len(afm._http._transport._pool.connections)
installed = [name for name in sys.argv[3:] if importlib.util.find_spec(name.split(".")[0])]
print(json.dumps({"module": service.client.__file__, "ready": ready, "scores": scores, "refused": refused,
                  "connections": connections, "installed": installed}))
"""


def client_requirement() -> str:
    """The `client` extra of pyproject.toml: httpx, in a compatible range."""
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    (requirement,) = extras["optional-dependencies"]["client"]
    assert requirement.startswith("httpx") and ">=" in requirement and "<" in requirement
    return str(requirement)


def client_venv(folder: Path) -> Path:
    """A venv with `afm[client]` installed from the project's wheel; pip comes from the project's
    venv, the wheel is built from a copy of the sources."""
    source = folder / "source"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, source / name)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    wheels = folder / "wheels"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    (wheel,) = wheels.glob("afm-*.whl")
    run = subprocess.run(
        [*pip, "--python", str(python), "install", f"{wheel}[client]"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    return python


def test_the_client_extra_is_httpx_in_a_compatible_range_and_the_core_needs_nothing() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert client_requirement().startswith("httpx")
    assert project["dependencies"] == []


@pytest.mark.slow
def test_the_client_works_with_only_httpx_installed(
    server: Server, served_bundle: bundles.Bundle, tmp_path: Path
) -> None:
    python = client_venv(tmp_path)
    rows = [{**CONTEXT, "item": item} for item in candidate_items(served_bundle, 5)]
    run = subprocess.run(
        [str(python), "-c", SCRIPT, server.url, json.dumps(rows), *NOT_THERE],
        cwd=tmp_path, capture_output=True, text=True,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    seen = json.loads(run.stdout)
    assert seen["installed"] == []
    assert Path(seen["module"]).is_relative_to(python.parent.parent)
    assert seen["ready"] is True
    with AFMClient(server.url) as afm:
        expected = afm.predict(rows)["scores"]
    assert seen["scores"] == [expected] * 3
    assert seen["connections"] == 1  # three calls and a refusal over one pooled connection
    status, fields = seen["refused"]
    assert status == 422 and "instances[0].item" in fields

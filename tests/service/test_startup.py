"""Start-up of a real server process: it serves the newest version that verifies, keeps trying
while none does, says which models exist when told a wrong name, and refuses bad settings or a
taken port with one line and a clean exit."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from service.client import AFMClient, AFMError
from service.process import HOST
from tests.service.conftest import (
    CONTEXT,
    ROOT,
    Server,
    blocked_torch_env,
    start_server,
)
from tests.service.test_reload import NAME, assert_no_server_secrets, broken_copy


def not_ready_body(server: Server) -> dict[str, object]:
    response = httpx.get(f"{server.url}/readyz", timeout=5)
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    body: dict[str, object] = response.json()
    assert_no_server_secrets(body, server.models_dir)
    return body


def test_start_up_serves_the_newest_version_that_verifies_and_logs_the_refused_one(
    models_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    models = shutil.copytree(models_dir, tmp_path / "models")
    broken_copy(models, 2, "checksum")
    servers.append(start_server(models, tmp_path))
    with servers[0].client() as afm:
        assert afm.rank(CONTEXT, [{"item": "1"}])["model"] == {"name": NAME, "version": 1}
    refused = [
        line for line in servers[0].logs() if line["message"] == "start-up refused a version"
    ]
    assert [(line["model"], line["version"]) for line in refused] == [(NAME, 2)]
    assert "checksum mismatch" in refused[0]["reason"]


def test_start_up_without_a_bundle_keeps_trying_and_serves_one_once_it_appears(
    models_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    models = tmp_path / "models"
    models.mkdir()
    servers.append(
        start_server(models, tmp_path, wait_for="/healthz", AFM_LOAD_RETRY_SECONDS="0.3")
    )
    server = servers[0]
    assert not_ready_body(server)["error"]["code"] == "not_ready"  # type: ignore[index]
    with AFMClient(server.url, retries=1, backoff=0) as impatient:
        began = time.monotonic()
        with pytest.raises(AFMError) as early:
            impatient.rank(CONTEXT, [{"item": "1"}])
        assert early.value.status_code == 503
        assert time.monotonic() - began >= 1.0  # waited for the answer's Retry-After: 1
    shutil.copytree(models_dir / NAME / "1", models / ".staging" / "1")
    (models / ".staging").rename(models / NAME)
    with AFMClient(server.url, retries=30) as patient:
        assert patient.rank(CONTEXT, [{"item": "1"}])["model"] == {"name": NAME, "version": 1}
        assert patient.ready()


def test_start_up_with_every_version_refused_is_not_ready_and_says_why(
    models_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    models = shutil.copytree(models_dir, tmp_path / "models")
    broken_copy(models, 2, "checksum")
    shutil.rmtree(models / NAME / "1")
    servers.append(start_server(models, tmp_path, wait_for="/healthz"))
    deadline = time.monotonic() + 30
    message = ""
    while "checksum mismatch" not in message and time.monotonic() < deadline:
        message = str(not_ready_body(servers[0])["error"]["message"])  # type: ignore[index]
        time.sleep(0.1)
    assert "checksum mismatch" in message and f"{NAME}/2" in message


def test_a_wrong_model_name_says_which_models_exist(
    models_dir: Path, tmp_path: Path, servers: list[Server]
) -> None:
    models = shutil.copytree(models_dir, tmp_path / "models")
    servers.append(start_server(models, tmp_path, "--model-name", "nope", wait_for="/healthz"))
    message = str(not_ready_body(servers[0])["error"]["message"])  # type: ignore[index]
    assert "'nope'" in message and NAME in message
    logged = [line for line in servers[0].logs() if line["message"] == "no model served at start"]
    assert logged and NAME in logged[0]["reason"]


def run_service(*options: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "service", "--host", HOST, *options]
    return subprocess.run(
        command,
        env=blocked_torch_env(tmp_path / "shim", **env),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("options", "env", "setting"),
    [
        (["--port", "99999"], {}, "AFM_PORT / --port"),
        ([], {"AFM_PORT": "abc"}, "AFM_PORT / --port"),
        ([], {"AFM_MAX_CANDIDATES": "0"}, "AFM_MAX_CANDIDATES"),
        (["--model-name", "../models"], {}, "AFM_MODEL_NAME / --model-name"),
    ],
)
def test_an_invalid_setting_is_one_line_naming_it_and_exit_code_2(
    tmp_path: Path, options: list[str], env: dict[str, str], setting: str
) -> None:
    done = run_service(*options, tmp_path=tmp_path, **env)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"invalid setting {setting}:" in lines[0], done.stderr
    assert "Traceback" not in done.stderr


def test_a_port_in_use_is_one_line_and_a_clean_exit(models_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run_service("--port", str(port), "--models-dir", str(models_dir), tmp_path=tmp_path)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on {HOST}:{port}" in lines[0], done.stderr

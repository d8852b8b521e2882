"""Which version a real server process serves: the promoted one (newest when none is), a reload
without a version follows a new promotion, a promoted broken version is refused and named, and
several models with none chosen are not guessed between."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from service.client import AFMClient, AFMError
from tests.service.conftest import API_KEY, Server, publish_copy, start_server
from tests.service.test_reload import NAME, assert_no_server_secrets, broken_copy
from training import bundle


@pytest.fixture()
def models(models_dir: Path, tmp_path: Path) -> Path:
    """Versions 1, 2 and 3 of the tiny AFM."""
    copy = shutil.copytree(models_dir, tmp_path / "models")
    publish_copy(copy, NAME, 2)
    publish_copy(copy, NAME, 3)
    return copy


def copy_as(models: Path, name: str) -> None:
    """The tiny AFM's versions again under another model name."""
    shutil.copytree(models / NAME, models / name)
    for manifest in (models / name).glob("*/bundle.json"):
        manifest.write_text(manifest.read_text().replace(f'"name": "{NAME}"', f'"name": "{name}"'))


def not_ready_message(server: Server, wanted: str) -> str:
    """The /readyz 503 message once it mentions `wanted` (start-up runs in the background)."""
    deadline, message = time.monotonic() + 30, ""
    while wanted not in message and time.monotonic() < deadline:
        response = httpx.get(f"{server.url}/readyz", timeout=5)
        assert response.status_code == 503
        assert_no_server_secrets(response.json(), server.models_dir)
        message = str(response.json()["error"]["message"])
        time.sleep(0.1)
    return message


def test_the_promoted_version_is_served_and_the_model_card_shows_it(
    models: Path, tmp_path: Path, servers: list[Server]
) -> None:
    bundle.promote(models, NAME, 2, "ana")
    servers.append(start_server(models, tmp_path))
    with servers[0].client() as afm:
        card = afm.model()
    assert card["version"] == 2
    assert card["promotion"]["version"] == 2 and card["promotion"]["by"] == "ana"
    assert "sha256" not in card["promotion"]


def test_without_a_promotion_the_newest_version_is_served(
    models: Path, tmp_path: Path, servers: list[Server]
) -> None:
    servers.append(start_server(models, tmp_path))
    with servers[0].client() as afm:
        card = afm.model()
    assert card["version"] == 3 and card["promotion"] is None


def test_a_reload_without_a_version_follows_a_new_promotion(
    models: Path, tmp_path: Path, servers: list[Server]
) -> None:
    bundle.promote(models, NAME, 1, "ana")
    servers.append(start_server(models, tmp_path))
    with servers[0].client(api_key=API_KEY) as afm:
        assert afm.model()["version"] == 1
        bundle.promote(models, NAME, 2, "bo")
        assert afm.model()["promotion"]["version"] == 2  # promoted, not yet served
        assert afm.model()["version"] == 1
        reloaded = afm.reload()
        assert reloaded["model"] == {"name": NAME, "version": 2}
        assert reloaded["previous"] == {"name": NAME, "version": 1}
        assert afm.model()["version"] == 2


def test_a_promoted_version_that_fails_verification_is_refused_and_named(
    models: Path, tmp_path: Path, servers: list[Server]
) -> None:
    bundle.promote(models, NAME, 2, "ana")
    broken = broken_copy(models, 4, "checksum")
    (models / NAME / bundle.ALIAS).write_text(
        (models / NAME / bundle.ALIAS).read_text().replace('"version": 2', '"version": 4')
    )
    assert broken.name == "4" and bundle.promoted(models, NAME) == 4
    servers.append(start_server(models, tmp_path, wait_for="/healthz"))
    message = not_ready_message(servers[0], "checksum mismatch")
    assert f"promoted version 4 of model '{NAME}' is refused" in message
    assert f"{NAME}/4" in message and "checksum mismatch" in message
    refused = [
        line for line in servers[0].logs() if line["message"] == "start-up refused a version"
    ]
    assert {line["version"] for line in refused} == {4}  # no fall-back to 3, 2 or 1 (retries too)


def test_a_reload_to_a_broken_promotion_is_refused_and_the_old_version_keeps_serving(
    models: Path, tmp_path: Path, servers: list[Server]
) -> None:
    servers.append(start_server(models, tmp_path))
    bundle.promote(models, NAME, 2, "ana")
    with open(models / NAME / "2" / "model.onnx", "ab") as graph:
        graph.write(b"\0")
    with servers[0].client(api_key=API_KEY) as afm:
        with pytest.raises(AFMError) as refused:
            afm.reload()
        assert refused.value.status_code == 422
        assert f"{NAME}/2" in str(refused.value.body)
        assert afm.model()["version"] == 3


def test_several_models_and_none_chosen_is_not_ready_and_lists_them(
    models: Path, tmp_path: Path, servers: list[Server]
) -> None:
    copy_as(models, "other-afm")
    servers.append(start_server(models, tmp_path, wait_for="/healthz"))
    message = not_ready_message(servers[0], "several models")
    assert f"several models and none chosen (AFM_MODEL_NAME): other-afm, {NAME}" in message
    logged = [line for line in servers[0].logs() if line["message"] == "no model served at start"]
    assert logged and "other-afm" in logged[0]["reason"] and NAME in logged[0]["reason"]
    with AFMClient(servers[0].url) as afm, pytest.raises(AFMError) as early:
        afm.model()
    assert early.value.status_code == 503


def test_several_models_with_one_chosen_serves_its_promoted_version(
    models: Path, tmp_path: Path, servers: list[Server]
) -> None:
    copy_as(models, "other-afm")
    bundle.promote(models, "other-afm", 1, "ana")
    servers.append(start_server(models, tmp_path, AFM_MODEL_NAME="other-afm"))
    with servers[0].client() as afm:
        card = afm.model()
    assert card["name"] == "other-afm" and card["version"] == 1

"""Hot reload on a real server: a new version is verified, warmed and swapped in while serving;
a broken bundle is refused with its reason and the old model keeps serving."""

from __future__ import annotations

import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from service.client import AFMClient, AFMError
from tests.service.conftest import (
    API_KEY,
    CONTEXT,
    Server,
    publish_copy,
    serving_a_copy,
)

NAME = "synthetic-afm"


@pytest.fixture(scope="module")
def reload_server(models_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own: these tests publish new versions into its models directory."""
    with serving_a_copy(models_dir, tmp_path_factory.mktemp("reload")) as running:
        yield running


@pytest.fixture()
def admin(reload_server: Server) -> Iterator[AFMClient]:
    with reload_server.client(api_key=API_KEY) as afm:
        yield afm


def broken_copy(models_dir: Path, version: int, damage: str) -> Path:
    target = models_dir / NAME / str(version)
    shutil.copytree(models_dir / NAME / "1", target)
    manifest = json.loads((target / "bundle.json").read_text())
    manifest["version"] = version
    (target / "bundle.json").write_text(json.dumps(manifest))
    if damage == "checksum":
        with open(target / "model.onnx", "ab") as graph:
            graph.write(b"\0")
    elif damage == "half-written":
        (target / "bundle.json").unlink()
    elif damage == "io":
        manifest["io"]["outputs"]["score"]["shape"] = ["batch", 2]
        (target / "bundle.json").write_text(json.dumps(manifest))
    return target


def test_reload_swaps_in_the_newest_version_while_requests_keep_succeeding(
    admin: AFMClient, reload_server: Server
) -> None:
    assert admin.rank(CONTEXT, [{"item": "1"}])["model"]["version"] == 1
    publish_copy(reload_server.models_dir, NAME, 2)
    failures: list[BaseException] = []
    versions: set[int] = set()
    stop = threading.Event()

    def traffic() -> None:
        with reload_server.client() as afm:
            while not stop.is_set():
                try:
                    versions.add(afm.rank(CONTEXT, [{"item": "1"}])["model"]["version"])
                except BaseException as error:
                    failures.append(error)

    worker = threading.Thread(target=traffic)
    worker.start()
    try:
        answer = admin.reload()
    finally:
        stop.set()
        worker.join()
    assert answer == {
        "model": {"name": NAME, "version": 2},
        "previous": {"name": NAME, "version": 1},
    }
    assert not failures
    assert versions <= {1, 2}
    assert admin.rank(CONTEXT, [{"item": "1"}])["model"]["version"] == 2
    assert admin.model()["version"] == 2
    assert 'afm_model_info{name="synthetic-afm",task="ctr",version="2"} 1.0' in admin.metrics()


@pytest.mark.parametrize(
    ("damage", "reason"),
    [("checksum", "checksum mismatch"), ("half-written", "bundle.json is missing"), ("io", "I/O")],
)
def test_broken_bundle_is_refused_with_its_reason_and_the_old_one_keeps_serving(
    admin: AFMClient, reload_server: Server, damage: str, reason: str
) -> None:
    serving = admin.model()["version"]
    version = max(int(p.name) for p in (reload_server.models_dir / NAME).iterdir()) + 1
    broken_copy(reload_server.models_dir, version, damage)
    try:
        with pytest.raises(AFMError) as refused:
            admin.reload()
        assert refused.value.status_code == 422
        assert refused.value.code == "bundle_refused"
        assert refused.value.fields == ["bundle"]
        assert reason in refused.value.message
        assert admin.ready()
        assert admin.rank(CONTEXT, [{"item": "1"}])["model"]["version"] == serving
    finally:
        shutil.rmtree(reload_server.models_dir / NAME / str(version))


def test_reload_to_an_unknown_version_is_404_naming_the_version(admin: AFMClient) -> None:
    with pytest.raises(AFMError) as unknown:
        admin.reload(version=77)
    assert unknown.value.status_code == 404
    assert unknown.value.fields == ["version"]
    assert admin.ready()


def test_reload_can_go_back_to_an_older_version(admin: AFMClient) -> None:
    answer = admin.reload(version=1)
    assert answer["model"]["version"] == 1
    assert admin.rank(CONTEXT, [{"item": "1"}])["model"]["version"] == 1

"""Hot reload on a real server: a new version is verified, warmed and swapped in while serving;
a broken bundle or a name outside the models directory is refused with its reason, in an error body
that carries no server path or digest, and the old model keeps serving."""

from __future__ import annotations

import json
import re
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

DIGEST = re.compile(r"\b[0-9a-fA-F]{64}\b")

NAME = "synthetic-afm"


def assert_no_server_secrets(body: object, models_dir: Path) -> None:
    """An error body names models and versions, never a server path or a digest."""
    text = json.dumps(body)
    for path in {str(models_dir), str(models_dir.resolve())}:
        assert path not in text
    assert not DIGEST.search(text), text


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
    elif damage == "vocabulary":
        field = next(f for f in manifest["fields"] if f["kind"] == "categorical")
        first = next(iter(field["vocabulary"]))
        field["vocabulary"][first] = manifest["num_features"] + 1000
        (target / "bundle.json").write_text(json.dumps(manifest))
    elif damage == "version":
        manifest["version"] = version + 100
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
    [
        ("checksum", "checksum mismatch"),
        ("half-written", "bundle.json is missing"),
        ("io", "I/O"),
        ("vocabulary", "vocabulary indices must be"),
        ("version", "version mismatch"),
    ],
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
        assert_no_server_secrets(refused.value.body, reload_server.models_dir)
        assert admin.ready()
        assert admin.rank(CONTEXT, [{"item": "1"}])["model"]["version"] == serving
    finally:
        shutil.rmtree(reload_server.models_dir / NAME / str(version))


def test_reload_to_an_unknown_version_is_404_naming_the_version(
    admin: AFMClient, reload_server: Server
) -> None:
    with pytest.raises(AFMError) as unknown:
        admin.reload(version=77)
    assert unknown.value.status_code == 404
    assert unknown.value.fields == ["version"]
    assert_no_server_secrets(unknown.value.body, reload_server.models_dir)
    assert admin.ready()


@pytest.mark.parametrize(
    "name",
    ["..", ".", "../models", "synthetic-afm/..", "/etc", "OUTSIDE", "n" * 300, "a b", ""],
)
def test_reload_names_that_leave_the_models_directory_are_refused_naming_the_name(
    admin: AFMClient, reload_server: Server, tmp_path: Path, name: str
) -> None:
    serving = admin.model()["version"]
    outside = tmp_path / "outside"
    shutil.copytree(reload_server.models_dir / NAME, outside / NAME)
    name = name.replace("OUTSIDE", str(outside / NAME))
    with pytest.raises(AFMError) as refused:
        admin.reload(name=name)
    assert refused.value.status_code == 422
    assert refused.value.fields == ["name"]
    assert_no_server_secrets(refused.value.body, reload_server.models_dir)
    assert admin.rank(CONTEXT, [{"item": "1"}])["model"] == {"name": NAME, "version": serving}


def test_reload_refuses_a_model_folder_that_links_outside_the_models_directory(
    admin: AFMClient, reload_server: Server, tmp_path: Path
) -> None:
    shutil.copytree(reload_server.models_dir / NAME, tmp_path / "elsewhere")
    link = reload_server.models_dir / "linked"
    link.symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    try:
        with pytest.raises(AFMError) as refused:
            admin.reload(name="linked")
        assert refused.value.status_code == 422
        assert refused.value.fields == ["name"]
        assert_no_server_secrets(refused.value.body, reload_server.models_dir)
        assert admin.model()["name"] == NAME
    finally:
        link.unlink()


def test_reload_can_go_back_to_an_older_version(admin: AFMClient) -> None:
    answer = admin.reload(version=1)
    assert answer["model"]["version"] == 1
    assert admin.rank(CONTEXT, [{"item": "1"}])["model"]["version"] == 1

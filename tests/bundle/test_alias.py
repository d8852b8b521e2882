"""promoted.json: promote a version that verifies, resolve follows it, a broken one is refused."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import ROOT, publish_copy
from training import bundle
from training.cli import main

NAME = "synthetic-afm"


@pytest.fixture()
def models(models_dir: Path, tmp_path: Path) -> Path:
    """A private models directory with versions 1 and 2 of the tiny AFM."""
    copy = shutil.copytree(models_dir, tmp_path / "models")
    publish_copy(copy, NAME, 2)
    return copy


def test_resolve_takes_the_newest_version_while_none_is_promoted(models: Path) -> None:
    assert bundle.promoted(models, NAME) is None
    assert bundle.resolve(models, NAME) == models / NAME / "2"


def test_promote_writes_the_alias_and_resolve_follows_it(models: Path) -> None:
    promotion = bundle.promote(models, NAME, 1, "ana")
    assert bundle.promoted(models, NAME) == 1
    assert bundle.resolve(models, NAME) == models / NAME / "1"
    assert bundle.resolve(models) == models / NAME / "1"
    assert bundle.resolve(models, NAME, 2) == models / NAME / "2"  # a given version wins
    on_disk = json.loads((models / NAME / bundle.ALIAS).read_text())
    assert on_disk["version"] == 1 and on_disk["by"] == "ana" and on_disk["at"].endswith("+00:00")
    assert on_disk["metrics"]["test"] == bundle.read(models / NAME / "1").manifest.metrics.test  # type: ignore[union-attr]
    assert promotion == bundle.promotion_of(models, NAME)
    assert not [p for p in (models / NAME).iterdir() if p.name.startswith(".promoted")]


def test_promote_refuses_a_version_that_does_not_verify(models: Path) -> None:
    with open(models / NAME / "2" / "model.onnx", "ab") as graph:
        graph.write(b"\0")
    with pytest.raises(bundle.BundleError, match="checksum mismatch"):
        bundle.promote(models, NAME, 2, "ana")
    with pytest.raises(bundle.BundleError, match="no version 9"):
        bundle.promote(models, NAME, 9, "ana")
    assert bundle.promoted(models, NAME) is None


def test_a_broken_alias_is_an_error_not_the_newest_version(models: Path) -> None:
    bundle.promote(models, NAME, 1, "ana")
    alias = models / NAME / bundle.ALIAS
    alias.write_text("{not json")
    with pytest.raises(bundle.BundleError, match="not valid JSON"):
        bundle.resolve(models, NAME)
    alias.write_text(json.dumps({"name": "other", "version": 1}))
    with pytest.raises(bundle.BundleError, match="not valid"):
        bundle.promoted(models, NAME)


def test_a_promoted_version_that_was_removed_is_an_error(models: Path) -> None:
    bundle.promote(models, NAME, 2, "ana")
    shutil.rmtree(models / NAME / "2")
    with pytest.raises(bundle.BundleError, match="promoted version 2, which is not there"):
        bundle.resolve(models, NAME)


def test_resolve_without_a_name_refuses_to_choose_among_several_models(models: Path) -> None:
    shutil.copytree(models / NAME, models / "other-afm")
    with pytest.raises(bundle.BundleError, match="several models and none chosen: other-afm, "):
        bundle.resolve(models)


def test_the_promote_command_records_who_and_refuses_a_broken_version(
    models: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["promote", NAME, "2", "--models-dir", str(models), "--by", "ci"])
    printed = json.loads(capsys.readouterr().out)
    assert printed["version"] == 2 and printed["by"] == "ci"
    with open(models / NAME / "1" / "model.onnx", "ab") as graph:
        graph.write(b"\0")
    with pytest.raises(SystemExit, match=f"promote: {NAME}/1 refused: .*checksum mismatch"):
        main(["promote", NAME, "1", "--models-dir", str(models)])
    assert bundle.promoted(models, NAME) == 2


def test_the_alias_schema_in_the_docs_is_current() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "training.bundle", "alias-schema"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    ).stdout  # fmt: skip
    assert json.loads(printed) == json.loads((ROOT / "docs" / "promoted.schema.json").read_text())

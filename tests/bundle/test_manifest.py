"""bundle.json against its one definition: every key typed, a violation refused by name."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from training import bundle
from training.bundle import BundleError, Manifest

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_DOC = ROOT / "docs" / "bundle.schema.json"


@pytest.fixture
def broken(tiny_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / "1"
    shutil.copytree(tiny_bundle, copy)
    return copy


def rewrite(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    manifest = json.loads((path / "bundle.json").read_text())
    change(manifest)
    (path / "bundle.json").write_text(json.dumps(manifest))


def first_categorical(m: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in m["fields"] if f["kind"] == "categorical")


def out_of_block(m: dict[str, Any]) -> None:
    field = first_categorical(m)
    value = next(iter(field["vocabulary"]))
    field["vocabulary"][value] = m["num_features"] + 10


def gap_before_second_field(m: dict[str, Any]) -> None:
    field = m["fields"][1]
    field["offset"] += 1
    if field["kind"] == "categorical":
        field["oov_index"] += 1
        field["vocabulary"] = {v: i + 1 for v, i in field["vocabulary"].items()}


def numeric_field(m: dict[str, Any]) -> dict[str, Any]:
    return next(f for f in m["fields"] if f["kind"] == "numeric")


def as_bucket(cuts: list[float], grow: bool = True) -> Callable[[dict[str, Any]], None]:
    """The numeric field made a bucket field with these cuts; `grow` widens num_features (and the
    graph's config) to its block, else the block does not tile num_features."""

    def change(m: dict[str, Any]) -> None:
        field = numeric_field(m)
        offset = field["offset"]
        field.clear()
        field.update(name="price", kind="bucket", offset=offset, cuts=cuts)
        if grow:
            m["num_features"] += len(cuts) + 1

    return change


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    ("a required key missing", lambda m: m.pop("bias"), r"bias: Field required"),
    ("an unknown key", lambda m: m.update(colour="red"), r"colour: Extra inputs"),
    ("a mistyped version", lambda m: m.update(version="two"), r"version: Input should be"),
    ("an unknown task", lambda m: m.update(task="ranking"), r"task: Input should be"),
    ("an unknown field kind", lambda m: m["fields"][0].update(kind="text"), r"fields\.0: Input tag"),
    ("a vocabulary index outside its block", out_of_block, r"vocabulary indices must be"),
    ("a numeric std of zero", lambda m: m["fields"][-1].update(std=0.0), r"std: Input should be greater"),
    ("a numeric min above its max", lambda m: numeric_field(m).update(min=2.0, max=1.0), r"fields\.\d+\.numeric: .*min 2\.0 is greater than max 1\.0"),
    ("a numeric min without a max", lambda m: numeric_field(m).pop("max"), r"min and max go together"),
    ("an unknown numeric transform", lambda m: numeric_field(m).update(transform="sqrt"), r"transform: Input should be"),
    ("bucket cuts that are not increasing", as_bucket([1.0, 3.0, 2.0]), r"fields\.\d+\.bucket: .*cuts must be strictly increasing"),
    ("bucket cuts that repeat", as_bucket([1.0, 1.0]), r"cuts must be strictly increasing"),
    ("a bucket block that does not tile num_features", as_bucket([1.0, 2.0], grow=False), r"num_features is \d+, the fields fill"),
    ("offsets that leave a gap", gap_before_second_field, r"starts at"),
    ("a repeated field", lambda m: m["fields"][1].update(name=m["fields"][0]["name"]), r"field names repeat"),
    ("pairs out of order", lambda m: m["pairs"].reverse(), r"pairs are not the field pairs"),
    ("a link that does not fit the task", lambda m: m.update(link={"kind": "clip", "min": 0, "max": 1}), r"link 'clip'"),
    ("a sha256 that is no digest", lambda m: m.update(sha256="abc"), r"sha256: String should match"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "change", "reason"), CASES, ids=[c[0] for c in CASES])
def test_a_manifest_that_violates_its_definition_is_refused_by_name(
    broken: Path, case: str, change: Callable[[dict[str, Any]], None], reason: str
) -> None:
    rewrite(broken, change)
    with pytest.raises(BundleError, match=reason):
        bundle.read(broken)


def test_a_bucket_field_whose_block_tiles_num_features_is_read(broken: Path) -> None:
    rewrite(broken, as_bucket([1.0, 2.0]))
    manifest = bundle.read(broken).manifest
    price = manifest.encoder.bucket("price")
    assert (price.buckets, price.size) == (3, 4)
    assert manifest.encoder.num_features == manifest.num_features == price.offset + 4


def test_a_published_bundle_reads_back_to_the_same_manifest(tiny_bundle: Path) -> None:
    manifest = bundle.read(tiny_bundle).manifest
    written = json.loads((tiny_bundle / "bundle.json").read_text())
    assert json.loads(json.dumps(manifest.to_json_dict())) == written
    assert Manifest.model_validate(written) == manifest


def test_publish_refuses_to_write_what_a_reader_would_refuse(
    tiny_bundle: Path, tmp_path: Path
) -> None:
    draft = json.loads((tiny_bundle / "bundle.json").read_text())
    for key in ("format_version", "name", "version", "sha256", "created"):
        draft.pop(key)
    draft["bias"] = "not a number"

    def copy_graph(folder: Path) -> None:
        shutil.copy(tiny_bundle / "model.onnx", folder / "model.onnx")

    with pytest.raises(ValueError, match="bias"):
        bundle.publish(tmp_path, "m", draft, copy_graph)
    assert list((tmp_path / "m").iterdir()) == []


def test_the_documented_json_schema_is_the_manifest_s() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "training.bundle", "schema"],
        capture_output=True, text=True, check=True, cwd=ROOT,
    )  # fmt: skip
    assert json.loads(printed.stdout) == json.loads(SCHEMA_DOC.read_text()), (
        "docs/bundle.schema.json is stale: python -m training.bundle schema > docs/bundle.schema.json"
    )

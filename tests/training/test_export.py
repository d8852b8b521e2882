"""ONNX export and the bundle: parity with PyTorch, the explanation invariant, refusals with reasons."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from training import bundle
from training.bundle import BundleError
from training.data import synthetic
from training.export import load_checkpoint

BATCHES = (1, 7, 256, 4096)


def torch_outputs(model, index: np.ndarray, value: np.ndarray) -> dict[str, np.ndarray]:
    model.eval()
    with torch.no_grad():
        out = model(torch.from_numpy(index), torch.from_numpy(value))
    return {
        name: getattr(out, name).numpy()
        for name in ("raw", "attention", "pair_contribution", "linear_contribution")
    }


def random_rows(loaded: bundle.Bundle, batch: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fields = loaded.encoder.fields
    index = np.stack([rng.integers(f.offset, f.offset + f.size, batch) for f in fields], axis=1)
    value = np.where(
        [f.kind == "numeric" for f in fields], rng.normal(0, 2, (batch, len(fields))), 1.0
    )
    return index.astype(np.int64), value.astype(np.float32)


def real_rows(loaded: bundle.Bundle, batch: int) -> tuple[np.ndarray, np.ndarray]:
    table = synthetic.load("ctr", rows=5000, seed=1).train.take(slice(0, batch))
    repeats = -(-batch // len(table))  # 4096 rows from a smaller table: tile it
    columns = {k: np.tile(v, repeats)[:batch] for k, v in table.columns.items()}
    encoded = loaded.encoder.encode(columns)
    return encoded.index, encoded.value


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("rows", ["random", "real"])
def test_onnxruntime_and_pytorch_agree_on_every_output(tiny_bundle, batch, rows):
    loaded = bundle.read(tiny_bundle)
    model = load_checkpoint(tiny_bundle)
    index, value = (
        random_rows(loaded, batch, seed=batch) if rows == "random" else real_rows(loaded, batch)
    )
    names = list(bundle.OUTPUTS)
    ort_out = dict(
        zip(
            names,
            loaded.session().run(names, {"feature_index": index, "feature_value": value}),
            strict=True,
        )
    )
    expected = torch_outputs(model, index, value)
    expected["score"] = 1 / (1 + np.exp(-expected["raw"].astype(np.float64)))
    for name in names:
        assert ort_out[name].shape[0] == batch
        np.testing.assert_allclose(ort_out[name], expected[name], atol=1e-5, rtol=0, err_msg=name)


def test_raw_is_bias_plus_contributions_and_attention_rows_sum_to_one(tiny_bundle):
    loaded = bundle.read(tiny_bundle)
    index, value = random_rows(loaded, 512, seed=0)
    raw, attention, pairs, linear = loaded.session().run(
        ["raw", "attention", "pair_contribution", "linear_contribution"],
        {"feature_index": index, "feature_value": value},
    )
    np.testing.assert_allclose(loaded.bias + linear.sum(1) + pairs.sum(1), raw, atol=1e-5)
    np.testing.assert_allclose(attention.sum(1), 1.0, atol=1e-5)


def test_run_scores_raw_columns_in_batches_as_one_session_call_does(tiny_bundle):
    loaded = bundle.read(tiny_bundle)
    table = synthetic.load("ctr", rows=5000, seed=1).train.take(slice(0, 300))
    encoded = loaded.encoder.encode(table.columns)
    whole = loaded.session().run(
        ["score", "attention"],
        {"feature_index": encoded.index, "feature_value": encoded.value},
    )
    batched = loaded.run(table.columns, ["score", "attention"], batch_size=128)  # 128, 128, 44
    np.testing.assert_allclose(batched["score"], whole[0], atol=1e-6)
    np.testing.assert_allclose(batched["attention"], whole[1], atol=1e-6)
    assert batched["attention"].shape == (300, len(loaded.pairs))


def test_bundle_declares_what_the_service_needs(tiny_bundle):
    written = json.loads((tiny_bundle / "bundle.json").read_text())
    for key in ("format_version", "name", "version", "task", "link", "fields", "pairs", "io", "metrics",
                "training_config", "model_config", "data", "created", "sha256", "global_attention"):  # fmt: skip
        assert key in written, key
    manifest = bundle.read(tiny_bundle).manifest
    assert len(manifest.pairs) == len(manifest.fields) * (len(manifest.fields) - 1) // 2
    assert manifest.pairs[0] == (manifest.fields[0].name, manifest.fields[1].name)
    assert sum(a.mean_attention for a in manifest.global_attention or []) == pytest.approx(
        1.0, abs=1e-4
    )
    import onnx

    onnx.checker.check_model(onnx.load(str(tiny_bundle / "model.onnx")), full_check=True)


# ------------------------------------------------------------------ refusals, each with its reason


@pytest.fixture
def broken(tiny_bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / "1"
    shutil.copytree(tiny_bundle, copy)
    return copy


def rewrite_manifest(path: Path, change) -> None:
    manifest = json.loads((path / "bundle.json").read_text())
    change(manifest)
    (path / "bundle.json").write_text(json.dumps(manifest))


def test_refuses_a_truncated_graph(broken):
    graph = broken / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:500])
    with pytest.raises(BundleError, match="checksum mismatch"):
        bundle.read(broken)


def test_refuses_a_truncated_graph_even_with_a_matching_checksum(broken):
    graph = broken / "model.onnx"
    graph.write_bytes(graph.read_bytes()[:500])
    rewrite_manifest(broken, lambda m: m.update(sha256=bundle.sha256_file(graph)))
    with pytest.raises(BundleError, match=r"model\.onnx does not load"):
        bundle.read(broken).session()


def test_refuses_a_missing_graph(broken):
    (broken / "model.onnx").unlink()
    with pytest.raises(BundleError, match=r"model\.onnx is missing"):
        bundle.read(broken)


def test_refuses_a_half_written_bundle(broken):
    (broken / "bundle.json").unlink()
    with pytest.raises(BundleError, match=r"bundle\.json is missing"):
        bundle.read(broken)


def test_refuses_a_checksum_mismatch(broken):
    rewrite_manifest(broken, lambda m: m.update(sha256="0" * 64))
    with pytest.raises(BundleError, match="checksum mismatch"):
        bundle.read(broken)


def test_refuses_an_unknown_format_version(broken):
    rewrite_manifest(broken, lambda m: m.update(format_version=99))
    with pytest.raises(BundleError, match="unknown format version 99"):
        bundle.read(broken)


def test_refuses_io_names_that_disagree_with_the_graph(broken):
    def rename(m):
        outputs = m["io"]["outputs"]
        outputs["explanation"] = outputs.pop("attention")

    rewrite_manifest(broken, rename)
    with pytest.raises(BundleError, match="declared I/O"):
        bundle.read(broken)


def test_refuses_a_graph_whose_shapes_disagree_with_bundle_json(broken):
    def drop_last_field(m):
        dropped = m["fields"].pop()
        m["num_features"] -= (
            1 + len(dropped.get("vocabulary", {})) if dropped["kind"] == "categorical" else 1
        )
        m["pairs"] = [p for p in m["pairs"] if dropped["name"] not in p]
        m["global_attention"] = [
            a for a in m["global_attention"] if dropped["name"] not in a["fields"]
        ]
        m["io"] = bundle.io_signature(len(m["fields"]), len(m["pairs"])).model_dump()

    rewrite_manifest(broken, drop_last_field)
    loaded = bundle.read(broken)  # self-consistent manifest...
    with pytest.raises(BundleError, match=r"feature_index.*bundle\.json says"):
        loaded.session()  # ...that the graph contradicts


def test_resolve_skips_staging_folders_and_names_unknown_versions(tiny_bundle, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(tiny_bundle, models / "m" / "1")
    (models / "m" / ".staging-abc").mkdir()
    assert bundle.resolve(models) == models / "m" / "1"
    assert bundle.resolve(models, "m") == models / "m" / "1"
    with pytest.raises(BundleError, match="no version 7"):
        bundle.resolve(models, "m", 7)
    with pytest.raises(BundleError, match="no bundle of model 'x'"):
        bundle.resolve(models, "x")


def test_a_failed_publish_leaves_nothing_behind(tmp_path):
    def explode(folder: Path) -> None:
        (folder / "model.onnx").write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        bundle.publish(tmp_path, "m", {}, explode)
    assert list((tmp_path / "m").iterdir()) == []


def test_loading_and_scoring_a_bundle_needs_no_torch(tiny_bundle):
    script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now raises ImportError
from training import bundle
loaded = bundle.read({str(tiny_bundle)!r})
columns = {{f.name: [f.examples(1)[0]] for f in loaded.encoder.fields}}
encoded = loaded.encoder.encode(columns)
score, = loaded.session().run(["score"], {{"feature_index": encoded.index, "feature_value": encoded.value}})
assert 0 < score[0] < 1
assert not any(m == "torch" or m.startswith("torch.") for m in sys.modules if sys.modules[m] is not None)
print("scored without torch", float(score[0]))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "scored without torch" in result.stdout

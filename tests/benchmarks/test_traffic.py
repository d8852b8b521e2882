"""The traffic benchmark's quick mode, on a tiny scale against the session's tiny real bundle and
real server processes: every scenario runs and is reported, and the server answers every request
with a 200 or, under overload, a 503 refusal. No timings are checked."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import traffic
from training import bundle as bundles
from training.bundle.features import CategoricalField

TINY = [
    "--quick", "--no-pin", "--python-saturation", "--memory-requests", "60",
    "--warmup-requests", "10", "--phase-seconds", "1", "--saturation-seconds", "0.5",
    "--soak-seconds", "1.5", "--rss-interval", "0.25",
]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("results")


@pytest.fixture(scope="module")
def report(tiny_bundle: Path, results: Path) -> traffic.TrafficReport:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(traffic, "RESULTS", results)
        return traffic.main([*TINY, "--bundle", str(tiny_bundle)])


def test_memory_run_sends_distinct_long_context_values_and_gets_only_200s(
    report: traffic.TrafficReport, tiny_bundle: Path
) -> None:
    memory = report.memory
    assert memory is not None
    assert memory.statuses == {200: 60}
    encoder = bundles.read(tiny_bundle).encoder
    long_fields = [
        f for f in encoder.fields if isinstance(f, CategoricalField) and f.name != "item"
    ]
    assert long_fields  # every categorical field of the context (the candidates are items)
    # each request brought a new value of each of them, and the cache kept them all
    assert memory.value_cache_entries >= 60 * len(long_fields)
    assert 0 < memory.value_cache_mb <= memory.value_cache_max_mb
    assert memory.warm_rss_mb > 0 and memory.peak_rss_mb >= memory.after_rss_mb


def test_overload_run_sees_only_answers_and_refusals(report: traffic.TrafficReport) -> None:
    overload = report.overload
    assert overload is not None
    assert overload.saturation_rate > 0
    for phase, factor in ((overload.half, 0.5), (overload.over, 4)):
        assert phase.rate == pytest.approx(overload.saturation_rate * factor)
        assert set(phase.statuses) <= {200, 503} and phase.failed == 0
        assert phase.count(200) > 0 and phase.ok_p99_ms is not None
    assert overload.probes > 0
    assert overload.admission["admitted"] >= overload.half.count(200) + overload.over.count(200)
    assert overload.admission["rejected"] + overload.admission["expired"] == overload.over.count(
        503
    ) + overload.half.count(503)


def test_soak_run_samples_rss_and_has_no_errors(report: traffic.TrafficReport) -> None:
    soak = report.soak
    assert soak is not None
    assert soak.errors == 0 and soak.phase.statuses.get(200, 0) > 0
    assert len(soak.rss_samples_mb) >= 3
    assert soak.first_mean_mb > 0 and soak.last_mean_mb > 0


def test_report_names_every_target_and_is_written(
    report: traffic.TrafficReport, results: Path
) -> None:
    text = report.markdown()
    assert text.startswith("## Serving under abuse")
    assert text.count("| met |") + text.count("| **not met** |") == 5
    assert set(report.met()) == {"memory", "admitted_p99", "refusals_p99", "healthz", "soak"}
    assert (results / "traffic.md").read_text() == text
    written = json.loads((results / "traffic.json").read_text())
    assert written["derived"]["met"] == report.met()
    assert written["memory"]["statuses"] == {"200": 60}

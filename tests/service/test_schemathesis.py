"""Schemathesis against a real `python -m service` process, every operation of its OpenAPI.

Schemathesis reads the served `/openapi.json` (the model's real fields), generates requests from
it, valid and invalid, and runs all of its checks on every answer: no 5xx, statuses, content
types and headers as documented, bodies that match the documented response schemas, invalid
requests refused and (where the schema can say what is valid) valid ones accepted.

What the checks are told:
- A request over the row limit (`maxItems`) is refused with 413, which counts as a refusal.
- `POST /predict` and the Open Inference Protocol's `infer` are exempt from "valid data is
  accepted": their validity depends on more than JSON Schema can say (a ranking request's context
  and each candidate together give every field exactly once; an input tensor's shape matches its
  data and names one of the model's inputs), so a schema-valid body may rightly be a 4xx.
- Most generated paths name the served model and version, so the model routes are reached.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import httpx

from tests.service.conftest import API_KEY, serving_a_copy

MIN_CASES = 1000
SEED = 20261202


def config(model: str, version: int) -> str:
    """Schemathesis's settings: one worker (its AST code is not thread-safe on Python 3.11), the
    served model's name and version in most generated paths, the checks as the module says."""
    return f"""
workers = 1
seed = {SEED}

[generation]
max-examples = 50
database = "none"

[checks]
negative_data_rejection.expected-statuses = ["400", "404", "405", "413", "415", "422"]

[dictionaries.model]
values = ["{model}"]

[dictionaries.version]
values = [{version}]

[parameters]
"path.name" = {{ dictionary = "model", probability = 0.8 }}
"path.version" = {{ dictionary = "version", probability = 0.8 }}

[[operations]]
include-path-regex = "^/predict$|/infer$"
checks.positive_data_acceptance.enabled = false
"""


METHODS = {"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"}


def cases_per_operation(events: Path) -> collections.Counter[str]:
    """Test cases that Schemathesis ran per operation (`POST /predict`), and in sequences of
    calls (`Stateful tests`), from its NDJSON event stream."""
    cases: collections.Counter[str] = collections.Counter()
    with events.open() as lines:
        for line in lines:
            finished = json.loads(line).get("ScenarioFinished")
            if finished:
                recorder = finished["recorder"]
                cases[recorder["label"]] += len(recorder.get("cases", {}))
    return cases


def test_generated_requests_meet_the_documented_contract(models_dir: Path, tmp_path: Path) -> None:
    settings = tmp_path / "schemathesis.toml"
    report, events = tmp_path / "report.json", tmp_path / "events.ndjson"
    with serving_a_copy(models_dir, tmp_path) as server:
        served = httpx.get(f"{server.url}/model").json()
        settings.write_text(config(served["name"], served["version"]))
        command = [
            *(sys.executable, "-m", "schemathesis.cli", "--config-file", str(settings)),
            *("run", f"{server.url}/openapi.json", "--no-color", "--output-truncate", "true"),
            *("--header", f"X-API-Key: {API_KEY}", "--report", "json,ndjson"),
            *("--report-json-path", str(report), "--report-ndjson-path", str(events)),
        ]
        run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
        server_log = server.log.read_text(errors="replace")
    output = run.stdout[-6000:] + run.stderr[-2000:]
    assert run.returncode == 0, output
    summary = json.loads(report.read_text())
    assert summary["complete"], output
    assert summary["failures"] == [] and summary["errors"] == [], output
    operations = summary["operations"]
    assert operations["selected"] == operations["tested"] == operations["total"], operations

    cases = cases_per_operation(events)
    print(f"schemathesis: {sum(cases.values())} cases in {summary['running_time']:.0f} s: {cases}")
    per_operation = {label: n for label, n in cases.items() if label.split()[0] in METHODS}
    assert len(per_operation) == operations["total"] and all(per_operation.values()), cases
    assert {"POST /predict", "GET /explain", "GET /model", "GET /readyz"} <= set(cases), cases
    assert sum(cases.values()) == summary["test_cases"]["generated"] >= MIN_CASES, cases
    assert summary["test_cases"]["errored"] == 0, output
    assert '"level":"error"' not in server_log, server_log[-4000:]

"""The service never imports torch: statically, and in processes where torch is or is not there."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.service.conftest import ROOT, blocked_torch_env

FORBIDDEN = ("torch", "training.model", "training.export", "training.trainer", "training.__main__")

SCRIPT = """
import sys, orjson
from service.runtime import ModelRuntime
from service.settings import Settings
from service.api import create_app
from service.client import AFMClient
create_app(Settings(models_dir=sys.argv[1]))
model = ModelRuntime(Settings(models_dir=sys.argv[1])).load()
context = {"user": "0", "daytime": "morning", "weekday": "sunday", "isweekend": "weekend",
           "homework": "home", "cost": "free", "weather": "weather0", "country": "country0",
           "city": "0", "price": 1.5}
body = orjson.dumps({"context": context, "candidates": [{"item": "1"}, {"item": "2"}]})
scores = model.predict(model.parse_predict(body))["scores"]
explained = model.explain({**context, "item": "1"})
assert len(scores) == 2 and abs(explained["score"] - scores[0]) < 1e-6
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print("torch modules:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_no_service_module_imports_torch_or_torch_training_modules() -> None:
    for path in sorted((ROOT / "service").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            for name in names:
                assert not name.startswith(FORBIDDEN), f"{path.name} imports {name}"


def test_service_loads_and_scores_where_importing_torch_fails(
    models_dir: Path, tmp_path: Path
) -> None:
    env = blocked_torch_env(tmp_path)
    blocked = subprocess.run([sys.executable, "-c", "import torch"], env=env, capture_output=True)
    assert blocked.returncode != 0 and b"torch is blocked" in blocked.stderr
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(models_dir)], env=env, cwd=ROOT, capture_output=True
    )
    assert run.returncode == 0, run.stderr.decode()


def test_service_leaves_torch_unimported_even_where_it_is_installed(models_dir: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(models_dir)], cwd=ROOT, capture_output=True
    )
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
    assert b"torch modules: []" in run.stdout

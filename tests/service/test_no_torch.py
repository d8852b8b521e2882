"""The service takes only the contract package from training: statically, in processes where torch
is or is not there, and in a fresh venv that has nothing but `pip install .[serve]`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.service.conftest import ROOT, blocked_torch_env

CONTRACT = "training.bundle"
IMPORT_CHECK = ROOT / "deploy" / "serving_imports.py"

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
sys.path.insert(0, "deploy")
from serving_imports import offenders
loaded = offenders(list(sys.modules))
print("outside the allowlist:", loaded)
sys.exit(1 if loaded else 0)
"""


def test_service_modules_import_nothing_of_training_but_the_contract_package() -> None:
    for path in sorted((ROOT / "service").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module == "training":
                names = [f"training.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                if name.split(".")[0] == "training":
                    assert name == CONTRACT or name.startswith(CONTRACT + "."), (
                        f"{path.name} imports {name}"
                    )
                assert name.split(".")[0] != "torch", f"{path.name} imports {name}"


def test_the_allowlist_names_what_it_refuses() -> None:
    sys.path.insert(0, str(IMPORT_CHECK.parent))
    try:
        from serving_imports import offenders
    finally:
        sys.path.remove(str(IMPORT_CHECK.parent))
    loaded = ["training", "training.bundle", "training.bundle.store", "service.api", "numpy",
              "training.model", "torch.nn", "pyarrow", "training.bundles", "sklearn.metrics"]  # fmt: skip
    assert offenders(loaded) == [
        "pyarrow",
        "sklearn.metrics",
        "torch.nn",
        "training.bundles",
        "training.model",
    ]


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
    assert b"outside the allowlist: []" in run.stdout


@pytest.mark.slow
def test_a_fresh_serve_install_imports_the_service_without_training_libraries(
    tmp_path: Path,
) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", f"{ROOT}[serve]"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr
    installed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format", "freeze"],
        capture_output=True, text=True, check=True,
    ).stdout.lower()  # fmt: skip
    for package in ("torch", "pyarrow", "scikit-learn", "matplotlib", "onnx="):
        assert package not in installed, f"the serve install pulled {package}"
    # from outside the checkout, so that the installed package is what gets imported
    check = subprocess.run(
        [str(python), str(IMPORT_CHECK)], cwd=tmp_path, capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
